package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/testenv/chaos"
	"github.com/raksha-backup/raksha/workflows"
)

// killableServer is a Temporal dev server (the temporal CLI) on a database
// file, which a test can SIGKILL and start again on the same file and port.
type killableServer struct {
	t       *testing.T
	bin, db string
	port    int
	extra   []int // HTTP and metrics ports
	log     string
	cmd     *exec.Cmd
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startKillableServer(t *testing.T) *killableServer {
	t.Helper()
	bin := filepath.Join(repoRoot(t), "bin", "temporal")
	require(t, "the temporal CLI", bin)
	dir := t.TempDir()
	s := &killableServer{t: t, bin: bin, db: filepath.Join(dir, "temporal.db"), port: freePort(t),
		extra: []int{freePort(t), freePort(t)}, log: filepath.Join(dir, "server.log")}
	s.start()
	t.Cleanup(s.kill)
	return s
}

func (s *killableServer) addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// start runs the server and waits until it answers.
func (s *killableServer) start() {
	s.t.Helper()
	lf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	defer lf.Close()
	args := []string{"server", "start-dev", "--db-filename", s.db, "--port", fmt.Sprint(s.port),
		"--http-port", fmt.Sprint(s.extra[0]), "--metrics-port", fmt.Sprint(s.extra[1]), "--headless", "--log-level", "error"}
	for _, name := range workflows.SearchAttributeNames {
		args = append(args, "--search-attribute", name+"=Keyword")
	}
	s.cmd = exec.Command(s.bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = lf, lf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := client.Dial(client.Options{HostPort: s.addr(), Logger: quietSDKLog()})
		if err == nil {
			_, err = c.CheckHealth(context.Background(), &client.CheckHealthRequest{})
			c.Close()
			if err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(s.log)
			s.t.Fatalf("the Temporal dev server on %s did not answer within a minute: %v\n%s", s.db, err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// bounce SIGKILLs the server, keeps it down for down, and starts it again
// on the same database file; it returns down and when the server answered
// again.
func (s *killableServer) bounce(down time.Duration) (time.Duration, time.Time) {
	s.t.Helper()
	s.kill()
	time.Sleep(down)
	s.start()
	return down, time.Now()
}

// kill SIGKILLs the server (its whole process group).
func (s *killableServer) kill() {
	if s.cmd != nil && s.cmd.ProcessState == nil {
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		s.cmd.Wait()
	}
}

// TestChaosTemporalServerKilled: the Temporal server (a dev server on a
// database file) is SIGKILLed while an app-consistent backup of the lab's
// two guests is in its freeze, copy or commit phase (one picked at random
// each round, and a random moment in it), and started again on the same
// file 1-4 s later. The backup must complete (or fail cleanly), no guest may
// stay frozen, the backup must verify and restore, and it must finish within
// seconds of the restart (before the fix, a completion lost with the server
// was waited for until the activity's start-to-close timeout: minutes).
func TestChaosTemporalServerKilled(t *testing.T) {
	srv := startKillableServer(t)
	c, err := client.Dial(client.Options{HostPort: srv.addr(), Logger: quietSDKLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := startLabDemo(t)
	startWorkers(t, c, d.acts, activities.ControlQueue, activities.HostQueue("h1"))
	ctx := context.Background()
	rng := chaos.NewRand(t)
	rounds := chaos.Rounds(t, 2)
	row := chaos.Row{Scenario: "Temporal server SIGKILLed during a backup's freeze, copy or commit, restarted 1-4 s later",
		Components: "dev server (sqlite file), lab (QEMU + qemu-ga, 2 guests, 4 disks), local repository", Rounds: rounds}
	req := workflows.BackupRequest{Workload: "demo", Project: "demo", Repository: "main", Consistency: "app",
		Selector: cloud.Selector{Workload: "demo"}, FreezeTimeout: 20 * time.Second}
	phases := []string{"freeze", "copy", "commit"}
	var notes []string
	var lastGood *workflows.BackupResult
	for round := range rounds {
		target := phases[rng.IntN(len(phases))]
		wr := startBackupUntil(t, c, req, target, "")
		time.Sleep(chaos.Jitter(rng, 0, 300*time.Millisecond))
		down, restarted := srv.bounce(chaos.Jitter(rng, time.Second, 4*time.Second))
		var res workflows.BackupResult
		gctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		err := c.GetWorkflow(gctx, wr.GetID(), wr.GetRunID()).Get(gctx, &res)
		cancel()
		took := time.Since(restarted)
		row.Recover = max(row.Recover, took)
		notes = append(notes, fmt.Sprintf("%s %.1fs down → done in %.1fs", target, down.Seconds(), took.Seconds()))
		t.Logf("round %d: killed in phase %s, down %v, finished %v after the restart: %+v, %v", round, target, down.Round(time.Millisecond), took.Round(time.Millisecond), res.BackupID, err)

		// Promises: no guest frozen, no session left, the backup whole.
		row.GuestsLeftFrozen += d.frozenGuests(t)
		r := mustRepo(t, d.be)
		if n := countSessions(t, d.repoDir); n != 0 {
			row.Orphans += n
			t.Errorf("round %d: %d backup sessions left open", round, n)
		}
		if err != nil {
			// Failing cleanly: a clear error, no record of the backup.
			if res.BackupID != "" && hasBackup(t, r, res.BackupID) {
				row.WronglyGood++
				t.Errorf("round %d: the backup failed (%v) but its record %s exists", round, err, res.BackupID)
			}
			row.FailedCleanly++
			continue
		}
		if res.Consistency != "app" {
			t.Errorf("round %d: backup consistency %q, want app", round, res.Consistency)
		}
		if _, verr := r.Verify(ctx, []string{res.BackupID}, nil); verr != nil {
			row.WronglyGood++
			t.Errorf("round %d: backup %s reported good does not verify: %v", round, res.BackupID, verr)
		}
		row.Completed++
		lastGood = &res
		if took > time.Minute {
			t.Errorf("round %d: the backup finished %v after the server was back: recovery must take seconds", round, took.Round(time.Second))
		}
	}
	if lastGood != nil {
		r := mustRepo(t, d.be)
		for _, disk := range lastGood.Disks {
			st, files := restoreAndCheck(ctx, t, r, disk.Manifest, disk.Size, filepath.Join(d.dir, "restored.raw"))
			t.Logf("restored %s: %d MiB, %d record files intact", disk.Manifest, st.BytesWritten>>20, files)
		}
	}
	row.Notes = strings.Join(notes, "; ")
	chaos.Record(t, row)
}

// startBackupUntil starts a backup of the lab's demo workload and returns
// once it is in phase (freeze also matches its snapshot that follows). It
// fails the test, with the log file's content if one is named, if the
// backup does not get there within 3 minutes.
func startBackupUntil(t *testing.T, c client.Client, req workflows.BackupRequest, phase, logFile string) client.WorkflowRun {
	t.Helper()
	ctx := context.Background()
	wr, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.BackupWorkflowID("", "demo"),
		TaskQueue: activities.ControlQueue}, workflows.WorkloadBackup, req)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		v, err := c.QueryWorkflow(ctx, wr.GetID(), wr.GetRunID(), workflows.ProgressQuery)
		var p workflows.Progress
		if err == nil && v.Get(&p) == nil && (p.Phase == phase || (phase == "freeze" && p.Phase == "snapshot")) {
			return wr
		}
		if time.Now().After(deadline) {
			var out []byte
			if logFile != "" {
				out, _ = os.ReadFile(logFile)
			}
			t.Fatalf("the backup never reached phase %s; %s:\n%s", phase, logFile, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// frozenGuests counts the lab's guests whose agent says frozen.
func (d *labDemo) frozenGuests(t *testing.T) int {
	t.Helper()
	ctx := context.Background()
	n := 0
	for _, s := range d.lab.Servers() {
		ag, err := d.agent(ctx, s.InstanceRef.Name)
		if err != nil {
			t.Errorf("agent of %s: %v", s.Name, err)
			continue
		}
		st, err := ag.FsfreezeStatus(ctx)
		ag.Close()
		if err != nil {
			t.Errorf("freeze status of %s: %v", s.Name, err)
			continue
		}
		if st != "thawed" {
			t.Errorf("guest %s left %s", s.Name, st)
			n++
		}
	}
	return n
}

// countSessions counts the open backup sessions (session markers) of a
// local repository.
func countSessions(t *testing.T, repoDir string) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(repoDir, "sessions"))
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// hasBackup reports whether the repository has a record of backup id.
func hasBackup(t *testing.T, r *repo.Repository, id string) bool {
	t.Helper()
	list, err := r.ListBackups(context.Background(), repo.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range list {
		if b.ID == id {
			return true
		}
	}
	return false
}

// quietSDKLog drops the SDK's own log lines (a killed server makes many).
func quietSDKLog() sdklog.Logger {
	return sdklog.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// slowStep is an activity that takes a while and completes: the shape of a
// Thaw with post-hooks, or a Commit.
type slowStep struct{}

func (*slowStep) SlowStep(ctx context.Context, d time.Duration) (string, error) {
	select {
	case <-time.After(d):
		return "done", nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// slowStepWorkflow runs SlowStep with the control activities' options: a
// long start-to-close timeout and, with heartbeat, ShortHeartbeat.
func slowStepWorkflow(ctx workflow.Context, d time.Duration, heartbeat bool) (string, error) {
	o := workflow.ActivityOptions{StartToCloseTimeout: 2 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumAttempts: 5}}
	if heartbeat {
		o.HeartbeatTimeout = workflows.ShortHeartbeat
	}
	var out string
	err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, o), "SlowStep", d).Get(ctx, &out)
	return out, err
}

// TestChaosActivityCompletionLostWithServer: the Temporal server is killed
// while an activity runs and stays down past the SDK's 60 s of retrying the
// activity's completion, so the completion is lost; then it comes back. With
// the heartbeat timeout every control and host activity now has (and the
// workers' automatic heartbeats), the server retries the activity at once
// and the workflow completes within seconds. Under make chaos the old
// options (no heartbeat timeout) run too, for the figure: the workflow then
// waits for the activity's start-to-close timeout (2 min).
func TestChaosActivityCompletionLostWithServer(t *testing.T) {
	srv := startKillableServer(t)
	c, err := client.Dial(client.Options{HostPort: srv.addr(), Logger: quietSDKLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w := worker.New(c, "chaos-slow", workerOptions())
	w.RegisterWorkflow(slowStepWorkflow)
	w.RegisterActivity(&slowStep{})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	ctx := context.Background()
	rng := chaos.NewRand(t)
	rounds := chaos.Rounds(t, 1)
	row := chaos.Row{Scenario: "Temporal server SIGKILLed while an activity runs and down 65-70 s, so the activity's completion is lost",
		Components: "dev server (sqlite file), in-process worker", Rounds: rounds}
	run := func(round int, heartbeat bool) time.Duration {
		t.Helper()
		step := 2 * time.Second
		wr, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: fmt.Sprintf("chaos-slow-%d-%v", round, heartbeat), TaskQueue: "chaos-slow"},
			slowStepWorkflow, step, heartbeat)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Minute)
		for {
			desc, err := c.DescribeWorkflowExecution(ctx, wr.GetID(), wr.GetRunID())
			if err == nil && len(desc.PendingActivities) > 0 && desc.PendingActivities[0].LastStartedTime != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the activity never started")
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(chaos.Jitter(rng, 200*time.Millisecond, step-500*time.Millisecond))
		_, restarted := srv.bounce(chaos.Jitter(rng, 65*time.Second, 70*time.Second))
		gctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
		defer cancel()
		var out string
		if err := c.GetWorkflow(gctx, wr.GetID(), wr.GetRunID()).Get(gctx, &out); err != nil || out != "done" {
			t.Fatalf("round %d (heartbeat %v): %q, %v", round, heartbeat, out, err)
		}
		return time.Since(restarted)
	}
	var notes []string
	for round := range rounds {
		took := run(round, true)
		row.Completed++
		row.Recover = max(row.Recover, took)
		notes = append(notes, fmt.Sprintf("%.1fs", took.Seconds()))
		if took > workflows.ShortHeartbeat+15*time.Second {
			t.Errorf("round %d: the workflow completed %v after the server was back, want within the heartbeat timeout (%v) and a retry", round, took.Round(time.Second), workflows.ShortHeartbeat)
		}
	}
	row.Notes = fmt.Sprintf("completed %s after the restart", strings.Join(notes, ", "))
	if os.Getenv(chaos.RoundsEnv) != "" {
		old := run(rounds, false)
		t.Logf("with the old options (no heartbeat timeout): %v", old.Round(100*time.Millisecond))
		row.Notes += fmt.Sprintf("; with the old options (no heartbeat timeout) %.1fs", old.Seconds())
	}
	chaos.Record(t, row)
}
