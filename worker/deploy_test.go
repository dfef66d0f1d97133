package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/raksha-backup/raksha/deploy"
	"github.com/raksha-backup/raksha/internal/cloud"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	r, err := deploy.Root()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// parseWorkerFlags parses args with raksha-worker's own flag set (run with
// -h after them: every flag before it must exist and its value parse, and
// then nothing runs). Every argument must be --name=value, so that no
// positional argument ends the parse before -h.
func parseWorkerFlags(args []string) error {
	for _, a := range args {
		if !strings.HasPrefix(a, "--") || !strings.Contains(a, "=") {
			return errors.New("argument " + strconv.Quote(a) + ": deployment files give raksha-worker --name=value only")
		}
	}
	stderr := os.Stderr // the flag set prints its usage for -h
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	os.Stderr = w
	done := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); done <- b }()
	err = run(quiet, append(append([]string{}, args...), "-h"), func(string) string { return "" })
	os.Stderr = stderr
	w.Close()
	<-done // the usage, or the error and the usage: err says what matters
	r.Close()
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err == nil {
		err = errors.New("the worker ran instead of stopping at -h")
	}
	return err
}

// workerEnv returns the environment variables raksha-worker reads: those it
// asks its getenv for before it does anything, the cloud's OS_* variables
// (cloud.ConfigFromEnv), the AWS SDK variables the S3 backend documents,
// and TEMPORAL_* when the worker or internal/temporalx names them or loads
// the SDK's envconfig.
func workerEnv(t *testing.T) map[string]bool {
	t.Helper()
	known := map[string]bool{}
	rec := func(k string) string { known[k] = true; return "" }
	_ = run(quiet, []string{"--roles=nosuchrole"}, rec) // fails at the role check, after reading its settings
	cloud.ConfigFromEnv(rec)
	r := repoRoot(t)
	s3, err := os.ReadFile(filepath.Join(r, "internal", "repo", "backend", "s3", "s3.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`\bAWS_[A-Z0-9_]+\b`).FindAllString(string(s3), -1) {
		known[m] = true
	}
	var src []byte
	for _, dir := range []string{"worker", filepath.Join("internal", "temporalx")} {
		files, _ := filepath.Glob(filepath.Join(r, dir, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			src = append(src, b...)
		}
	}
	envconfig := bytes.Contains(src, []byte(`"go.temporal.io/sdk/contrib/envconfig"`))
	for _, k := range []string{"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE"} {
		if envconfig || bytes.Contains(src, []byte(strconv.Quote(k))) {
			known[k] = true
		}
	}
	return known
}

// loadWorkerConfig decodes a worker configuration file as raksha-worker
// does (unknown keys refused, the pending ones held aside) and returns it
// with its top-level string values by key (metrics_address, log_format: read
// from there, whether the worker's Config has them yet or not).
func loadWorkerConfig(t *testing.T, path string) (Config, map[string]string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	values := map[string]string{}
	for k, v := range raw {
		if s, ok := v.(string); ok {
			values[k] = s
		}
	}
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("%s does not decode into raksha-worker's Config: %v", path, err)
	}
	if v, ok := values["log_format"]; ok && v != "json" && v != "text" {
		t.Errorf("%s: log_format %q: json or text", path, v)
	}
	return cfg, values
}

// TestDeployComposeAgreesWithWorker: the control and data services of
// docker-compose.yml run raksha-worker with flags it has, a mounted
// configuration every key of which it decodes, the role each is named for,
// variables it reads, the secrets they point at, health checks and
// exposed ports on its metrics address, and addresses of services that
// exist in the file.
func TestDeployComposeAgreesWithWorker(t *testing.T) {
	r := repoRoot(t)
	c, err := deploy.LoadCompose(filepath.Join(r, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	env := workerEnv(t)
	var workers []string
	for _, name := range c.Names() {
		s := c.Services[name]
		if s.Build != nil && len(s.Entrypoint) == 0 { // the image's ENTRYPOINT: raksha-worker
			workers = append(workers, name)
		}
	}
	if !slices.Equal(workers, []string{"control", "data"}) {
		t.Fatalf("raksha-worker services: %v, want [control data] (host workers run on compute nodes)", workers)
	}
	for _, name := range workers {
		s := c.Services[name]
		t.Run(name, func(t *testing.T) {
			if err := parseWorkerFlags(s.Command); err != nil {
				t.Fatalf("command %v: %v", s.Command, err)
			}
			for k := range s.Environment {
				if !env[k] {
					t.Errorf("environment %s: raksha-worker does not read it", k)
				}
			}
			cfgPath := s.Environment["RAKSHA_WORKER_CONFIG"]
			for _, a := range s.Command {
				if v, ok := strings.CutPrefix(a, "--config="); ok {
					cfgPath = v
				}
			}
			host := s.Mount(cfgPath)
			if cfgPath == "" || host == "" {
				t.Fatalf("no configuration mounted: RAKSHA_WORKER_CONFIG or --config %q, volumes %v", cfgPath, s.Volumes)
			}
			cfg, values := loadWorkerConfig(t, filepath.Join(r, host))
			roles := cfg.Roles
			for _, a := range s.Command {
				if v, ok := strings.CutPrefix(a, "--roles="); ok {
					roles = strings.Split(v, ",")
				}
			}
			if !slices.Equal(roles, []string{name}) {
				t.Errorf("roles %v: want [%s]", roles, name)
			}

			// Metrics and health: /healthz on metrics_address's port,
			// which the service exposes (and nothing else).
			port, err := deploy.Port(values["metrics_address"])
			if err != nil {
				t.Fatalf("metrics_address %q: %v", values["metrics_address"], err)
			}
			if !slices.Equal(s.Expose, []string{strconv.Itoa(port)}) {
				t.Errorf("expose %v: want [%d] (metrics_address %s)", s.Expose, port, values["metrics_address"])
			}
			u := s.HealthURL()
			if u == nil || u.Path != "/healthz" || u.Port() != strconv.Itoa(port) || (u.Hostname() != "127.0.0.1" && u.Hostname() != "localhost") {
				t.Errorf("health check %v: want http://127.0.0.1:%d/healthz", s.Healthcheck, port)
			}

			// Temporal: a service of this file on the port it serves.
			if addr := s.Environment["TEMPORAL_ADDRESS"]; addr != "" || cfg.Temporal.Address != "" {
				if addr == "" {
					addr = cfg.Temporal.Address
				}
				h, p, _ := strings.Cut(addr, ":")
				ts, ok := c.Services[h]
				if !ok || !slices.ContainsFunc(ts.Ports, func(s string) bool { return strings.HasSuffix(s, ":"+p) }) {
					t.Errorf("Temporal address %s: no service %s serving port %s", addr, h, p)
				}
			} else {
				t.Errorf("no Temporal address (TEMPORAL_ADDRESS or temporal.address): the worker would dial 127.0.0.1:7233 in its container")
			}

			// Secrets: every /run/secrets/X the worker opens is mounted.
			var paths []string
			for _, v := range s.Environment {
				paths = append(paths, v)
			}
			for id, rc := range cfg.Repositories {
				paths = append(paths, rc.PasswordFile)
				if rc.S3Endpoint == "" {
					continue
				}
				e, err := url.Parse(rc.S3Endpoint)
				if err != nil {
					t.Fatalf("repository %s: s3_endpoint %s: %v", id, rc.S3Endpoint, err)
				}
				s3, ok := c.Services[e.Hostname()]
				if !ok || !slices.Contains(s3.Command, ":"+e.Port()) {
					t.Errorf("repository %s: s3_endpoint %s is no service of this file listening on :%s", id, rc.S3Endpoint, e.Port())
				}
			}
			for _, p := range paths {
				if sec, ok := strings.CutPrefix(p, "/run/secrets/"); ok && !slices.Contains(s.Secrets, sec) {
					t.Errorf("%s: secret %s is not given to the service (secrets %v)", p, sec, s.Secrets)
				}
			}
			if name == "control" {
				if cfg.Cloud == "" || s.Environment["OS_CLIENT_CONFIG_FILE"] == "" {
					t.Errorf("the control worker needs the cloud: cloud %q, OS_CLIENT_CONFIG_FILE %q", cfg.Cloud, s.Environment["OS_CLIENT_CONFIG_FILE"])
				}
			}
		})
	}
}

// TestDeploySystemdAgreesWithWorker: every unit in deploy/systemd starts
// raksha-worker with flags it has and an example configuration of
// deploy/systemd it decodes, for the role the unit is for; the host worker's
// unit keeps the watchdog alive (KillMode=process), starts after libvirtd,
// and keeps the freeze records and guests' locks in directories systemd
// does not remove; the control and data workers run unprivileged.
func TestDeploySystemdAgreesWithWorker(t *testing.T) {
	r := repoRoot(t)
	env := workerEnv(t)
	want := map[string]string{"raksha-worker@.service": "host", "raksha-control.service": "control", "raksha-data.service": "data"}
	for file, role := range want {
		t.Run(file, func(t *testing.T) {
			u, err := deploy.ParseUnit(filepath.Join(r, "deploy", "systemd", file))
			if err != nil {
				t.Fatal(err)
			}
			exe, args, err := u.ExecStart(role)
			if err != nil {
				t.Fatal(err)
			}
			if filepath.Base(exe) != "raksha-worker" {
				t.Fatalf("ExecStart runs %s", exe)
			}
			if err := parseWorkerFlags(args); err != nil {
				t.Fatalf("ExecStart %v: %v", args, err)
			}
			flags := map[string]string{}
			for _, a := range args {
				k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
				flags[k] = v
			}
			if flags["roles"] != role {
				t.Errorf("--roles=%s, want %s", flags["roles"], role)
			}
			name, ok := strings.CutPrefix(flags["config"], "/etc/raksha/")
			if !ok {
				t.Fatalf("--config=%s: want /etc/raksha/NAME.yaml", flags["config"])
			}
			cfg, values := loadWorkerConfig(t, filepath.Join(r, "deploy", "systemd", name))
			if len(cfg.Roles) > 0 && !slices.Equal(cfg.Roles, []string{role}) {
				t.Errorf("%s: roles %v, the unit says %s", name, cfg.Roles, role)
			}
			if _, err := deploy.Port(values["metrics_address"]); err != nil {
				t.Errorf("%s: metrics_address %q: %v", name, values["metrics_address"], err)
			}
			for k := range u.Environment() {
				if !env[k] {
					t.Errorf("Environment=%s: raksha-worker does not read it", k)
				}
			}
			if role != "host" {
				if user := u.Get("Service", "User"); user == "" || user == "root" {
					t.Errorf("User=%q: the %s worker needs no root", user, role)
				}
				if role == "control" && u.Environment()["OS_CLIENT_CONFIG_FILE"] == "" && cfg.Cloud == "" {
					t.Errorf("the control worker gets no cloud credentials")
				}
				return
			}
			if cfg.Host == "" || cfg.LibvirtURI == "" || cfg.HostDir != "" {
				t.Errorf("%s: a host worker on a compute node needs host and libvirt_uri (not host_dir): %+v", name, cfg)
			}
			if u.Get("Service", "KillMode") != "process" {
				t.Errorf("KillMode=%q: the freeze watchdog must survive the worker (KillMode=process)", u.Get("Service", "KillMode"))
			}
			if !strings.Contains(u.Get("Unit", "Requires"), "libvirtd.service") || !strings.Contains(u.Get("Unit", "After"), "libvirtd.service") {
				t.Errorf("want Requires= and After= libvirtd.service")
			}
			if u.Get("Service", "PrivateTmp") == "yes" {
				t.Errorf("PrivateTmp=yes: QEMU, outside the unit, must reach a job socket the worker puts in the temporary directory")
			}
			state := "/var/lib/" + strings.ReplaceAll(u.Get("Service", "StateDirectory"), "%i", role)
			if work := flags["work-dir"]; work == "" || (work != state && !strings.HasPrefix(work, state+"/")) || cfg.FreezeDir != "" {
				t.Errorf("--work-dir=%s (freeze records in <work dir>/freezes) must lie in StateDirectory %s", work, state)
			}
			lock := cfg.LockDir
			if lock == "" {
				lock = "/run/raksha/libvirt-locks"
			}
			if run := "/run/" + u.Get("Service", "RuntimeDirectory"); run != lock || u.Get("Service", "RuntimeDirectoryPreserve") != "yes" {
				t.Errorf("lock_dir %s: want the unit's RuntimeDirectory (%s) with RuntimeDirectoryPreserve=yes: the watchdog takes the guests' locks after the worker stopped", lock, run)
			}
		})
	}
}
