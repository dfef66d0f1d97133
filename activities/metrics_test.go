package activities

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/testsuite"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/guest/agenttest"
	"github.com/raksha-backup/raksha/internal/metrics"
	"github.com/raksha-backup/raksha/internal/metrics/metricstest"
	"github.com/raksha-backup/raksha/internal/temporalx"
)

// TestThawsCountedAndLogged: a freeze whose deadline passes before its
// Thaw is counted as thawed by the guard; a Thaw on a worker that does not
// hold the freeze, finding the guest still frozen, as a lost freeze. The
// activities' log lines (the guest's freeze among them) carry the ids of
// the activity that wrote them. (The guest agent is the package agenttest's
// fake; the real guests are in integration's TestWorkerMetricsDuringBackup.)
func TestThawsCountedAndLogged(t *testing.T) {
	hostDir := t.TempDir()
	sock := filepath.Join(guest.InstanceDir(hostDir, "i1"), guest.AgentSocketName)
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	fake := agenttest.NewFake(t, sock)
	mx, err := metrics.New()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(temporalx.ActivityContextHandler(slog.NewJSONHandler(&logs, nil)))
	acts := New(Config{HostDir: hostDir, WorkDir: t.TempDir(), Metrics: mx, Log: log})
	defer Shutdown(t.Context(), acts)
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(acts)
	if _, err := env.ExecuteActivity(acts.Freeze, FreezeInput{Instance: "i1", Timeout: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // past the deadline: the guard thaws
	v, err := env.ExecuteActivity(acts.Thaw, ThawInput{Instance: "i1"})
	if err != nil {
		t.Fatal(err)
	}
	var res ThawResult
	if err := v.Get(&res); err != nil || !res.GuardThawed {
		t.Fatalf("thaw after the deadline: %+v %v, want guard-thawed", res, err)
	}

	// Another worker (no freeze held) finds the guest frozen.
	fake.SetFrozen(true)
	other := New(Config{HostDir: hostDir, WorkDir: t.TempDir(), Metrics: mx, Log: log})
	defer Shutdown(t.Context(), other)
	env2 := s.NewTestActivityEnvironment()
	env2.RegisterActivity(other)
	if v, err = env2.ExecuteActivity(other.Thaw, ThawInput{Instance: "i1"}); err != nil {
		t.Fatal(err)
	}
	if err := v.Get(&res); err != nil || res.Lost == "" || fake.Frozen() {
		t.Fatalf("thaw without the freeze: %+v %v (frozen %v), want a lost freeze, thawed", res, err, fake.Frozen())
	}

	f, err := metricstest.Gather(mx.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for by, want := range map[string]float64{metrics.ThawedByGuard: 1, metrics.ThawedLost: 1, metrics.ThawedByOrphanSweep: 0} {
		if got, _ := f.Value(metrics.GuestsThawed, map[string]string{"by": by}); got != want {
			t.Errorf("%s{by=%s} = %v, want %v", metrics.GuestsThawed, by, got, want)
		}
	}

	frozen := 0
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == "guest frozen" {
			frozen++
			if m[temporalx.KeyActivityType] != "Freeze" || m[temporalx.KeyWorkflowID] == nil || m[temporalx.KeyRunID] == nil || m[temporalx.KeyActivityID] == nil {
				t.Errorf("the freeze's log line lacks the Freeze activity's ids: %s", line)
			}
		}
	}
	if frozen != 1 {
		t.Errorf("%d \"guest frozen\" lines, want 1:\n%s", frozen, logs.String())
	}
}
