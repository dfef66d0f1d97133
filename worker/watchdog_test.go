package main

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/freezerec"
	"github.com/raksha-backup/raksha/internal/guest/agenttest"
)

// mainEnv makes the test binary raksha-worker itself (run with its
// arguments), so that the worker's own watchdog subcommand is what runs.
const mainEnv = "RAKSHA_WORKER_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) != "" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "rkm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func waitFor(t *testing.T, what string, limit time.Duration, ok func() bool) {
	t.Helper()
	end := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(end) {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWatchdogSubcommand: "raksha-worker watchdog --dir D --parent PID"
// thaws a guest whose freeze record is past its deadline, logs it to
// D/watchdog.log, runs on while PID lives and ends once it is gone.
func TestWatchdogSubcommand(t *testing.T) {
	dir := shortDir(t)
	f := agenttest.NewFake(t, filepath.Join(dir, "qga.sock"))
	f.SetFrozen(true)
	recs, err := freezerec.Open(filepath.Join(dir, "freezes"))
	if err != nil {
		t.Fatal(err)
	}
	if err := recs.Write(freezerec.Record{ID: "x1", Route: freezerec.Route{Kind: freezerec.Socket, Instance: "vm1", Socket: f.Path},
		Deadline: time.Now().Add(-time.Second), Owner: "a dead worker", PID: 1 << 22}); err != nil {
		t.Fatal(err)
	}
	parent := exec.Command("sleep", "60")
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { parent.Process.Kill(); parent.Wait() }()

	wd := exec.Command(os.Args[0], "watchdog", "--dir", recs.Path(), "--parent", strconv.Itoa(parent.Process.Pid))
	wd.Env = append(os.Environ(), mainEnv+"=1")
	if err := wd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- wd.Wait() }()
	defer wd.Process.Kill()

	waitFor(t, "thaw by the watchdog", 10*time.Second, func() bool { return !f.Frozen() })
	waitFor(t, "record removed", 5*time.Second, func() bool { keys, _ := recs.Keys(); return len(keys) == 0 })
	select {
	case err := <-exited:
		t.Fatalf("watchdog ended while its parent lives: %v", err)
	case <-time.After(time.Second):
	}
	parent.Process.Kill()
	parent.Wait()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("watchdog: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watchdog did not end after its parent")
	}
	log, _ := os.ReadFile(filepath.Join(recs.Path(), "watchdog.log"))
	for _, want := range []string{"watchdog thawed a guest", "instance=vm1", `owner="a dead worker"`, "watchdog done"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("watchdog.log lacks %q:\n%s", want, log)
		}
	}
}

// TestStartWatchdog: a host worker opens its freeze records under its
// host directory and starts a watchdog in a session of its own, with
// itself as the parent.
func TestStartWatchdog(t *testing.T) {
	t.Setenv(mainEnv, "1")
	hostDir := shortDir(t)
	cfg := Config{HostDir: hostDir}
	var acfg activities.Config
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := startWatchdog(ctx, slog.Default(), &cfg, &acfg); err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(hostDir, "freezes")
	if cfg.FreezeDir != want || acfg.Freezes == nil || acfg.Freezes.Path() != want {
		t.Fatalf("freeze dir %q, records %v; want %s", cfg.FreezeDir, acfg.Freezes, want)
	}
	logf := filepath.Join(want, "watchdog.log")
	serving := "parent=" + strconv.Itoa(os.Getpid())
	waitFor(t, "watchdog serving", 10*time.Second, func() bool {
		b, _ := os.ReadFile(logf)
		return strings.Contains(string(b), serving)
	})
	pid, err := os.ReadFile(filepath.Join(want, ".watchdog.lock"))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(pid)))
	sid, err := unix.Getsid(n)
	if err != nil || sid != n {
		t.Fatalf("watchdog %d: session %d, %v; want a session of its own", n, sid, err)
	}
	unix.Kill(n, unix.SIGTERM) // this test's watchdog ends with it
}
