package main

import (
	"context"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/deploy"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	_, src, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(src))
}

// startsUpTo runs raksha-api as its main does with args (the configuration
// file at cfgPath on this machine) and returns the error it stops with: the
// flags parsed and the configuration loaded if it got as far as the
// Keystone password file, which only the deployment has.
func startsUpTo(t *testing.T, args []string, cfgPath string) error {
	t.Helper()
	var a []string
	for _, x := range args {
		if strings.HasPrefix(x, "--config=") {
			x = "--config=" + cfgPath
		}
		a = append(a, x)
	}
	return run(context.Background(), slog.New(slog.DiscardHandler), a, func(string) string { return "" })
}

// apiEnv is every variable raksha-api reads: its configuration file's, the
// Temporal client's (internal/temporalx, through the SDK's envconfig) and
// the S3 backend's credentials file.
var apiEnv = []string{"RAKSHA_API_CONFIG", "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "AWS_SHARED_CREDENTIALS_FILE"}

// TestDeployComposeAgreesWithAPI: docker-compose.yml's api service runs
// raksha-api with flags it has and a mounted configuration every key of
// which it decodes; it listens on the port the service publishes and its
// health check asks; every secret file it opens is given to the service;
// its repositories are the workers' (deploy/worker.yaml); Temporal and S3
// are services of the file.
func TestDeployComposeAgreesWithAPI(t *testing.T) {
	r := repoRoot(t)
	c, err := deploy.LoadCompose(filepath.Join(r, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	s, ok := c.Services["api"]
	if !ok {
		t.Fatalf("docker-compose.yml has no api service (have %v)", c.Names())
	}
	if !slices.Equal(s.Entrypoint, []string{"/usr/local/bin/raksha-api"}) || s.Build == nil {
		t.Errorf("api: entrypoint %v, build %v: want the image's /usr/local/bin/raksha-api", s.Entrypoint, s.Build)
	}
	var cfgPath string
	for _, a := range s.Command {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			cfgPath = v
		}
	}
	host := s.Mount(cfgPath)
	if cfgPath == "" || host == "" {
		t.Fatalf("api: no configuration mounted: --config %q, volumes %v", cfgPath, s.Volumes)
	}
	local := filepath.Join(r, host)
	if err := startsUpTo(t, s.Command, local); err == nil || !strings.Contains(err.Error(), "keystone password file") {
		t.Fatalf("raksha-api %v: %v; want it to get as far as reading the Keystone password file", s.Command, err)
	}
	cfg, err := loadConfig(local)
	if err != nil {
		t.Fatal(err)
	}
	for k := range s.Environment {
		if !slices.Contains(apiEnv, k) {
			t.Errorf("environment %s: raksha-api does not read it", k)
		}
	}

	_, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		t.Fatalf("listen %q: %v", cfg.Listen, err)
	}
	if h, _, _ := net.SplitHostPort(cfg.Listen); h != "0.0.0.0" && h != "" {
		t.Errorf("listen %s: in a container it must listen on every interface to be published", cfg.Listen)
	}
	if !slices.Contains(s.Ports, "127.0.0.1:"+port+":"+port) {
		t.Errorf("ports %v: want 127.0.0.1:%s:%s (the host's loopback, behind the TLS proxy)", s.Ports, port, port)
	}
	if u := s.HealthURL(); u == nil || u.Path != "/healthz" || u.Port() != port || u.Hostname() != "127.0.0.1" {
		t.Errorf("health check %v: want http://127.0.0.1:%s/healthz", s.Healthcheck, port)
	}

	paths := []string{cfg.Keystone.PasswordFile}
	for _, v := range s.Environment {
		paths = append(paths, v)
	}
	for id, rc := range cfg.Repositories {
		paths = append(paths, rc.PasswordFile)
		if rc.S3Endpoint != "" {
			e, err := url.Parse(rc.S3Endpoint)
			if err != nil {
				t.Fatalf("repository %s: s3_endpoint %s: %v", id, rc.S3Endpoint, err)
			}
			if s3, ok := c.Services[e.Hostname()]; !ok || !slices.Contains(s3.Command, ":"+e.Port()) {
				t.Errorf("repository %s: s3_endpoint %s is no service of this file listening on :%s", id, rc.S3Endpoint, e.Port())
			}
		}
	}
	for _, p := range paths {
		if sec, ok := strings.CutPrefix(p, "/run/secrets/"); ok && !slices.Contains(s.Secrets, sec) {
			t.Errorf("%s: secret %s is not given to the service (secrets %v)", p, sec, s.Secrets)
		}
	}
	if !strings.HasPrefix(cfg.Keystone.PasswordFile, "/run/secrets/") {
		t.Errorf("keystone.password_file %s: want a compose secret", cfg.Keystone.PasswordFile)
	}

	// The API reads the records the workers write: the same registry.
	var workers struct {
		Repositories map[string]activities.RepoConfig `yaml:"repositories"`
	}
	data, err := os.ReadFile(filepath.Join(r, "deploy", "worker.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &workers); err != nil {
		t.Fatal(err)
	}
	for id, rc := range workers.Repositories {
		if got := cfg.Repositories[id]; got != rc {
			t.Errorf("repository %s: api %+v, workers %+v", id, got, rc)
		}
	}
	if len(cfg.Repositories) != len(workers.Repositories) {
		t.Errorf("repositories: api has %d, the workers %d", len(cfg.Repositories), len(workers.Repositories))
	}

	addr := s.Environment["TEMPORAL_ADDRESS"]
	if addr == "" {
		addr = cfg.Temporal.Address
	}
	h, p, _ := strings.Cut(addr, ":")
	if ts, ok := c.Services[h]; !ok || !slices.ContainsFunc(ts.Ports, func(x string) bool { return strings.HasSuffix(x, ":"+p) }) {
		t.Errorf("Temporal address %q: no service %s serving port %s", addr, h, p)
	}
}

// TestDeploySystemdAgreesWithAPI: deploy/systemd/raksha-api.service starts
// raksha-api with flags it has and deploy/systemd's example configuration,
// which it decodes; unprivileged, listening on loopback only (a TLS proxy
// in front), and given only variables it reads.
func TestDeploySystemdAgreesWithAPI(t *testing.T) {
	r := repoRoot(t)
	u, err := deploy.ParseUnit(filepath.Join(r, "deploy", "systemd", "raksha-api.service"))
	if err != nil {
		t.Fatal(err)
	}
	exe, args, err := u.ExecStart("")
	if err != nil {
		t.Fatal(err)
	}
	if exe != "/usr/local/bin/raksha-api" {
		t.Fatalf("ExecStart runs %s", exe)
	}
	var cfgPath string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			cfgPath = v
		}
	}
	name, ok := strings.CutPrefix(cfgPath, "/etc/raksha/")
	if !ok {
		t.Fatalf("--config=%s: want /etc/raksha/NAME.yaml", cfgPath)
	}
	local := filepath.Join(r, "deploy", "systemd", name)
	if err := startsUpTo(t, args, local); err == nil || !strings.Contains(err.Error(), "keystone password file") {
		t.Fatalf("raksha-api %v: %v; want it to get as far as reading the Keystone password file", args, err)
	}
	cfg, err := loadConfig(local)
	if err != nil {
		t.Fatal(err)
	}
	if h, p, err := net.SplitHostPort(cfg.Listen); err != nil || (h != "127.0.0.1" && h != "::1") {
		t.Errorf("listen %s: want loopback, behind the cloud's TLS proxy", cfg.Listen)
	} else if _, err := strconv.Atoi(p); err != nil {
		t.Errorf("listen %s: port %v", cfg.Listen, err)
	}
	if user := u.Get("Service", "User"); user == "" || user == "root" {
		t.Errorf("User=%q: raksha-api needs no root", user)
	}
	for k := range u.Environment() {
		if !slices.Contains(apiEnv, k) {
			t.Errorf("Environment=%s: raksha-api does not read it", k)
		}
	}
}
