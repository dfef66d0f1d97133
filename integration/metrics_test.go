package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/lab/demo"
	"github.com/raksha-backup/raksha/internal/metrics"
	"github.com/raksha-backup/raksha/internal/metrics/metricstest"
	"github.com/raksha-backup/raksha/workflows"
)

// TestWorkerMetricsDuringBackup runs the real raksha-worker (roles control
// and host, one process) against the lab cloud's two QEMU guests, reaching
// the Temporal dev server through TEMPORAL_ADDRESS only, with
// metrics_address in its YAML and --log-format json. While two
// app-consistent backups run (a full, then an incremental) it scrapes
// /metrics and /healthz as Prometheus would; after each, the figures it
// serves must equal the backup records in the repository: bytes read, new,
// reused and stored (the last backup's and the running totals, and the
// copies'), the freeze windows of each VM and of the workload, one backup
// duration, one copy-permit wait per disk, and the SDK's own activity
// metrics. Every JSON log line written inside an activity names its
// workflow, run, activity and activity type.
func TestWorkerMetricsDuringBackup(t *testing.T) {
	c, addr := startTemporal(t)
	d := startLabDemo(t)
	ctx := context.Background()
	bin := filepath.Join(d.dir, "raksha-worker")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(repoRoot(t), "worker")).CombinedOutput(); err != nil {
		t.Fatalf("build raksha-worker: %v\n%s", err, out)
	}
	cfg := filepath.Join(d.dir, "worker.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("cloud: %s\nwork_dir: %s\nmetrics_address: 127.0.0.1:0\nrepositories:\n  main: {url: \"file://%s\", password_file: \"%s\"}\n",
		demo.AdminCloud, filepath.Join(d.dir, "work"), d.repoDir, filepath.Join(d.dir, "repo-pw"))), 0o600)
	// A guest left frozen by no one: the worker's orphan sweep must thaw
	// it when it starts, and count it.
	orphan := d.lab.Servers()[0].InstanceRef.Name
	ag, err := d.agent(ctx, orphan)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ag.FsfreezeFreeze(ctx, nil); err != nil {
		t.Fatal(err)
	}
	ag.Close() // a bare freeze: no guard, nothing thaws it on close

	logFile := filepath.Join(d.dir, "worker.log")
	lf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", cfg, "--roles", "control,host", "--host", "h1", "--host-dir", d.hostDir, "--log-format", "json")
	// The worker reaches Temporal through a TCP relay the test can cut.
	relay := startRelay(t, addr)
	cmd.Env = append(os.Environ(), "OS_CLIENT_CONFIG_FILE="+filepath.Join(d.dir, "clouds.yaml"),
		"TEMPORAL_ADDRESS="+relay.addr(), "TEMPORAL_NAMESPACE=default", "TEMPORAL_CONFIG_FILE="+filepath.Join(d.dir, "no-temporal.toml"))
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &hostWorker{t: t, cmd: cmd}
	t.Cleanup(func() { w.kill(); lf.Close() })
	workerLog := func() string { b, _ := os.ReadFile(logFile); return string(b) }

	// The worker logs where it serves (port 0 picks one).
	base := ""
	for deadline := time.Now().Add(time.Minute); base == ""; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the worker did not say where it serves /metrics; its log:\n%s", workerLog())
		}
		for _, l := range jsonLines(t, workerLog(), false) {
			if a, ok := l["metrics_address"].(string); ok {
				base = "http://" + a
			}
		}
	}
	health := func() (int, string) {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		var b strings.Builder
		bufio.NewReader(resp.Body).WriteTo(&b)
		return resp.StatusCode, b.String()
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		code, body := health()
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz never answered 200 (last: %d %q); worker log:\n%s", code, body, workerLog())
		}
	}
	// The socket layout's sweep runs before the worker connects.
	if f, err := metricstest.Scrape(ctx, base+"/metrics"); err != nil {
		t.Fatal(err)
	} else if v, _ := f.Value(metrics.GuestsThawed, map[string]string{"by": metrics.ThawedByOrphanSweep}); v != 1 {
		t.Errorf("%s{by=orphan_sweep} = %v after the sweep thawed %s, want 1", metrics.GuestsThawed, v, orphan)
	}

	r := mustRepo(t, d.be)
	type totals struct{ read, new, reused, stored float64 }
	var sum totals
	vmWindows, vmSum := 0, 0.0
	workloadSum := 0.0
	var runs []client.WorkflowRun
	var last *workflows.BackupResult
	for i := 1; i <= 2; i++ {
		// Scrape all along the backup, as Prometheus would.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var scrapes, sdkSeen, unhealthy int
		var scrapeErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
				}
				f, err := metricstest.Scrape(ctx, base+"/metrics")
				if err != nil {
					scrapeErr = err
					continue
				}
				scrapes++
				if _, ok := f.Value("temporal_request_total", nil); ok {
					sdkSeen++
				}
				if code, _ := health(); code != http.StatusOK {
					unhealthy++
				}
			}
		}()
		start := time.Now()
		wr, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.BackupWorkflowID("", "demo"), TaskQueue: activities.ControlQueue},
			workflows.WorkloadBackup, workflows.BackupRequest{Workload: "demo", Project: "demo", Repository: "main", Consistency: "app",
				Selector: cloud.Selector{Workload: "demo"}, FreezeTimeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		var res workflows.BackupResult
		err = wr.Get(ctx, &res)
		took := time.Since(start)
		close(stop)
		wg.Wait()
		if err != nil {
			t.Fatalf("backup %d: %v\nworker log:\n%s", i, err, workerLog())
		}
		runs = append(runs, wr)
		last = &res
		if scrapes < 2 || scrapeErr != nil || unhealthy > 0 || sdkSeen == 0 {
			t.Errorf("backup %d (%v): %d scrapes during it (last error %v), %d with the SDK's request metrics, %d unhealthy answers",
				i, took.Round(time.Millisecond), scrapes, scrapeErr, sdkSeen, unhealthy)
		}
		b, err := r.LoadBackup(ctx, res.BackupID)
		if err != nil {
			t.Fatal(err)
		}
		if b.Consistency != "app" || len(b.FreezeWindows) != 2 || b.WorkloadWindow <= 0 {
			t.Fatalf("backup %d record: consistency %s, windows %v, workload window %v", i, b.Consistency, b.FreezeWindows, b.WorkloadWindow)
		}
		sum.read += float64(b.Stats.BytesRead)
		sum.new += float64(b.Stats.BytesNew)
		sum.reused += float64(b.Stats.BytesReused)
		sum.stored += float64(b.Stats.BytesStored)
		for _, w := range b.FreezeWindows {
			vmWindows++
			vmSum += w.Seconds()
		}
		workloadSum += b.WorkloadWindow.Seconds()

		f, err := metricstest.Scrape(ctx, base+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		demoMain := map[string]string{"workload": "demo", "repository": "main"}
		kind := func(k string) map[string]string {
			return map[string]string{"workload": "demo", "repository": "main", "kind": k}
		}
		for _, c := range []struct {
			name   string
			labels map[string]string
			want   float64
		}{
			{metrics.BackupLastBytes, kind("read"), float64(b.Stats.BytesRead)},
			{metrics.BackupLastBytes, kind("new"), float64(b.Stats.BytesNew)},
			{metrics.BackupLastBytes, kind("reused"), float64(b.Stats.BytesReused)},
			{metrics.BackupLastBytes, kind("stored"), float64(b.Stats.BytesStored)},
			{metrics.BackupBytes, kind("read"), sum.read},
			{metrics.BackupBytes, kind("new"), sum.new},
			{metrics.BackupBytes, kind("reused"), sum.reused},
			{metrics.BackupBytes, kind("stored"), sum.stored},
			// This worker made every copy (host-local disks).
			{metrics.CopyBytes, map[string]string{"repository": "main", "kind": "read"}, sum.read},
			{metrics.CopyBytes, map[string]string{"repository": "main", "kind": "stored"}, sum.stored},
			{metrics.BackupsCommitted, map[string]string{"workload": "demo", "repository": "main", "consistency": "app"}, float64(i)},
			{metrics.FreezeWindowLast, map[string]string{"workload": "demo"}, b.WorkloadWindow.Seconds()},
		} {
			got, ok := f.Value(c.name, c.labels)
			if !ok || math.Abs(got-c.want) > 1e-6 {
				t.Errorf("backup %d: %s %v = %v (served: %v), the record says %v", i, c.name, c.labels, got, ok, c.want)
			}
		}
		if n, s := f.Histogram(metrics.FreezeWindowVM, map[string]string{"workload": "demo"}); n != uint64(vmWindows) || math.Abs(s-vmSum) > 1e-6 {
			t.Errorf("backup %d: VM freeze windows: %d observations, sum %v s; the records: %d, %v s", i, n, s, vmWindows, vmSum)
		}
		if n, s := f.Histogram(metrics.FreezeWindowWorkload, map[string]string{"workload": "demo"}); n != uint64(i) || math.Abs(s-workloadSum) > 1e-6 {
			t.Errorf("backup %d: workload freeze windows: %d observations, sum %v s; the records: %d, %v s", i, n, s, i, workloadSum)
		}
		if n, s := f.Histogram("raksha_backup_duration_seconds", map[string]string{"workload": "demo", "repository": "main", "outcome": "success",
			"workflow_type": "WorkloadBackup"}); n != uint64(i) || s <= 0 || s > took.Seconds()*float64(i)+5 {
			t.Errorf("backup %d: %d backup durations summing to %v s (this one took %v)", i, n, s, took)
		}
		if n, _ := f.Histogram("raksha_copy_permit_wait_seconds", demoMain); n != uint64(i*len(res.Disks)) {
			t.Errorf("backup %d: %d copy-permit waits, want one per disk copied (%d)", i, n, i*len(res.Disks))
		}
		if n, _ := f.Histogram("temporal_activity_execution_latency_seconds", map[string]string{"activity_type": "CopyDisk"}); n < uint64(i*len(res.Disks)) {
			t.Errorf("backup %d: the SDK's CopyDisk execution latencies: %d, want at least %d", i, n, i*len(res.Disks))
		}
		if v, _ := f.Value(metrics.GuestsThawed, map[string]string{"by": metrics.ThawedByGuard}); v != 0 {
			t.Errorf("backup %d: %v guests thawed by the guard, want none", i, v)
		}
		t.Logf("backup %d (%s) in %v, %d scrapes during it: read %d, new %d, reused %d, stored %d bytes; freeze windows %v, workload %v",
			i, res.BackupID, took.Round(time.Millisecond), scrapes, b.Stats.BytesRead, b.Stats.BytesNew, b.Stats.BytesReused, b.Stats.BytesStored,
			b.FreezeWindows, b.WorkloadWindow)
		if i == 1 {
			time.Sleep(2 * time.Second) // the guests' writers go on: the second backup has new data
		}
	}
	d.assertThawed(t)

	// A restore of one volume of the last backup to a new volume: its
	// duration and the bytes it wrote.
	vol := diskOf(t, last, "demo-2", "vol-")
	volID := strings.TrimPrefix(strings.Split(vol.Manifest, "/")[2], "vol-")
	rw, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "restore/metrics", TaskQueue: activities.ControlQueue}, workflows.Restore,
		workflows.RestoreRequest{Repository: "main", BackupID: last.BackupID, Volumes: []string{volID}, NamePrefix: "m-"})
	if err != nil {
		t.Fatal(err)
	}
	var rres workflows.RestoreResult
	if err := rw.Get(ctx, &rres); err != nil {
		t.Fatalf("restore: %v\nworker log:\n%s", err, workerLog())
	}
	f, err := metricstest.Scrape(ctx, base+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := f.Value(metrics.RestoreBytes, map[string]string{"repository": "main"}); rres.Bytes != vol.Size || v != float64(rres.Bytes) {
		t.Errorf("%s = %v; the restore wrote %d bytes of a %d-byte volume", metrics.RestoreBytes, v, rres.Bytes, vol.Size)
	}
	if n, s := f.Histogram("raksha_restore_duration_seconds", map[string]string{"operation": "restore", "repository": "main", "outcome": "success"}); n != 1 || math.Abs(s-rres.Seconds) > 1 {
		t.Errorf("restore durations: %d summing to %v s; the restore says it took %v s", n, s, rres.Seconds)
	}
	t.Logf("restore of volume %s: %d bytes in %.1f s", volID, rres.Bytes, rres.Seconds)

	// Temporal out of reach: /healthz says so.
	relay.cut()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		code, body := health()
		if code == http.StatusServiceUnavailable && strings.Contains(body, "health check of Temporal") {
			t.Logf("/healthz with Temporal out of reach: %d %s", code, strings.TrimSpace(body))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz still %d %q 30 s after the worker lost Temporal", code, body)
		}
	}

	// JSON logs: every line is a JSON object; every line written in an
	// activity names its run; the guests' freezes (written in Freeze) do.
	frozen := 0
	for _, l := range jsonLines(t, workerLog(), true) {
		_, inActivity := l["activity_id"]
		if !inActivity && l["msg"] != "guest frozen" {
			continue
		}
		for _, k := range []string{"workflow_id", "run_id", "activity_id", "activity_type"} {
			if v, _ := l[k].(string); v == "" {
				t.Errorf("log line %v has no %s", l, k)
			}
		}
		if l["msg"] == "guest frozen" {
			frozen++
			ok := false
			for _, run := range runs {
				ok = ok || (l["workflow_id"] == run.GetID() && l["run_id"] == run.GetRunID())
			}
			if !ok || l["activity_type"] != "Freeze" {
				t.Errorf("freeze line %v: not of a Freeze of the backups' runs %v", l, runs)
			}
		}
	}
	if frozen != 4 {
		t.Errorf("%d \"guest frozen\" lines, want 4 (2 guests, 2 backups)", frozen)
	}
}

// relay is a TCP relay on 127.0.0.1 to a target, which cut breaks: every
// connection closed, no new one accepted.
type relay struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startRelay(t *testing.T, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln}
	t.Cleanup(r.cut)
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, in, out)
			r.mu.Unlock()
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) cut() {
	r.ln.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

// jsonLines parses a JSON log; with strict, a line that is not a JSON
// object fails the test.
func jsonLines(t *testing.T, log string, strict bool) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			if strict {
				t.Errorf("log line is not JSON: %q", line)
			}
			continue
		}
		out = append(out, m)
	}
	return out
}
