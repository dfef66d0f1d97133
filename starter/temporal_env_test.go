package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/raksha-backup/raksha/workflows"
)

// TestTemporalOptionsPrecedence: the CLI's Temporal settings come from its
// flags, else RAKSHA_TEMPORAL and RAKSHA_NAMESPACE, else the standard
// TEMPORAL_* variables over the config file's profile, else the defaults.
func TestTemporalOptionsPrecedence(t *testing.T) {
	dir := t.TempDir()
	toml := filepath.Join(dir, "temporal.toml")
	os.WriteFile(toml, []byte("[profile.default]\naddress = \"file:7233\"\nnamespace = \"ns-file\"\n"), 0o600)
	for _, tc := range []struct {
		name     string
		env      map[string]string
		flags    temporalFlags
		addr, ns string
	}{
		{"defaults", map[string]string{"TEMPORAL_CONFIG_FILE": filepath.Join(dir, "none")}, temporalFlags{}, "127.0.0.1:7233", "default"},
		{"config file", map[string]string{"TEMPORAL_CONFIG_FILE": toml}, temporalFlags{}, "file:7233", "ns-file"},
		{"TEMPORAL_ADDRESS", map[string]string{"TEMPORAL_CONFIG_FILE": toml, "TEMPORAL_ADDRESS": "env:7233"}, temporalFlags{}, "env:7233", "ns-file"},
		{"RAKSHA_TEMPORAL", map[string]string{"TEMPORAL_CONFIG_FILE": toml, "TEMPORAL_ADDRESS": "env:7233", "RAKSHA_TEMPORAL": "raksha:7233",
			"TEMPORAL_NAMESPACE": "ns-env"}, temporalFlags{}, "raksha:7233", "ns-env"},
		{"flags", map[string]string{"TEMPORAL_CONFIG_FILE": toml, "TEMPORAL_ADDRESS": "env:7233", "RAKSHA_TEMPORAL": "raksha:7233",
			"RAKSHA_NAMESPACE": "ns-raksha"}, temporalFlags{address: "flag:7233", namespace: "ns-flag"}, "flag:7233", "ns-flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newApp(&strings.Builder{}, &strings.Builder{}, func(k string) string { return tc.env[k] })
			opts, err := a.temporalOptions(tc.flags)
			if err != nil {
				t.Fatal(err)
			}
			if opts.HostPort != tc.addr || opts.Namespace != tc.ns {
				t.Errorf("%s %s, want %s %s", opts.HostPort, opts.Namespace, tc.addr, tc.ns)
			}
		})
	}
}

// TestTemporalSetupFromEnvironment runs `raksha temporal-setup` against a
// real Temporal dev server reached only through the standard settings: a
// profile of a Temporal config file (TEMPORAL_CONFIG_FILE,
// TEMPORAL_PROFILE), then TEMPORAL_ADDRESS, and --temporal over a wrong
// TEMPORAL_ADDRESS.
func TestTemporalSetupFromEnvironment(t *testing.T) {
	bin, _ := filepath.Abs(filepath.Join("..", "bin", "temporal"))
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the temporal CLI is missing at %s: run make test", bin)
		}
		t.Skipf("SKIPPED: the temporal CLI is missing at %s: run make test", bin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{ExistingPath: bin, LogLevel: "error",
		ClientOptions: &client.Options{Namespace: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	dir := t.TempDir()
	toml := filepath.Join(dir, "temporal.toml")
	os.WriteFile(toml, []byte(fmt.Sprintf("[profile.lab]\naddress = %q\nnamespace = \"default\"\n", srv.FrontendHostPort())), 0o600)
	const wrong = "127.0.0.1:1"
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		fail string // part of the error, "" for success
	}{
		{"profile", map[string]string{"TEMPORAL_CONFIG_FILE": toml, "TEMPORAL_PROFILE": "lab"}, nil, ""},
		{"TEMPORAL_ADDRESS", map[string]string{"TEMPORAL_CONFIG_FILE": filepath.Join(dir, "none"), "TEMPORAL_ADDRESS": srv.FrontendHostPort()}, nil, ""},
		{"TEMPORAL_ADDRESS over the profile", map[string]string{"TEMPORAL_CONFIG_FILE": toml, "TEMPORAL_PROFILE": "lab", "TEMPORAL_ADDRESS": wrong}, nil, wrong},
		{"--temporal over TEMPORAL_ADDRESS", map[string]string{"TEMPORAL_CONFIG_FILE": toml, "TEMPORAL_ADDRESS": wrong}, []string{"--temporal", srv.FrontendHostPort()}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &cli{t: t, env: tc.env}
			out, _, err := c.run(append([]string{"temporal-setup"}, tc.args...)...)
			switch {
			case tc.fail == "" && err != nil:
				t.Fatalf("temporal-setup: %v", err)
			case tc.fail == "" && !strings.Contains(out, "namespace default"):
				t.Errorf("temporal-setup said %q", out)
			case tc.fail != "" && (err == nil || !strings.Contains(err.Error(), tc.fail)):
				t.Errorf("temporal-setup: %v, want a failure naming %s", err, tc.fail)
			}
		})
	}
}

// TestStartWhileRunningRefused: a second `raksha backup start` of a workload
// whose backup runs, or a second `raksha clone start` of a clone name that
// runs, is refused with a clear error (the SDK would otherwise hand back the
// running run as if it had been started). No worker runs, so the first of
// each stays running.
func TestStartWhileRunningRefused(t *testing.T) {
	srv := startDevServerWithSA(t)
	c := &cli{t: t, env: map[string]string{"TEMPORAL_CONFIG_FILE": filepath.Join(t.TempDir(), "none")}}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"backup", "start", "--workload", "web", "--project", "p1", "--repository", "main"}, "a backup of workload web is already running (workflow backup/p1/web)"},
		{[]string{"clone", "start", "20261207-000000-abcdef", "--name", "stg", "--repository", "main", "--to-project", "staging"}, "clone clone/stg exists already"},
	} {
		args := append([]string{"--temporal", srv.FrontendHostPort()}, tc.args...)
		if _, errs, err := c.run(args...); err != nil {
			t.Fatalf("first %v: %v\n%s", tc.args[:2], err, errs)
		}
		_, _, err := c.run(args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("second %v while the first runs: %v; want %q", tc.args[:2], err, tc.want)
		}
	}
}

// startDevServerWithSA starts a Temporal dev server (bin/temporal) with
// Raksha's search attributes, stopped when the test ends.
func startDevServerWithSA(t *testing.T) *testsuite.DevServer {
	t.Helper()
	bin, _ := filepath.Abs(filepath.Join("..", "bin", "temporal"))
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the temporal CLI is missing at %s: run make test", bin)
		}
		t.Skipf("SKIPPED: the temporal CLI is missing at %s: run make test", bin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{ExistingPath: bin, LogLevel: "error",
		ClientOptions: &client.Options{Namespace: "default"},
		SearchAttributes: temporal.NewSearchAttributes(workflows.SAWorkload.ValueSet(""), workflows.SAProject.ValueSet(""),
			workflows.SAOperation.ValueSet(""), workflows.SAPolicy.ValueSet(""))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	return srv
}
