package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/temporalx"
	"github.com/raksha-backup/raksha/workflows"
)

// repoRoot finds the module root (for ./bin/temporal).
func repoRoot(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// require fails under CI and skips loudly elsewhere when a component is missing.
func require(t testing.TB, what, path string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		return
	}
	if _, err := exec.LookPath(path); err == nil {
		return
	}
	msg := fmt.Sprintf("%s not found at %s: run `make test` (it installs it)", what, path)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPED: " + msg)
}

// startTemporal starts a real Temporal dev server (the temporal CLI built by
// the Makefile) with Raksha's search attributes, for the test's duration.
func startTemporal(t *testing.T) (client.Client, string) {
	t.Helper()
	bin := filepath.Join(repoRoot(t), "bin", "temporal")
	require(t, "the temporal CLI", bin)
	sa := temporal.NewSearchAttributes(workflows.SAWorkload.ValueSet(""), workflows.SAProject.ValueSet(""),
		workflows.SAOperation.ValueSet(""), workflows.SAPolicy.ValueSet(""), workflows.SABackup.ValueSet(""), workflows.SADrill.ValueSet(""))
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{
		ExistingPath:     bin,
		LogLevel:         "error",
		SearchAttributes: sa,
		ClientOptions:    &client.Options{Namespace: "default"},
	})
	if err != nil {
		t.Fatalf("start the Temporal dev server: %v", err)
	}
	t.Cleanup(func() { srv.Stop() })
	t.Logf("Temporal dev server at %s up in %v", srv.FrontendHostPort(), time.Since(start).Round(time.Millisecond))
	return srv.Client(), srv.FrontendHostPort()
}

// workerOptions are the options raksha-worker runs its workers with that
// matter to the tests: the activity pollers, and automatic heartbeats.
func workerOptions() worker.Options {
	return worker.Options{MaxConcurrentActivityTaskPollers: activities.ActivityPollers,
		Interceptors: []interceptor.WorkerInterceptor{temporalx.AutoHeartbeat()}}
}

// startWorkers runs in-process workers of acts on the queues until the test
// ends, each registering only its role's activities (as raksha-worker
// does); the control queue also runs the workflows.
func startWorkers(t *testing.T, c client.Client, acts *activities.Activities, queues ...string) {
	t.Helper()
	startWorkersWith(t, c, acts, nil, queues...)
}

// startWorkersWith is startWorkers with more interceptors on every worker
// (after the ones raksha-worker runs with).
func startWorkersWith(t *testing.T, c client.Client, acts *activities.Activities, extra []interceptor.WorkerInterceptor, queues ...string) {
	t.Helper()
	for _, q := range queues {
		o := workerOptions()
		o.Interceptors = append(o.Interceptors, extra...)
		w := worker.New(c, q, o)
		if q == activities.ControlQueue {
			w.RegisterWorkflow(workflows.WorkloadBackup)
			w.RegisterWorkflow(workflows.CopyDisks)
			w.RegisterWorkflow(workflows.Restore)
			w.RegisterWorkflow(workflows.Clone)
			w.RegisterWorkflow(workflows.CloneDelete)
			w.RegisterWorkflow(workflows.RepositoryMaintenance)
			w.RegisterWorkflow(workflows.RestoreDrill)
			w.RegisterWorkflow(workflows.Semaphore)
		}
		switch {
		case q == activities.ControlQueue:
			activities.RegisterRole(w, acts, activities.RoleControl)
		case q == activities.DataQueue:
			activities.RegisterRole(w, acts, activities.RoleData)
		default:
			activities.RegisterRole(w, acts, activities.RoleHost)
		}
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Stop)
	}
}
