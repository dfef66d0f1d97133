package agenttest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/guest"
)

// Run is the suite every guest.Agent implementation passes. The agent must
// serve a thawed guest with at least one freezable filesystem and a POSIX
// shell at /bin/sh; the suite leaves it thawed.
func Run(t *testing.T, a guest.Agent) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("Ping", func(t *testing.T) {
		if err := a.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Info", func(t *testing.T) {
		info, err := a.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Version == "" {
			t.Error("no version")
		}
		for _, c := range []string{"guest-ping", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw", "guest-exec", "guest-exec-status", "guest-get-fsinfo"} {
			if !info.Enabled(c) {
				t.Errorf("%s not enabled", c)
			}
		}
	})
	t.Run("GetFSInfo", func(t *testing.T) {
		fs, err := a.GetFSInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(fs) == 0 || fs[0].Mountpoint == "" || fs[0].Type == "" {
			t.Fatalf("fsinfo %+v", fs)
		}
	})
	t.Run("Exec", func(t *testing.T) {
		pid, err := a.Exec(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", "read x; echo out $x; echo err >&2; exit 3"},
			Input: []byte("in\n"), Capture: true})
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, err := a.ExecStatus(ctx, pid)
			if err != nil {
				t.Fatal(err)
			}
			if st.Exited {
				if st.ExitCode == nil || *st.ExitCode != 3 || string(st.Stdout) != "out in\n" || string(st.Stderr) != "err\n" {
					t.Fatalf("status %+v, stdout %q, stderr %q", st, st.Stdout, st.Stderr)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("program did not exit")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	t.Run("ExecMissingProgram", func(t *testing.T) {
		_, err := a.Exec(ctx, guest.ExecRequest{Path: "/no/such/program"})
		var ce *guest.CommandError
		if !errors.As(err, &ce) {
			t.Fatalf("err = %v, want a *guest.CommandError", err)
		}
	})
	t.Run("FreezeThaw", func(t *testing.T) {
		if st, err := a.FsfreezeStatus(ctx); err != nil || st != guest.Thawed {
			t.Fatalf("status before: %q, %v", st, err)
		}
		n, err := a.FsfreezeFreeze(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer a.FsfreezeThaw(context.Background())
		if n < 1 {
			t.Fatalf("froze %d filesystems", n)
		}
		if st, err := a.FsfreezeStatus(ctx); err != nil || st != guest.Frozen {
			t.Fatalf("status frozen: %q, %v", st, err)
		}
		if err := a.Ping(ctx); err != nil {
			t.Fatalf("ping while frozen: %v", err)
		}
		_, err = a.Exec(ctx, guest.ExecRequest{Path: "/bin/true"})
		if !errors.Is(err, guest.ErrCommandDisabled) || !errors.Is(err, guest.ErrFrozen) || !strings.Contains(err.Error(), "frozen state") {
			t.Fatalf("exec while frozen: err = %v, want ErrCommandDisabled and ErrFrozen", err)
		}
		if _, err := a.FsfreezeFreeze(ctx, nil); !errors.Is(err, guest.ErrAlreadyFrozen) {
			t.Fatalf("second freeze: err = %v, want ErrAlreadyFrozen", err)
		}
		m, err := a.FsfreezeThaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m != n {
			t.Errorf("thawed %d filesystems, froze %d", m, n)
		}
		if st, err := a.FsfreezeStatus(ctx); err != nil || st != guest.Thawed {
			t.Fatalf("status after: %q, %v", st, err)
		}
		if m, err := a.FsfreezeThaw(ctx); err != nil || m != 0 {
			t.Fatalf("thaw of a thawed guest: %d, %v; want 0, nil", m, err)
		}
	})
	t.Run("FreezeList", func(t *testing.T) {
		fs, err := a.GetFSInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n, err := a.FsfreezeFreeze(ctx, []string{fs[0].Mountpoint})
		if err != nil {
			t.Fatal(err)
		}
		defer a.FsfreezeThaw(context.Background())
		if n != 1 {
			t.Errorf("freeze-list of %s froze %d filesystems, want 1", fs[0].Mountpoint, n)
		}
		if st, err := a.FsfreezeStatus(ctx); err != nil || st != guest.Frozen {
			t.Fatalf("status: %q, %v", st, err)
		}
		if m, err := a.FsfreezeThaw(ctx); err != nil || m != 1 {
			t.Fatalf("thaw: %d, %v; want 1", m, err)
		}
	})
}
