package integration

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
	"github.com/raksha-backup/raksha/internal/testenv/blockvm"
	"github.com/raksha-backup/raksha/internal/testenv/chaos"
	"github.com/raksha-backup/raksha/workflows"
)

// hostWorker runs raksha-worker --roles host as a separate process.
type hostWorker struct {
	t   *testing.T
	cmd *exec.Cmd
}

func startHostWorker(t *testing.T, bin, cfg, addr, logFile string, reach ...string) *hostWorker {
	t.Helper()
	return startWorkerProcess(t, bin, cfg, addr, logFile, append([]string{"--roles", "host", "--host", "h1"}, reach...)...)
}

// startWorkerProcess runs raksha-worker with cfg and args as a separate
// process (its own process group, which kill SIGKILLs) until the test ends.
func startWorkerProcess(t *testing.T, bin, cfg, addr, logFile string, args ...string) *hostWorker {
	t.Helper()
	lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"--config", cfg, "--temporal", addr}, args...)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &hostWorker{t: t, cmd: cmd}
	t.Cleanup(func() { w.kill(); lf.Close() })
	return w
}

func (w *hostWorker) kill() {
	if w.cmd.ProcessState == nil {
		syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
		w.cmd.Wait()
	}
}

// randomDisk writes size random bytes as a qcow2 image in dir and returns
// the bytes and the image's path.
func randomDisk(t *testing.T, dir string, size int) ([]byte, string) {
	t.Helper()
	raw := filepath.Join(dir, "random.raw")
	data := make([]byte, size)
	rand.Read(data)
	if err := os.WriteFile(raw, data, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(raw)
	img := filepath.Join(dir, "vda.qcow2")
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	return data, img
}

// killMidCopy is one run of the kill test: a backup of one disk (data, at
// locator, of VM instance) whose host worker, raksha-worker with the reach
// arguments in a separate process, is SIGKILLed once the copy has saved a
// position; a new worker must finish the copy from there, and the restore
// must equal data.
type killMidCopy struct {
	dir               string
	data              []byte
	instance, locator string
	reach             []string
	// role is the killed worker's role: "host" (default; reach says how it
	// reaches the guest) or "data" (an rbd: disk; cephConf its cluster).
	role, cephConf string
	row            *chaos.Row // the chaos report's row, filled in by run
}

func (k killMidCopy) run(t *testing.T, c client.Client, addr string) *workflows.BackupResult {
	t.Helper()
	ctx := context.Background()
	bin := filepath.Join(k.dir, "raksha-worker")
	build := []string{"build", "-o", bin}
	if k.role == "data" {
		build = append(build, "-tags", "ceph,pacific") // RBD support
	}
	if out, err := exec.Command("go", append(build, filepath.Join(repoRoot(t), "worker"))...).CombinedOutput(); err != nil {
		t.Fatalf("build raksha-worker: %v\n%s", err, out)
	}
	pwFile := filepath.Join(k.dir, "pw")
	os.WriteFile(pwFile, []byte("secret"), 0o600)
	repoDir := filepath.Join(k.dir, "repo")
	be, _ := local.Open(repoDir)
	if _, err := repo.Init(ctx, be, repo.InitOptions{ChunkSize: 1 << 20, Password: "secret", Compression: "none"}, repo.Options{}); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(k.dir, "worker.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("work_dir: %s\nceph_conf: %q\nrepositories:\n  main: {url: \"file://%s\", password_file: \"%s\"}\n",
		filepath.Join(k.dir, "work"), k.cephConf, repoDir, pwFile)), 0o600)
	logFile := filepath.Join(k.dir, "worker.log")
	start := func() *hostWorker {
		if k.role == "data" {
			return startWorkerProcess(t, bin, cfg, addr, logFile, "--roles", "data")
		}
		return startHostWorker(t, bin, cfg, addr, logFile, k.reach...)
	}

	// control role in this process (the test's stand-in cloud), the host or
	// data role in a child
	acts := activities.New(activities.Config{
		Repos: map[string]activities.RepoConfig{"main": {URL: "file://" + repoDir, PasswordFile: pwFile}},
		Log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Discoverer: staticDiscoverer{vms: []activities.VM{{ID: "srv-1", Name: "db", Host: "h1", Instance: k.instance,
			Disks: []activities.Disk{{Name: "vda", Locator: activities.Locator(k.locator), Size: int64(len(k.data))}}}}},
	})
	startWorkers(t, c, acts, activities.ControlQueue)
	first := start()

	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.BackupWorkflowID("", "big"), TaskQueue: activities.ControlQueue},
		workflows.WorkloadBackup, workflows.BackupRequest{Workload: "big", Repository: "main", Consistency: "crash", CopyHeartbeatTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// Wait until the copy has saved a position in the repository (its
	// partial manifest), then kill its worker.
	var resume int64 = 256 << 20 // CopyDisk saves its position every 256 chunks
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logFile)
			t.Fatalf("the copy saved no position in time; worker log:\n%s", out)
		}
		if m, _ := filepath.Glob(filepath.Join(repoDir, "manifests", "*", "db", "vda", "partial")); len(m) > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	first.kill()
	t.Logf("%s worker SIGKILLed after the copy saved its position at %d MiB", map[string]string{"": "host", "host": "host", "data": "data"}[k.role], resume>>20)
	start()
	restarted := time.Now()

	var res workflows.BackupResult
	if err := run.Get(ctx, &res); err != nil {
		out, _ := os.ReadFile(logFile)
		t.Fatalf("%v\nworker log:\n%s", err, out)
	}
	k.row.Recover = time.Since(restarted)
	d := res.Disks[0]
	if d.ResumedFrom < resume {
		t.Errorf("the retried copy resumed from %d, want at least the saved %d", d.ResumedFrom, resume)
	}
	t.Logf("backup %s completed after the kill; the retry resumed at %d MiB of %d MiB", res.BackupID, d.ResumedFrom>>20, len(k.data)>>20)
	r, err := repo.Open(ctx, be, "secret", repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	out := &memWriter{b: make([]byte, len(k.data))}
	if _, err := r.RestoreDisk(ctx, d.Manifest, out, repo.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(out.b) != sha256.Sum256(k.data) {
		k.row.BytesLost = int64(len(k.data))
		t.Error("restore after the kill differs from the disk")
	}
	if _, err := r.Check(ctx); err != nil {
		t.Fatal(err)
	}
	k.row.Rounds, k.row.Completed = 1, 1
	k.row.Notes = fmt.Sprintf("the retried copy resumed at %d of %d MiB", d.ResumedFrom>>20, len(k.data)>>20)
	return &res
}

// TestChaosHostWorkerKilledMidCopy SIGKILLs the host worker while it copies
// a disk, starts a new one, and checks that the backup completes from the
// saved position (not from the start) with a byte-identical restore.
func TestChaosHostWorkerKilledMidCopy(t *testing.T) {
	blockvm.Require(t)
	c, addr := startTemporal(t)
	dir := t.TempDir()
	data, img := randomDisk(t, dir, 1<<30)
	hostDir := filepath.Join(dir, "hosts", "h1")
	blockvm.Start(t, img, filepath.Join(hostDir, "instances", "instance-1", "qmp.sock"), data)
	row := &chaos.Row{Scenario: "host worker SIGKILLed during a backup's copy (socket layout), restarted", Components: "dev server, raksha-worker process, QEMU (QMP bitmaps, 1 GiB disk), local repository"}
	killMidCopy{dir: dir, data: data, instance: "instance-1", locator: "qemu:h1/instance-1/data0", reach: []string{"--host-dir", hostDir}, row: row}.run(t, c, addr)
	chaos.Record(t, *row)
}
