package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/lab/demo"
	"github.com/raksha-backup/raksha/internal/testenv/chaos"
	"github.com/raksha-backup/raksha/workflows"
)

// startControlWorker runs raksha-worker --roles control (the workflows, the
// cloud and repository activities) as a separate process on the lab's
// clouds.yaml and repository.
func startControlWorker(t *testing.T, bin string, d *labDemo, addr, logFile string) *hostWorker {
	t.Helper()
	cfg := filepath.Join(d.dir, "control.yaml")
	if _, err := os.Stat(cfg); err != nil {
		os.WriteFile(cfg, []byte(fmt.Sprintf("cloud: %s\nwork_dir: %s\nrepositories:\n  main: {url: \"file://%s\", password_file: \"%s\"}\n",
			demo.AdminCloud, filepath.Join(d.dir, "control-work"), d.repoDir, filepath.Join(d.dir, "repo-pw"))), 0o600)
	}
	lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", cfg, "--roles", "control", "--temporal", addr)
	cmd.Env = append(os.Environ(), "OS_CLIENT_CONFIG_FILE="+filepath.Join(d.dir, "clouds.yaml"))
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &hostWorker{t: t, cmd: cmd}
	t.Cleanup(func() { w.kill(); lf.Close() })
	return w
}

// TestChaosControlWorkerKilled: the control worker (raksha-worker --roles
// control, a separate process: the workflows and the cloud and repository
// activities) is SIGKILLed while an app-consistent backup of the lab's two
// guests is in its freeze, copy or commit phase. In most rounds it is
// started again 0.5-3 s later; in one, killed in the freeze, it stays away
// past the freeze deadline first: the host worker's guard must thaw the
// guests without it, and the backup then fails as not app-consistent. Every
// other backup completes; no guest stays frozen, nothing is left open, and a
// completed backup verifies.
func TestChaosControlWorkerKilled(t *testing.T) {
	c, addr := startTemporal(t)
	d := startLabDemo(t)
	startWorkers(t, c, d.acts, activities.HostQueue("h1"))
	bin := filepath.Join(d.dir, "raksha-worker")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(repoRoot(t), "worker")).CombinedOutput(); err != nil {
		t.Fatalf("build raksha-worker: %v\n%s", err, out)
	}
	logFile := filepath.Join(d.dir, "control-worker.log")
	w := startControlWorker(t, bin, d, addr, logFile)
	ctx := context.Background()
	rng := chaos.NewRand(t)
	rounds := chaos.Rounds(t, 2)
	const freezeTimeout = 10 * time.Second
	row := chaos.Row{Scenario: "control worker SIGKILLed during a backup's freeze, copy or commit; restarted 0.5-3 s later, or (one round) after the freeze deadline",
		Components: "dev server, raksha-worker control process, lab (QEMU + qemu-ga, 2 guests, 4 disks), local repository", Rounds: rounds}
	req := workflows.BackupRequest{Workload: "demo", Project: "demo", Repository: "main", Consistency: "app",
		Selector: cloud.Selector{Workload: "demo"}, FreezeTimeout: freezeTimeout}
	phases := []string{"freeze", "copy", "commit"}
	var notes []string
	for round := range rounds {
		target := phases[rng.IntN(len(phases))]
		late := round == rounds-1 // the last round: away past the deadline
		if late {
			target = "freeze"
		}
		wr := startBackupUntil(t, c, req, target, logFile)
		time.Sleep(chaos.Jitter(rng, 0, 200*time.Millisecond))
		w.kill()
		down := chaos.Jitter(rng, 500*time.Millisecond, 3*time.Second)
		if late {
			down = freezeTimeout + 5*time.Second
		}
		// (While the control worker is away the host worker still holds
		// the guests' freeze handles, and with them their locks: the test
		// cannot ask a guest's agent now. The backup's result says whether
		// the guard thawed at the deadline, and the guests are checked
		// once it ends.)
		time.Sleep(down)
		restarted := time.Now()
		w = startControlWorker(t, bin, d, addr, logFile)
		var res workflows.BackupResult
		gctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		err := c.GetWorkflow(gctx, wr.GetID(), wr.GetRunID()).Get(gctx, &res)
		cancel()
		took := time.Since(restarted)
		row.Recover = max(row.Recover, took)
		t.Logf("round %d: killed in %s, down %v, done %v after the restart: %s %v", round, target, down.Round(time.Millisecond), took.Round(time.Millisecond), res.BackupID, err)
		row.GuestsLeftFrozen += d.frozenGuests(t)
		if n := countSessions(t, d.repoDir); n != 0 {
			row.Orphans += n
			t.Errorf("round %d: %d backup sessions left open", round, n)
		}
		r := mustRepo(t, d.be)
		if late && (err == nil || !strings.Contains(err.Error(), "freeze deadline passed before thaw")) {
			t.Errorf("round %d: with the control worker away past the freeze deadline: %v; want the backup failed because the guard thawed", round, err)
		}
		if err != nil {
			if !late {
				t.Errorf("round %d: the backup failed after a short outage: %v", round, err)
			}
			if res.BackupID != "" && hasBackup(t, r, res.BackupID) {
				row.WronglyGood++
			}
			row.FailedCleanly++
			notes = append(notes, fmt.Sprintf("%s, %.1fs down: failed cleanly (%s)", target, down.Seconds(), firstLine(err)))
			continue
		}
		if _, verr := r.Verify(ctx, []string{res.BackupID}, nil); verr != nil {
			row.WronglyGood++
			t.Errorf("round %d: backup %s does not verify: %v", round, res.BackupID, verr)
		}
		row.Completed++
		notes = append(notes, fmt.Sprintf("%s, %.1fs down: completed %s in %.1fs", target, down.Seconds(), res.Consistency, took.Seconds()))
	}
	row.Notes = strings.Join(notes, "; ")
	chaos.Record(t, row)
}

// firstLine is the message of the application error at the root of a
// workflow's failure, cut to 120 bytes.
func firstLine(err error) string {
	s := err.Error()
	var ae *temporal.ApplicationError
	if errors.As(err, &ae) {
		s = ae.Message()
	}
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}
