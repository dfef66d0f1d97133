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
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/disk/file"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
	"github.com/raksha-backup/raksha/internal/testenv/chaos"
)

// writeDiskWorkflow runs one WriteDisk on host h1 as the Restore workflow
// does (heartbeat timeout, retries), with a short heartbeat timeout so that
// a killed worker's write is retried quickly and its heartbeats (which the
// SDK sends at most every 0.8 of the timeout) reach the server often.
func writeDiskWorkflow(ctx workflow.Context, in activities.WriteDiskInput) (*activities.WriteDiskResult, error) {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue: activities.HostQueue("h1"), StartToCloseTimeout: 10 * time.Minute, HeartbeatTimeout: 2 * time.Second,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 500 * time.Millisecond, MaximumAttempts: 5, NonRetryableErrorTypes: activities.NonRetryable},
	})
	var res activities.WriteDiskResult
	err := workflow.ExecuteActivity(ctx, "WriteDisk", in).Get(ctx, &res)
	return &res, err
}

// TestChaosRestoreWorkerKilled: the host worker (raksha-worker, a separate
// process) writing a restore into a raw image is SIGKILLed at a random
// moment after it has flushed a resume point, and a new one is started a
// moment later. The write must continue from the flushed resume point (not
// from the start) and the target must equal the disk.
func TestChaosRestoreWorkerKilled(t *testing.T) {
	c, addr := startTemporal(t)
	ctx := context.Background()
	dir := t.TempDir()
	rng := chaos.NewRand(t)
	rounds := chaos.Rounds(t, 1)
	const size = restoreChaosSize
	repoDir, pwFile, manifest, want := restoreChaosBackup(t, dir)

	bin := filepath.Join(dir, "raksha-worker")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(repoRoot(t), "worker")).CombinedOutput(); err != nil {
		t.Fatalf("build raksha-worker: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "worker.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("work_dir: %s\nrepositories:\n  main: {url: \"file://%s\", password_file: \"%s\"}\n",
		filepath.Join(dir, "work"), repoDir, pwFile)), 0o600)
	hostDir := filepath.Join(dir, "hosts", "h1")
	os.MkdirAll(hostDir, 0o755)
	w := worker.New(c, activities.ControlQueue, workerOptions())
	w.RegisterWorkflow(writeDiskWorkflow)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	logFile := filepath.Join(dir, "host-worker.log")

	row := chaos.Row{Scenario: "host worker SIGKILLed in the middle of a restore's disk write, restarted 0.5-2 s later",
		Components: "dev server, raksha-worker processes, qemu-nbd into a raw image, local repository", Rounds: rounds}
	for round := range rounds {
		// Under the lab's volume directory: a host worker writes only
		// under its write roots (the host dir and <lab>/volumes).
		target := filepath.Join(dir, "volumes", fmt.Sprintf("target-%d.raw", round))
		os.MkdirAll(filepath.Dir(target), 0o755)
		f, err := os.Create(target)
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(size)
		f.Close()
		first := startHostWorker(t, bin, cfg, addr, logFile, "--host-dir", hostDir)
		in := activities.WriteDiskInput{Repository: "main", Manifest: manifest,
			Target: activities.WriteTarget{Kind: "image", Path: target, Format: "raw"}}
		retry := 0
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: fmt.Sprintf("chaos-restore-%d", round), TaskQueue: activities.ControlQueue},
			writeDiskWorkflow, in)
		if err != nil {
			t.Fatal(err)
		}
		// Wait for a flushed resume point, then a random moment more. A
		// write that ends first (a warm page cache makes it fast) is run
		// again into a fresh target.
		deadline := time.Now().Add(2 * time.Minute)
		var seen activities.WriteDiskProgress
		for seen.Resume == 0 {
			if time.Now().After(deadline) {
				out, _ := os.ReadFile(logFile)
				t.Fatalf("round %d: no resume point flushed in time; worker log:\n%s", round, out)
			}
			desc, err := c.DescribeWorkflowExecution(ctx, run.GetID(), run.GetRunID())
			if err == nil && desc.WorkflowExecutionInfo.GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
				var res activities.WriteDiskResult
				gerr := run.Get(ctx, &res)
				t.Logf("round %d: the write ended (%v, %v: %.1fs) before the kill; again, into the target emptied", round, desc.WorkflowExecutionInfo.GetStatus(), gerr, res.Seconds)
				if err := os.Truncate(target, 0); err != nil {
					t.Fatal(err)
				}
				if err := os.Truncate(target, size); err != nil {
					t.Fatal(err)
				}
				first.kill()
				first = startHostWorker(t, bin, cfg, addr, logFile, "--host-dir", hostDir)
				retry++
				if retry > 5 {
					t.Fatalf("round %d: the write ended before a kill five times", round)
				}
				if run, err = c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: fmt.Sprintf("chaos-restore-%d-%d", round, retry), TaskQueue: activities.ControlQueue},
					writeDiskWorkflow, in); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if err == nil {
				for _, pa := range desc.PendingActivities {
					if pa.HeartbeatDetails != nil {
						_ = converter.GetDefaultDataConverter().FromPayloads(pa.HeartbeatDetails, &seen)
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(chaos.Jitter(rng, 0, 200*time.Millisecond))
		first.kill()
		down := chaos.Jitter(rng, 500*time.Millisecond, 2*time.Second)
		time.Sleep(down)
		restarted := time.Now()
		second := startHostWorker(t, bin, cfg, addr, logFile, "--host-dir", hostDir)
		var res activities.WriteDiskResult
		err = run.Get(ctx, &res)
		took := time.Since(restarted)
		second.kill()
		row.Recover = max(row.Recover, took)
		if err != nil {
			out, _ := os.ReadFile(logFile)
			t.Errorf("round %d: the restore failed after the kill: %v\nworker log:\n%s", round, err, out)
			row.FailedCleanly++
			continue
		}
		row.Completed++
		got := fileSHA(t, target)
		if got != want {
			row.BytesLost += size
			t.Errorf("round %d: the restored image differs from the disk", round)
		}
		if res.ResumedFrom == 0 || res.ResumedFrom < seen.Resume {
			t.Errorf("round %d: the retried write started at %d, want at least the flushed resume point %d", round, res.ResumedFrom, seen.Resume)
		}
		t.Logf("round %d: killed after resume point %d MiB; the retry resumed at %d MiB, fetched %d MiB, done %v after the restart",
			round, seen.Resume>>20, res.ResumedFrom>>20, res.BytesFetched>>20, took.Round(time.Millisecond))
		row.Notes += fmt.Sprintf("resumed at %d/%d MiB; ", res.ResumedFrom>>20, size>>20)
		os.Remove(target)
	}
	chaos.Record(t, row)
}

// restoreChaosSize is the disk the restore chaos scenarios write: big enough
// that a write outlasts its first heartbeats on an idle machine.
const restoreChaosSize = 1536 << 20

// restoreChaosBackup backs up a restoreChaosSize disk (half random, a quarter
// repeated, a zero tail) into a new local repository in dir and returns the
// repository, its password file, the disk manifest and the disk's SHA-256.
func restoreChaosBackup(t *testing.T, dir string) (repoDir, pwFile, manifest, want string) {
	t.Helper()
	ctx := context.Background()
	const size = restoreChaosSize
	data := make([]byte, size)
	rand.Read(data[:size/2])
	copy(data[size/2:], data[:size/4])
	img := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(img)
	want = fmt.Sprintf("%x", sha256.Sum256(data))
	data = nil
	pwFile = filepath.Join(dir, "pw")
	os.WriteFile(pwFile, []byte("secret"), 0o600)
	repoDir = filepath.Join(dir, "repo")
	be, _ := local.Open(repoDir)
	r, err := repo.Init(ctx, be, repo.InitOptions{ChunkSize: 1 << 20, Password: "secret", KDF: repo.KDFParams{Time: 1, Memory: 1024, Threads: 1}},
		repo.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	src, err := file.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	s, err := r.StartBackup(ctx, repo.BackupSpec{Labels: map[string]string{"workload": "big"}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.BackupDisk(ctx, "vm1", "vda", src, repo.DiskOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return repoDir, pwFile, m.ID, want
}

// TestChaosTemporalServerKilledDuringRestoreWrite: the Temporal server is
// SIGKILLed while a restore's disk write runs (in-process host worker,
// qemu-nbd into a raw image) and started again 1-4 s later on its database
// file. The write goes on meanwhile (its heartbeats fail and then resume);
// the workflow must complete, the target must equal the disk.
func TestChaosTemporalServerKilledDuringRestoreWrite(t *testing.T) {
	srv := startKillableServer(t)
	c, err := client.Dial(client.Options{HostPort: srv.addr(), Logger: quietSDKLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	dir := t.TempDir()
	repoDir, pwFile, manifest, want := restoreChaosBackup(t, dir)
	acts := activities.New(activities.Config{
		Repos:   map[string]activities.RepoConfig{"main": {URL: "file://" + repoDir, PasswordFile: pwFile}},
		HostDir: filepath.Join(dir, "hosts", "h1"), WorkDir: filepath.Join(dir, "work"),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	defer activities.Shutdown(ctx, acts)
	startWorkers(t, c, acts, activities.HostQueue("h1"))
	w := worker.New(c, activities.ControlQueue, workerOptions())
	w.RegisterWorkflow(writeDiskWorkflow)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	rng := chaos.NewRand(t)
	rounds := chaos.Rounds(t, 1)
	row := chaos.Row{Scenario: "Temporal server SIGKILLed during a restore's disk write, restarted 1-4 s later",
		Components: "dev server (sqlite file), in-process host worker, qemu-nbd into a raw image, local repository", Rounds: rounds}
	var notes []string
	for round := range rounds {
		// Under the lab's volume directory: a host worker writes only
		// under its write roots (the host dir and <lab>/volumes).
		target := filepath.Join(dir, "volumes", fmt.Sprintf("target-%d.raw", round))
		os.MkdirAll(filepath.Dir(target), 0o755)
		f, err := os.Create(target)
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(restoreChaosSize)
		f.Close()
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: fmt.Sprintf("chaos-restore-server-%d", round), TaskQueue: activities.ControlQueue},
			writeDiskWorkflow, activities.WriteDiskInput{Repository: "main", Manifest: manifest,
				Target: activities.WriteTarget{Kind: "image", Path: target, Format: "raw"}})
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for {
			desc, err := c.DescribeWorkflowExecution(ctx, run.GetID(), run.GetRunID())
			if err == nil && len(desc.PendingActivities) > 0 && desc.PendingActivities[0].LastStartedTime != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the write never started", round)
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(chaos.Jitter(rng, 100*time.Millisecond, 600*time.Millisecond))
		down, restarted := srv.bounce(chaos.Jitter(rng, time.Second, 4*time.Second))
		var res activities.WriteDiskResult
		gctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		err = c.GetWorkflow(gctx, run.GetID(), run.GetRunID()).Get(gctx, &res)
		cancel()
		took := time.Since(restarted)
		row.Recover = max(row.Recover, took)
		if err != nil {
			t.Errorf("round %d: the restore failed after the server came back: %v", round, err)
			row.FailedCleanly++
			continue
		}
		row.Completed++
		if got := fileSHA(t, target); got != want {
			row.BytesLost += restoreChaosSize
			t.Errorf("round %d: the restored image differs from the disk", round)
		}
		notes = append(notes, fmt.Sprintf("%.1fs down, done %.1fs after the restart (resumed at %d MiB)", down.Seconds(), took.Seconds(), res.ResumedFrom>>20))
		t.Logf("round %d: server down %v; the write finished %v after the restart, resumed from %d MiB", round, down.Round(time.Millisecond), took.Round(time.Millisecond), res.ResumedFrom>>20)
		os.Remove(target)
	}
	row.Notes = strings.Join(notes, "; ")
	chaos.Record(t, row)
}
