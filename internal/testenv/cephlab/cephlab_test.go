package cephlab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestStartStop starts a cluster of its own next to the shared one of other
// packages' tests, checks what it promises, and stops it.
func TestStartStop(t *testing.T) {
	if missing := Missing(); len(missing) > 0 {
		if inCI() {
			t.Fatalf("CI: %v", &MissingError{Binaries: missing})
		}
		t.Skipf("SKIPPED: %v", &MissingError{Binaries: missing})
	}
	dir := filepath.Join(t.TempDir(), "c")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := Start(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	t.Logf("cluster started in %v (mon %d, rgw %d, msgr %d-%d)", c.StartDuration.Round(time.Millisecond),
		c.MonPort, c.RGWPort, c.MsgrPortMin, c.MsgrPortMax)
	for name, v := range map[string]string{"AccessKey": c.AccessKey, "SecretKey": c.SecretKey,
		"SwiftUser": c.SwiftUser, "SwiftKey": c.SwiftKey, "Region": c.Region} {
		if v == "" {
			t.Errorf("%s is empty", name)
		}
	}
	if _, err := os.Stat(c.CephConf); err != nil {
		t.Errorf("CephConf: %v", err)
	}
	resp, err := http.Get(c.S3Endpoint + "/")
	if err != nil {
		t.Fatalf("radosgw at %s: %v", c.S3Endpoint, err)
	}
	resp.Body.Close()
	// Swift v1 auth with the generated key.
	req, _ := http.NewRequest(http.MethodGet, c.SwiftAuthURL, nil)
	req.Header.Set("X-Auth-User", c.SwiftUser)
	req.Header.Set("X-Auth-Key", c.SwiftKey)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 || resp.Header.Get("X-Storage-Url") == "" {
		t.Errorf("swift auth: HTTP %d, storage URL %q", resp.StatusCode, resp.Header.Get("X-Storage-Url"))
	}

	t0 := time.Now()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster stopped in %v", time.Since(t0).Round(time.Millisecond))
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("Stop left %s behind (%v)", dir, err)
	}
	for _, p := range []int{c.MonPort, c.RGWPort} {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Errorf("port %d still taken after Stop: %v", p, err)
			continue
		}
		l.Close()
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// recorder is a testing.TB whose Fatalf and Skipf are recorded instead of
// ending the test; they end the goroutine that called them.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Skipf(format string, args ...any) {
	r.skip = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func requireWith(t *testing.T) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Require(r)
	}()
	<-done
	return r
}

// TestRequireMissing checks that missing Ceph programs skip a test loudly,
// naming the program and `make test-deps`, and fail it under CI.
func TestRequireMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())

	t.Setenv("CI", "")
	r := requireWith(t)
	if r.fatal != "" || !strings.Contains(r.skip, "ceph-mon") || !strings.Contains(r.skip, "make test-deps") {
		t.Errorf("without CI: skip %q, fatal %q; want a skip naming ceph-mon and make test-deps", r.skip, r.fatal)
	}

	t.Setenv("CI", "true")
	r = requireWith(t)
	if r.skip != "" || !strings.Contains(r.fatal, "ceph-mon") || !strings.Contains(r.fatal, "CI") {
		t.Errorf("with CI=true: skip %q, fatal %q; want a failure naming ceph-mon and CI", r.skip, r.fatal)
	}
}

func TestUniqueName(t *testing.T) {
	a, b := UniqueName("raksha-test"), UniqueName("raksha-test")
	if a == b || len(a) != len("raksha-test-")+12 {
		t.Errorf("UniqueName gave %q and %q", a, b)
	}
}

func TestFreePortBlock(t *testing.T) {
	base, err := freePortBlock(22)
	if err != nil {
		t.Fatal(err)
	}
	if !portsFree(base, 22) {
		t.Errorf("block at %d is not free", base)
	}
}
