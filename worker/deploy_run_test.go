package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/testsuite"

	"github.com/raksha-backup/raksha/deploy"
)

// TestDeployComposeDataWorkerRuns runs the data worker of docker-compose.yml
// as the container would — raksha-worker built from this tree, the
// service's command and environment, its mounted deploy/worker.yaml — but as
// a process against a Temporal dev server (TEMPORAL_ADDRESS pointed at it,
// and --metrics-address moved to a free loopback port: the machine is
// shared). It must answer /healthz with 200, serve /metrics, poll
// raksha-data in the namespace the service names, and stop cleanly on
// SIGTERM.
func TestDeployComposeDataWorkerRuns(t *testing.T) {
	r := repoRoot(t)
	temporalBin := filepath.Join(r, "bin", "temporal")
	if _, err := os.Stat(temporalBin); err != nil {
		msg := fmt.Sprintf("the temporal CLI (dev server) not found at bin/temporal: run make test (it builds it): %v", err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED: " + msg)
	}
	c, err := deploy.LoadCompose(filepath.Join(r, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	svc := c.Services["data"]
	cfgHost := svc.Mount(svc.Environment["RAKSHA_WORKER_CONFIG"])
	if cfgHost == "" {
		t.Fatalf("data service: no mounted RAKSHA_WORKER_CONFIG (%v)", svc.Volumes)
	}

	dir := t.TempDir()
	bin := filepath.Join(dir, "raksha-worker")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(r, "worker")).CombinedOutput(); err != nil {
		t.Fatalf("build raksha-worker: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{ExistingPath: temporalBin, LogLevel: "error",
		ClientOptions: &client.Options{Namespace: svc.Environment["TEMPORAL_NAMESPACE"]}})
	if err != nil {
		t.Fatalf("start the Temporal dev server: %v", err)
	}
	defer srv.Stop()
	temporalAddr := srv.FrontendHostPort()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := l.Addr().String()
	l.Close()

	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	for k, v := range svc.Environment {
		switch k {
		case "TEMPORAL_ADDRESS":
			v = temporalAddr
		case "RAKSHA_WORKER_CONFIG":
			v = filepath.Join(r, cfgHost)
		case "AWS_SHARED_CREDENTIALS_FILE":
			v = filepath.Join(dir, "no-credentials") // read when a repository is opened, not at start
		}
		env = append(env, k+"="+v)
	}
	args := append(append([]string{}, svc.Command...), "--metrics-address="+metricsAddr)
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()

	// /healthz: 200 once the worker's Temporal client answers.
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, body := get(t, "http://"+metricsAddr+"/healthz")
		if code == http.StatusOK {
			break
		}
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("raksha-worker exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz still %d (%s) after 60 s\n%s", code, body, logs.String())
		}
		time.Sleep(250 * time.Millisecond)
	}
	if code, body := get(t, "http://"+metricsAddr+"/metrics"); code != http.StatusOK || !strings.Contains(body, "# TYPE") {
		t.Errorf("/metrics: %d\n%.500s", code, body)
	}
	for {
		resp, err := srv.Client().DescribeTaskQueue(ctx, "raksha-data", enumspb.TASK_QUEUE_TYPE_ACTIVITY)
		if err == nil && len(resp.GetPollers()) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no poller on raksha-data in namespace %s: %v\n%s", svc.Environment["TEMPORAL_NAMESPACE"], err, logs.String())
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Fatalf("raksha-worker on SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(45 * time.Second):
		t.Fatalf("raksha-worker did not stop on SIGTERM\n%s", logs.String())
	}
	if format := svcLogFormat(t, filepath.Join(r, cfgHost)); format == "json" && !strings.HasPrefix(strings.TrimSpace(logs.String()), "{") {
		t.Errorf("log_format json, but the worker logged:\n%.500s", logs.String())
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

func svcLogFormat(t *testing.T, path string) string {
	_, values := loadWorkerConfig(t, path)
	return values["log_format"]
}
