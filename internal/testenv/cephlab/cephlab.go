// Package cephlab runs throwaway single-node Ceph clusters (mon, memstore OSD,
// radosgw with S3 and Swift) for tests, through scripts/ceph-up.sh and
// scripts/ceph-down.sh of this repository.
//
// A package whose tests need radosgw calls Main from its TestMain; its tests
// then call Require (or NewS3URL / NewSwiftURL), which start one cluster for the
// whole test binary on first use. Main stops it when the tests are done, and a
// watchdog started by ceph-up.sh stops it if the test binary dies first.
//
//	func TestMain(m *testing.M) { cephlab.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		u, opts := cephlab.NewS3URL(t)
//		be, err := open.Open(ctx, u, opts)
//		...
//	}
//
// Without the Ceph binaries, Require skips the test with a loud reason, except
// under CI (CI set to anything but "false" or "0"), where it fails it.
package cephlab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend/open"
)

// binaries lists the programs ceph-up.sh runs (without a mgr); packages are
// the Debian packages that provide them (ceph-mon brings ceph-base).
func binaries() []string {
	return []string{"ceph", "ceph-authtool", "monmaptool", "ceph-mon", "ceph-osd",
		"radosgw", "radosgw-admin", "rbd", "uuidgen", "curl"}
}

// Packages returns the Debian packages the clusters need.
func Packages() []string {
	return []string{"ceph-common", "ceph-mon", "ceph-osd", "radosgw", "uuid-runtime", "curl"}
}

// msgrPorts is the number of ports reserved for the daemons' messengers
// (the OSD binds four, a mgr two).
const msgrPorts = 20

// Cluster is a running cluster. Its fields are read-only.
type Cluster struct {
	// Dir holds the cluster: config, keyrings, daemon data, logs, PID files.
	Dir string
	// CephConf is the path of ceph.conf (for CEPH_CONF, go-ceph, the rbd CLI).
	CephConf string
	// S3Endpoint is radosgw's base URL, http://127.0.0.1:PORT (path-style).
	S3Endpoint string
	// AccessKey and SecretKey are the S3 keys of the test user.
	AccessKey, SecretKey string
	// Region is the region to sign S3 requests for.
	Region string
	// SwiftAuthURL is radosgw's Swift v1 auth URL (…/auth/1.0).
	SwiftAuthURL string
	// SwiftUser ("user:subuser") and SwiftKey authenticate at SwiftAuthURL.
	SwiftUser, SwiftKey string
	// MonPort, RGWPort and the messenger range are the ports the cluster uses.
	MonPort, RGWPort, MsgrPortMin, MsgrPortMax int
	// StartDuration is how long Start took.
	StartDuration time.Duration

	root     string
	stopOnce sync.Once
	stopErr  error
}

// MissingError reports Ceph programs that are not installed.
type MissingError struct{ Binaries []string }

func (e *MissingError) Error() string {
	return fmt.Sprintf("Ceph test cluster: programs not found in PATH: %s (install the Debian packages %s, e.g. with `make test-deps`)",
		strings.Join(e.Binaries, ", "), strings.Join(Packages(), " "))
}

// Missing returns the programs the clusters need that are not in PATH.
func Missing() []string {
	var missing []string
	for _, b := range binaries() {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	return missing
}

// RepoRoot returns the directory of this module's go.mod, found by walking
// up from the working directory (a test runs in its package's directory)
// and, failing that, from this source file.
func RepoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for d := dir; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				if _, err := os.Stat(filepath.Join(d, "scripts", "ceph-up.sh")); err == nil {
					return d, nil
				}
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", errors.New("cephlab: no go.mod with scripts/ceph-up.sh above the working directory")
}

