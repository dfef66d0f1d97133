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
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
	"github.com/raksha-backup/raksha/workflows"
)

// TestLibvirtHostWorkerKilledMidCopyResumes is the kill test on a libvirt
// host: the host worker (raksha-worker --libvirt-uri, a separate process)
// is SIGKILLed while it copies a 1 GiB disk of a libvirt domain through the
// pull-mode export; a new worker finds the libvirt job from its record and
// the copy completes from the saved position; the restore is byte-identical
// and no checkpoint metadata or job is left on the domain.
func TestLibvirtHostWorkerKilledMidCopyResumes(t *testing.T) {
	conn := libvirttest.Conn(t)
	img := vmtest.Image(t)
	c, addr := startTemporal(t)
	ctx := context.Background()
	dir := t.TempDir()
	bin := filepath.Join(dir, "raksha-worker")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(repoRoot(t), "worker")).CombinedOutput(); err != nil {
		t.Fatalf("build raksha-worker: %v\n%s", err, out)
	}
	const size = 1 << 30
	raw := filepath.Join(dir, "random.raw")
	data := make([]byte, size)
	rand.Read(data)
	if err := os.WriteFile(raw, data, 0o600); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "big.qcow2")
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, disk).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	os.Remove(raw)
	d := libvirttest.Boot(t, conn, img, libvirttest.Spec{Images: []string{disk}, NoWriter: true})

	pwFile := filepath.Join(dir, "pw")
	os.WriteFile(pwFile, []byte("secret"), 0o600)
	repoDir := filepath.Join(dir, "repo")
	be, _ := local.Open(repoDir)
	if _, err := repo.Init(ctx, be, repo.InitOptions{ChunkSize: 1 << 20, Password: "secret", Compression: "none"}, repo.Options{}); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "worker.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("work_dir: %s\nrepositories:\n  main: {url: \"file://%s\", password_file: \"%s\"}\n",
		filepath.Join(dir, "work"), repoDir, pwFile)), 0o600)
	acts := activities.New(activities.Config{
		Repos: map[string]activities.RepoConfig{"main": {URL: "file://" + repoDir, PasswordFile: pwFile}},
		Log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Discoverer: staticDiscoverer{vms: []activities.VM{{ID: d.UUID, Name: "db", Host: "h1", Instance: d.Name,
			Disks: []activities.Disk{{Name: "vda", Locator: activities.Locator("libvirt:h1/" + d.UUID + "/target=vda"), Size: size}}}}},
	})
	startWorkers(t, c, acts, activities.ControlQueue)
	logFile := filepath.Join(dir, "host-worker.log")
	reach := []string{"--libvirt-uri", "qemu:///system", "--lock-dir", filepath.Join(dir, "locks")}
	first := startHostWorker(t, bin, cfg, addr, logFile, reach...)

	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.BackupWorkflowID("big"), TaskQueue: activities.ControlQueue},
		workflows.WorkloadBackup, workflows.BackupRequest{Workload: "big", Repository: "main", Consistency: "crash", CopyHeartbeatTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
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
	t.Logf("host worker SIGKILLed after the copy saved its position at %d MiB", resume>>20)
	startHostWorker(t, bin, cfg, addr, logFile, reach...)

	var res workflows.BackupResult
	if err := run.Get(ctx, &res); err != nil {
		out, _ := os.ReadFile(logFile)
		t.Fatalf("%v\nworker log:\n%s", err, out)
	}
	dr := res.Disks[0]
	if dr.ResumedFrom < resume {
		t.Errorf("the retried copy resumed from %d, want at least the saved %d", dr.ResumedFrom, resume)
	}
	t.Logf("backup %s completed after the kill; the retry resumed at %d MiB of %d MiB", res.BackupID, dr.ResumedFrom>>20, int64(size)>>20)
	if names, err := conn.CheckpointNames(ctx, d.Dom); err != nil || len(names) > 0 {
		t.Errorf("checkpoint metadata left: %v %v", names, err)
	}
	if active, err := conn.JobActive(ctx, d.Dom); err != nil || active {
		t.Errorf("job left: %v %v", active, err)
	}
	r, err := repo.Open(ctx, be, "secret", repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	out := &memWriter{b: make([]byte, size)}
	if _, err := r.RestoreDisk(ctx, dr.Manifest, out, repo.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(out.b) != sha256.Sum256(data) {
		t.Fatal("restore after the kill differs from the disk")
	}
}
