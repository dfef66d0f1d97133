package activities

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.temporal.io/sdk/testsuite"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/guest/agenttest"
)

// TestGuestRunOutputBoundedAndRedacted runs GuestRun (as the host role
// registers it) against a guest agent whose command prints megabytes and a
// password: the result, which lands in the workflow's history, holds at
// most a 4 KiB tail of each stream with the password redacted.
func TestGuestRunOutputBoundedAndRedacted(t *testing.T) {
	hostDir, err := os.MkdirTemp("", "rka")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(hostDir) })
	dir := guest.InstanceDir(hostDir, "i-1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	agenttest.NewFake(t, filepath.Join(dir, guest.AgentSocketName))
	a := New(Config{HostDir: hostDir, WorkDir: t.TempDir()})
	t.Cleanup(func() { Shutdown(t.Context(), a) })
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	RegisterRole(env, a, RoleHost)
	script := "head -c 2000000 /dev/zero | tr '\\0' y; echo; echo 'export PGPASSWORD=hunter2'; " +
		"head -c 2000000 /dev/zero | tr '\\0' z >&2; echo 'token=abc123' >&2; exit 2"
	v, err := env.ExecuteActivity("GuestRun", GuestRunInput{Instance: "i-1", Hook: Hook{Path: "/bin/sh", Args: []string{"-c", script}}})
	if err != nil {
		t.Fatal(err)
	}
	var res GuestRunResult
	if err := v.Get(&res); err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 2 {
		t.Errorf("exit %d", res.ExitCode)
	}
	for name, out := range map[string]string{"stdout": res.Stdout, "stderr": res.Stderr} {
		if len(out) > guest.OutputTailSize+len("…") {
			t.Errorf("%s: %d bytes in the result", name, len(out))
		}
		if strings.Contains(out, "hunter2") || strings.Contains(out, "abc123") || !strings.Contains(out, guest.Redacted) {
			t.Errorf("%s: the secret is not redacted: ...%q", name, out[max(0, len(out)-80):])
		}
	}
}
