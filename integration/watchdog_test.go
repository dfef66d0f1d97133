package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
	"github.com/raksha-backup/raksha/internal/testenv/chaos"
	"github.com/raksha-backup/raksha/workflows"
)

// TestChaosHostWorkerKilledWhileFrozen is #15's hole 3 as it was found: the host
// worker (raksha-worker, a separate process) is SIGKILLed with its process
// group right after it froze its guest (a real guest, real qemu-ga) and
// nothing restarts it. The guest must be thawed by the worker's watchdog
// alone within a few seconds of the freeze deadline. A host worker started
// afterwards serves the rest of the backup, which fails as not
// application-consistent naming the guest whose thaw was lost and why.
func TestChaosHostWorkerKilledWhileFrozen(t *testing.T) {
	img := vmtest.Image(t)
	c, addr := startTemporal(t)
	ctx := context.Background()
	lab := vmtest.LabDir(t)
	v := vmtest.Boot(t, img, vmtest.Spec{LabDir: lab, Host: "h1", Instance: "instance-1", Labels: []string{"a"}})
	hostDir := guest.HostDir(lab, "h1")

	dir := t.TempDir()
	bin := filepath.Join(dir, "raksha-worker")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(repoRoot(t), "worker")).CombinedOutput(); err != nil {
		t.Fatalf("build raksha-worker: %v\n%s", err, out)
	}
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
		Discoverer: staticDiscoverer{vms: []activities.VM{{ID: "srv-1", Name: "db", Host: "h1", Instance: v.Instance,
			Disks: []activities.Disk{{Name: "vda", Locator: activities.Locator("qemu:h1/" + v.Instance + "/" + v.Disks[0].NodeName), Size: 64 << 20}}}}},
	})
	startWorkers(t, c, acts, activities.ControlQueue)
	logFile := filepath.Join(dir, "host-worker.log")
	first := startHostWorker(t, bin, cfg, addr, logFile, "--host-dir", hostDir)

	const freezeTimeout = 10 * time.Second
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.BackupWorkflowID("", "w"), TaskQueue: activities.ControlQueue},
		workflows.WorkloadBackup, workflows.BackupRequest{Workload: "w", Repository: "main", Consistency: "app", FreezeTimeout: freezeTimeout})
	if err != nil {
		t.Fatal(err)
	}
	// Right after the freeze (its record written, the Freeze activity
	// completed), SIGKILL the worker and its process group.
	recFile := filepath.Join(hostDir, "freezes", "socket-"+v.Instance+".json")
	end := time.Now().Add(2 * time.Minute)
	for !freezeDone(ctx, t, c, run) || !exists(recFile) {
		if time.Now().After(end) {
			out, _ := os.ReadFile(logFile)
			t.Fatalf("no freeze within 2 minutes; worker log:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	first.kill()
	killed := time.Now()
	t.Log("host worker SIGKILLed right after the guest was frozen")

	// Nothing restarts it: the watchdog alone thaws the guest.
	status := func() (guest.FreezeStatus, error) {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		a, err := guest.Dial(sctx, v.AgentSocket, guest.Options{NoWait: true, Owner: t.Name()})
		if err != nil {
			return "", err
		}
		defer a.Close()
		return a.FsfreezeStatus(sctx)
	}
	if st, err := status(); err != nil || st != guest.Frozen {
		t.Fatalf("right after the kill: %q, %v; want frozen", st, err)
	}
	var thawed time.Time
	for {
		st, err := status()
		if err != nil && !errors.Is(err, guest.ErrLocked) {
			t.Fatal(err)
		}
		if st == guest.Thawed {
			thawed = time.Now()
			break
		}
		if time.Since(killed) > freezeTimeout+20*time.Second {
			wl, _ := os.ReadFile(filepath.Join(hostDir, "freezes", "watchdog.log"))
			t.Fatalf("guest still frozen %v after the kill with no host worker; watchdog log:\n%s", time.Since(killed), wl)
		}
		time.Sleep(250 * time.Millisecond)
	}
	wl, _ := os.ReadFile(filepath.Join(hostDir, "freezes", "watchdog.log"))
	t.Logf("guest thawed %v after the kill, no host worker running; watchdog log:\n%s", thawed.Sub(killed).Round(time.Millisecond), wl)
	if !strings.Contains(string(wl), "watchdog thawed a guest") {
		t.Fatal("the watchdog did not log its thaw")
	}
	if thawed.Sub(killed) > freezeTimeout+5*time.Second {
		t.Fatalf("thawed %v after the kill; want within the %v freeze timeout plus 5 s", thawed.Sub(killed), freezeTimeout)
	}
	if exists(recFile) {
		t.Fatal("freeze record left after the watchdog's thaw")
	}

	// A host worker comes back; the backup ends, failed, naming db.
	startHostWorker(t, bin, cfg, addr, logFile, "--host-dir", hostDir)
	err = run.Get(ctx, nil)
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != workflows.ErrNotAppConsistent {
		out, _ := os.ReadFile(logFile)
		t.Fatalf("backup: %v; want %s\nworker log:\n%s", err, workflows.ErrNotAppConsistent, out)
	}
	if !strings.Contains(err.Error(), "thaw lost on db: the host worker that froze it is gone") {
		t.Fatalf("backup error %q does not name db's lost thaw", err)
	}
	t.Logf("backup failed as it should: %v", err)
	chaos.Record(t, chaos.Row{Scenario: "host worker SIGKILLed (process group) right after the freeze, not restarted until the guest is thawed",
		Components: "dev server, raksha-worker process and its watchdog, QEMU + qemu-ga", Rounds: 1, FailedCleanly: 1,
		Recover: thawed.Sub(killed), Notes: fmt.Sprintf("thawed by the watchdog alone %.1fs after the kill (freeze timeout %v); the backup failed as not app-consistent naming the guest", thawed.Sub(killed).Seconds(), freezeTimeout)})
}

// freezeDone reports whether the backup's Freeze activity has completed.
func freezeDone(ctx context.Context, t *testing.T, c client.Client, run client.WorkflowRun) bool {
	t.Helper()
	it := c.GetWorkflowHistory(ctx, run.GetID(), run.GetRunID(), false, 0)
	scheduled := map[int64]string{}
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			return false
		}
		if a := ev.GetActivityTaskScheduledEventAttributes(); a != nil {
			scheduled[ev.GetEventId()] = a.GetActivityType().GetName()
		}
		if a := ev.GetActivityTaskCompletedEventAttributes(); a != nil && scheduled[a.GetScheduledEventId()] == "Freeze" {
			return true
		}
	}
	return false
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