// Start starts a cluster in dir (created if missing; it must be empty), on
// free loopback ports, and returns once radosgw answers and its test user
// exists. A cluster whose start failed is torn down; the error carries the
// end of ceph-up.sh's output. The caller must Stop the cluster.
func Start(ctx context.Context, dir string) (*Cluster, error) {
	t0 := time.Now()
	if missing := Missing(); len(missing) > 0 {
		return nil, &MissingError{Binaries: missing}
	}
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("cephlab start: %w", err)
	}
	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		c := &Cluster{Dir: dir, root: root}
		if c.MonPort, err = freePortBlock(2 + msgrPorts); err != nil {
			return nil, fmt.Errorf("cephlab start: %w", err)
		}
		c.RGWPort = c.MonPort + 1
		c.MsgrPortMin, c.MsgrPortMax = c.MonPort+2, c.MonPort+1+msgrPorts
		out, err := c.run(ctx, "ceph-up.sh", []string{
			"CEPHLAB_MON_PORT=" + strconv.Itoa(c.MonPort),
			"CEPHLAB_RGW_PORT=" + strconv.Itoa(c.RGWPort),
			"CEPHLAB_MSGR_PORT_MIN=" + strconv.Itoa(c.MsgrPortMin),
			"CEPHLAB_MSGR_PORT_MAX=" + strconv.Itoa(c.MsgrPortMax),
			"CEPHLAB_OWNER_PID=" + strconv.Itoa(os.Getpid()),
			"WITH_MGR=0",
		})
		if err == nil {
			err = c.readCredentials()
		}
		if err == nil {
			c.StartDuration = time.Since(t0)
			return c, nil
		}
		lastErr = fmt.Errorf("cephlab start in %s (ports %d-%d): %w\n%s", dir, c.MonPort, c.MsgrPortMax, err, tail(out, 40))
		_ = c.Stop()
		if ctx.Err() != nil || !bytes.Contains(out, []byte("in use")) {
			break
		}
	}
	return nil, lastErr
}

// run runs a script of scripts/ with dir as its argument. Its output goes to
// a file, not a pipe: the daemons it starts outlive it and must not hold a
// pipe that exec would wait for.
func (c *Cluster) run(ctx context.Context, script string, env []string) ([]byte, error) {
	f, err := os.CreateTemp("", "cephlab-*.log")
	if err != nil {
		return nil, fmt.Errorf("cephlab %s: %w", script, err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(c.root, "scripts", script), c.Dir)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.WaitDelay = 5 * time.Second
	runErr := cmd.Run()
	out, _ := os.ReadFile(f.Name())
	if runErr != nil {
		return out, fmt.Errorf("%s: %w", script, runErr)
	}
	return out, nil
}

func (c *Cluster) readCredentials() error {
	path := filepath.Join(c.Dir, "credentials.env")
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read credentials: %w", err)
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok {
			return fmt.Errorf("%s: malformed line %q", path, line)
		}
		vars[k] = v
	}
	for _, f := range []struct {
		dst *string
		key string
	}{
		{&c.CephConf, "CEPH_CONF"}, {&c.S3Endpoint, "CEPHLAB_S3_ENDPOINT"},
		{&c.AccessKey, "AWS_ACCESS_KEY_ID"}, {&c.SecretKey, "AWS_SECRET_ACCESS_KEY"},
		{&c.Region, "AWS_REGION"}, {&c.SwiftAuthURL, "ST_AUTH"},
		{&c.SwiftUser, "ST_USER"}, {&c.SwiftKey, "ST_KEY"},
	} {
		if *f.dst = vars[f.key]; *f.dst == "" {
			return fmt.Errorf("%s: %s missing", path, f.key)
		}
	}
	return nil
}

// Stop stops the daemons and removes Dir. It is safe to call more than once.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := c.run(ctx, "ceph-down.sh", []string{"FAST=1"})
		if err != nil {
			c.stopErr = fmt.Errorf("cephlab stop %s: %w\n%s", c.Dir, err, tail(out, 20))
		}
	})
	return c.stopErr
}

// Env returns the environment variables through which S3 and Swift clients
// (the AWS SDK, python-swiftclient, this repository's backends) reach the
// cluster as its test user, as KEY=VALUE pairs.
func (c *Cluster) Env() []string {
	return []string{
		"CEPH_CONF=" + c.CephConf,
		"AWS_ACCESS_KEY_ID=" + c.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + c.SecretKey,
		"AWS_REGION=" + c.Region,
		"AWS_ENDPOINT_URL_S3=" + c.S3Endpoint,
		"ST_AUTH=" + c.SwiftAuthURL,
		"ST_USER=" + c.SwiftUser,
		"ST_KEY=" + c.SwiftKey,
	}
}

// envUnset lists variables that would take precedence over Env's.
var envUnset = []string{"AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"}

// Options returns the open.Options for repository URLs on this cluster's
// radosgw; credentials come from the environment (see Env).
func (c *Cluster) Options() open.Options {
	return open.Options{S3Endpoint: c.S3Endpoint, S3PathStyle: true}
}

// freePortBlock returns the first of n consecutive loopback TCP ports that
// are free now, below the kernel's ephemeral range so that outgoing
// connections do not take them in the meantime.
func freePortBlock(n int) (int, error) {
	lo, hi := 20000, 32768
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(data)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 12000 {
				hi = v
			}
		}
	}
	if hi-lo < 2000 {
		lo = 10000
	}
	for range 100 {
		r, err := rand.Int(rand.Reader, big.NewInt(int64(hi-lo-n)))
		if err != nil {
			return 0, err
		}
		base := lo + int(r.Int64())
		if portsFree(base, n) {
			return base, nil
		}
	}
	return 0, fmt.Errorf("no %d consecutive free ports in %d-%d", n, lo, hi)
}

