package guest_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/guest/agenttest"
)

// shortDir returns a directory with a short path (unix socket paths are
// limited to 107 bytes; t.TempDir's can be longer).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "rkg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func newFake(t *testing.T) (*agenttest.Fake, *guest.Client) {
	t.Helper()
	f := agenttest.NewFake(t, filepath.Join(shortDir(t), "qga.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := guest.Dial(ctx, f.Path, guest.Options{CallTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, c
}

func TestFakeSuite(t *testing.T) {
	_, c := newFake(t)
	agenttest.Run(t, c)
}

func TestFakeTimeoutThenResync(t *testing.T) {
	f, c := newFake(t)
	f.SetDelay("guest-ping", 700*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	err := c.Ping(ctx)
	cancel()
	if !errors.Is(err, guest.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrTimeout and context.DeadlineExceeded", err)
	}
	f.SetDelay("guest-ping", 0)
	// The late reply to the first ping must be skipped by the resync, not
	// taken for the reply to the next command.
	st, err := c.FsfreezeStatus(context.Background())
	if err != nil || st != guest.Thawed {
		t.Fatalf("status after resync: %q, %v", st, err)
	}
	if n := f.Calls("guest-sync-delimited"); n != 2 {
		t.Fatalf("%d syncs, want 2 (connect, after the timeout)", n)
	}
}

func TestFakeCancel(t *testing.T) {
	f, c := newFake(t)
	f.SetDelay("guest-ping", time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	err := c.Ping(ctx)
	if !errors.Is(err, context.Canceled) || time.Since(start) > 700*time.Millisecond {
		t.Fatalf("err = %v after %v, want context.Canceled soon", err, time.Since(start))
	}
}

func TestFakeNotAnswering(t *testing.T) {
	f := agenttest.NewFake(t, filepath.Join(shortDir(t), "qga.sock"))
	f.SetSilent(true)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := guest.Dial(ctx, f.Path, guest.Options{})
	if !errors.Is(err, guest.ErrNotAnswering) || !errors.Is(err, guest.ErrTimeout) {
		t.Fatalf("err = %v, want ErrNotAnswering", err)
	}
	// Dial released the lock on failure.
	f.SetSilent(false)
	c, err := guest.Dial(context.Background(), f.Path, guest.Options{NoWait: true})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	if _, err := guest.Dial(context.Background(), filepath.Join(shortDir(t), "none.sock"), guest.Options{}); !errors.Is(err, guest.ErrNotAnswering) {
		t.Fatalf("missing socket: err = %v", err)
	}
}

func TestFakeLock(t *testing.T) {
	f, c := newFake(t)
	_, err := guest.Dial(context.Background(), f.Path, guest.Options{NoWait: true})
	if !errors.Is(err, guest.ErrLocked) {
		t.Fatalf("second client: err = %v, want ErrLocked", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err = guest.Dial(ctx, f.Path, guest.Options{})
	cancel()
	if !errors.Is(err, guest.ErrLocked) {
		t.Fatalf("second client waiting: err = %v, want ErrLocked", err)
	}
	// Waiting works once the first client goes.
	time.AfterFunc(100*time.Millisecond, func() { c.Close() })
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c2, err := guest.Dial(ctx, f.Path, guest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	if err := c.Ping(context.Background()); !errors.Is(err, guest.ErrClosed) {
		t.Fatalf("ping on a closed client: %v", err)
	}
}

func TestFakeFreezeThaw(t *testing.T) {
	f, c := newFake(t)
	ctx := context.Background()
	h, err := c.Freeze(ctx, guest.FreezeOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !f.Frozen() || h.Filesystems != 2 {
		t.Fatalf("frozen %v, filesystems %d", f.Frozen(), h.Filesystems)
	}
	if _, err := c.Freeze(ctx, guest.FreezeOptions{}); !errors.Is(err, guest.ErrAlreadyFrozen) {
		t.Fatalf("second freeze: %v", err)
	}
	rep, err := h.Thaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.GuardThawed || f.Frozen() || rep.Window <= 0 || rep.Thawed != 2 {
		t.Fatalf("report %+v, frozen %v", rep, f.Frozen())
	}
	rep2, err := h.Thaw(ctx)
	if err != nil || !rep2.ThawAcked.Equal(rep.ThawAcked) || rep2.GuardThawed {
		t.Fatalf("second Thaw: %+v, %v; want the first report again", rep2, err)
	}
	// A new freeze works after the thaw, and the client is free again.
	h, err = c.Freeze(ctx, guest.FreezeOptions{Mountpoints: []string{"/data/a"}})
	if err != nil || h.Filesystems != 1 {
		t.Fatalf("freeze-list: %v, %d", err, h.Filesystems)
	}
	if _, err := h.Thaw(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestFakeGuardThaws(t *testing.T) {
	f, c := newFake(t)
	h, err := c.Freeze(context.Background(), guest.FreezeOptions{Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// The caller "vanishes": nobody calls Thaw. The guard thaws at the deadline.
	select {
	case <-h.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("guard did not thaw")
	}
	if f.Frozen() {
		t.Fatal("still frozen after the guard")
	}
	rep, err := h.Thaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !rep.GuardThawed || rep.Window < 300*time.Millisecond || rep.Window > 2*time.Second {
		t.Fatalf("report %+v: want GuardThawed and a window of about 300ms", rep)
	}
}

func TestFakeCloseThaws(t *testing.T) {
	f, c := newFake(t)
	if _, err := c.Freeze(context.Background(), guest.FreezeOptions{Timeout: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if f.Frozen() {
		t.Fatal("Close left the guest frozen")
	}
}

func TestFakeFreezeCommandTimesOut(t *testing.T) {
	f, c := newFake(t)
	// The freeze takes longer than the freeze deadline (a hook that hangs):
	// Freeze fails and the guest ends up thawed.
	f.SetDelay("guest-fsfreeze-freeze", 800*time.Millisecond)
	_, err := c.Freeze(context.Background(), guest.FreezeOptions{Timeout: 200 * time.Millisecond})
	if !errors.Is(err, guest.ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	if f.Frozen() {
		t.Fatal("guest left frozen after a freeze that timed out")
	}
	if f.Calls("guest-fsfreeze-thaw") == 0 {
		t.Fatal("no thaw sent")
	}
}

func TestFakeAlreadyFrozen(t *testing.T) {
	f, c := newFake(t)
	f.SetFrozen(true)
	if _, err := c.Freeze(context.Background(), guest.FreezeOptions{}); !errors.Is(err, guest.ErrAlreadyFrozen) {
		t.Fatalf("err = %v, want ErrAlreadyFrozen", err)
	}
	if !f.Frozen() {
		t.Fatal("a refused freeze thawed the guest")
	}
}

func TestFakeHooks(t *testing.T) {
	ctx := context.Background()
	fail := guest.Hook{Name: "fail", Path: "/bin/sh", Args: []string{"-c", "echo nope >&2; exit 4"}}
	ok := guest.Hook{Name: "ok", Path: "/bin/sh", Args: []string{"-c", "echo fine"}}
	slow := guest.Hook{Name: "slow", Path: "/bin/sleep", Args: []string{"5"}, Timeout: 200 * time.Millisecond}

	t.Run("PreFail", func(t *testing.T) {
		f, c := newFake(t)
		_, err := c.Freeze(ctx, guest.FreezeOptions{PreHooks: []guest.Hook{ok, fail}})
		var he *guest.HookError
		if !errors.Is(err, guest.ErrHookFailed) || !errors.As(err, &he) || he.Result.ExitCode != 4 || string(he.Result.Stderr) != "nope\n" {
			t.Fatalf("err = %v, want a HookError with exit 4", err)
		}
		if f.Frozen() || f.Calls("guest-fsfreeze-freeze") != 0 {
			t.Fatal("froze despite a failed pre-hook")
		}
	})
	t.Run("PreTimeout", func(t *testing.T) {
		f, c := newFake(t)
		start := time.Now()
		_, err := c.Freeze(ctx, guest.FreezeOptions{PreHooks: []guest.Hook{slow}})
		if !errors.Is(err, guest.ErrHookFailed) || !errors.Is(err, guest.ErrTimeout) || time.Since(start) > 3*time.Second {
			t.Fatalf("err = %v after %v, want a hook timeout", err, time.Since(start))
		}
		if f.Frozen() {
			t.Fatal("froze despite a failed pre-hook")
		}
	})
	t.Run("Continue", func(t *testing.T) {
		f, c := newFake(t)
		h, err := c.Freeze(ctx, guest.FreezeOptions{PreHooks: []guest.Hook{fail, ok}, PostHooks: []guest.Hook{fail, ok}, OnHookFailure: guest.HookContinue})
		if err != nil {
			t.Fatal(err)
		}
		if len(h.PreHooks) != 2 || h.PreHooks[0].Err == nil || h.PreHooks[1].Err != nil || string(h.PreHooks[1].Stdout) != "fine\n" || !f.Frozen() {
			t.Fatalf("pre-hooks %+v", h.PreHooks)
		}
		rep, err := h.Thaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.PostHooks) != 2 || rep.PostHooks[0].Err == nil || rep.PostHooks[1].Err != nil || f.Frozen() {
			t.Fatalf("post-hooks %+v", rep.PostHooks)
		}
	})
	t.Run("PostFail", func(t *testing.T) {
		f, c := newFake(t)
		h, err := c.Freeze(ctx, guest.FreezeOptions{PostHooks: []guest.Hook{fail}})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := h.Thaw(ctx)
		if !errors.Is(err, guest.ErrHookFailed) || rep == nil || f.Frozen() {
			t.Fatalf("thaw: %+v, %v; want thawed with a hook error", rep, err)
		}
		if _, err2 := h.Thaw(ctx); !errors.Is(err2, guest.ErrHookFailed) || f.Calls("guest-exec") != 1 {
			t.Fatalf("second Thaw: %v, %d execs; want the same error and no second run", err2, f.Calls("guest-exec"))
		}
	})
}

func TestFakeThawOrphans(t *testing.T) {
	host := shortDir(t)
	mk := func(name string) string {
		d := guest.InstanceDir(host, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(d, guest.AgentSocketName)
	}
	orphan := agenttest.NewFake(t, mk("orphan"))
	orphan.SetFrozen(true)
	owned := agenttest.NewFake(t, mk("owned"))
	thawed := agenttest.NewFake(t, mk("thawed"))
	// A stale socket file with no server behind it.
	stale := mk("stale")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()

	ctx := context.Background()
	owner, err := guest.Dial(ctx, owned.Path, guest.Options{Owner: "test owner"})
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	h, err := owner.Freeze(ctx, guest.FreezeOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}

	res, err := guest.ThawOrphans(ctx, host, guest.OrphanOptions{PerGuestTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]guest.OrphanResult{}
	for _, r := range res {
		got[r.Instance] = r
	}
	if len(res) != 4 || !got["orphan"].WasFrozen || orphan.Frozen() {
		t.Fatalf("orphan not thawed: %+v", res)
	}
	if got["owned"].Skipped == "" || !owned.Frozen() {
		t.Fatalf("owned guest not skipped: %+v", got["owned"])
	}
	if got["thawed"].WasFrozen || got["thawed"].Skipped != "" || thawed.Calls("guest-fsfreeze-thaw") != 0 {
		t.Fatalf("thawed guest: %+v", got["thawed"])
	}
	if got["stale"].Skipped == "" {
		t.Fatalf("stale socket: %+v", got["stale"])
	}
	if _, err := h.Thaw(ctx); err != nil {
		t.Fatal(err)
	}
}

// hostileAgent listens on a unix socket and answers every connection's
// first request with flood, as a guest that owns its agent channel could.
func hostileAgent(t *testing.T, flood func(w io.Writer)) string {
	t.Helper()
	path := filepath.Join(shortDir(t), "qga.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				buf := make([]byte, 4096)
				if _, err := conn.Read(buf); err != nil {
					return
				}
				flood(conn)
				io.Copy(io.Discard, conn)
			}()
		}
	}()
	return path
}

// TestSyncBoundsAHostileAgent: a guest that floods its agent channel
// (output without a sync delimiter, or endless stale replies) makes the
// sync fail at once with ErrAgentFlood, having read a bounded amount,
// instead of growing the worker's memory or holding it until its deadline.
func TestSyncBoundsAHostileAgent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flood func(w io.Writer)
	}{
		{"no delimiter", func(w io.Writer) {
			chunk := bytes.Repeat([]byte("A"), 1<<20)
			for range 64 {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}},
		{"stale replies", func(w io.Writer) {
			for range 10000 {
				if _, err := io.WriteString(w, "\xff{\"return\": 4294967295}\n"); err != nil {
					return
				}
			}
		}},
		{"endless line", func(w io.Writer) {
			io.WriteString(w, "\xff{\"return\": ")
			chunk := bytes.Repeat([]byte("9"), 1<<20)
			for range 64 {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := hostileAgent(t, tc.flood)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			_, err := guest.Dial(ctx, path, guest.Options{NoWait: true})
			if err == nil || (!errors.Is(err, guest.ErrAgentFlood) && !strings.Contains(err.Error(), "reply longer than")) {
				t.Fatalf("dial of a flooding agent: %v, want ErrAgentFlood or a reply over the limit", err)
			}
			if time.Since(start) > 10*time.Second {
				t.Errorf("the sync gave up after %v, not at once", time.Since(start))
			}
			t.Logf("%v in %v", err, time.Since(start).Round(time.Millisecond))
		})
	}
}