func portsFree(base, n int) bool {
	for p := base; p < base+n; p++ {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			return false
		}
		l.Close()
	}
	return true
}

func tail(out []byte, lines int) string {
	s := strings.TrimRight(string(out), "\n")
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// UniqueName returns a name usable as an S3 bucket or Swift container:
// prefix, a dash and 12 random hex digits.
func UniqueName(prefix string) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return prefix + "-" + hex.EncodeToString(b[:])
}

// shared is the cluster of the test binary that Main and Require manage.
// It is the one piece of package state: Require has no other way to find it.
var shared struct {
	mu      sync.Mutex
	inMain  bool
	started bool
	cluster *Cluster
	err     error
	tmp     string
}

// Main runs the tests of a package whose tests use Require: call it from
// TestMain. The cluster is started by the first Require, not before, so a run
// that selects no such test starts none; Main stops it when the tests end and
// exits with their status.
func Main(m *testing.M) {
	shared.mu.Lock()
	shared.inMain = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	c, tmp := shared.cluster, shared.tmp
	shared.mu.Unlock()
	if c != nil {
		if err := c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			if code == 0 {
				code = 1
			}
		}
	}
	if tmp != "" {
		_ = os.RemoveAll(tmp)
	}
	os.Exit(code)
}

// inCI reports whether the environment variable CI says this is a CI run.
func inCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v != "" && v != "false" && v != "0"
}

// Require returns the test binary's cluster, starting it on first use
// (about 5 s) and exporting Env into the process environment (unsetting
// AWS_PROFILE and the like, which would win over it). Without the Ceph
// binaries it skips t, or fails it under CI. It fails t if the package's
// TestMain does not call Main, or if the cluster cannot start.
func Require(t testing.TB) *Cluster {
	t.Helper()
	if missing := Missing(); len(missing) > 0 {
		err := &MissingError{Binaries: missing}
		if inCI() {
			t.Fatalf("CI=%s: the Ceph test cluster is required here: %v", os.Getenv("CI"), err)
		}
		t.Skipf("SKIPPED, NOT TESTED against Ceph radosgw: %v", err)
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inMain {
		t.Fatal("cephlab.Require: the package's TestMain must call cephlab.Main(m)")
	}
	if !shared.started {
		shared.started = true
		shared.cluster, shared.err = startShared()
		if shared.err == nil {
			t.Logf("cephlab: Ceph cluster (mon, OSD, radosgw) started in %v at %s",
				shared.cluster.StartDuration.Round(time.Millisecond), shared.cluster.S3Endpoint)
		}
	}
	if shared.err != nil {
		t.Fatalf("cephlab: %v", shared.err)
	}
	return shared.cluster
}

// startShared starts the binary's cluster; the caller holds shared.mu.
func startShared() (*Cluster, error) {
	// The daemons' unix sockets live in the cluster directory, and socket
	// paths are short (107 bytes): prefer /tmp to a long TMPDIR.
	parent := ""
	if len(os.TempDir()) > 40 {
		parent = "/tmp"
	}
	tmp, err := os.MkdirTemp(parent, "cephlab-")
	if err != nil {
		return nil, err
	}
	shared.tmp = tmp
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := Start(ctx, filepath.Join(tmp, "c"))
	if err != nil {
		return nil, err
	}
	for _, kv := range c.Env() {
		k, v, _ := strings.Cut(kv, "=")
		if err := os.Setenv(k, v); err != nil {
			return c, err
		}
	}
	for _, k := range envUnset {
		_ = os.Unsetenv(k)
	}
	return c, nil
}

// NewS3URL returns the URL of a fresh repository location on the test
// binary's radosgw, s3://BUCKET/repo with a new bucket name, and the
// open.Options to open it with. It calls Require.
func NewS3URL(t testing.TB) (string, open.Options) {
	t.Helper()
	c := Require(t)
	return "s3://" + UniqueName("raksha-test") + "/repo", c.Options()
}

// NewSwiftURL returns the URL of a fresh repository location on the test
// binary's radosgw, swift://CONTAINER/repo with a new container name, and
// the open.Options to open it with. It calls Require.
func NewSwiftURL(t testing.TB) (string, open.Options) {
	t.Helper()
	c := Require(t)
	return "swift://" + UniqueName("raksha-test") + "/repo", c.Options()
}
