package guest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/guest/agenttest"
	"github.com/raksha-backup/raksha/internal/lab/guestapp"
	"github.com/raksha-backup/raksha/internal/lab/vm"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
)

// helperEnv makes the test binary a helper process that freezes the guest
// behind the named agent socket, prints "FROZEN <sent> <acked>" (Unix
// nanoseconds) and hangs until killed.
const helperEnv = "RAKSHA_GUEST_TEST_FREEZE_AND_HANG"

func TestMain(m *testing.M) {
	if sock := os.Getenv(helperEnv); sock != "" {
		os.Exit(freezeAndHang(sock))
	}
	os.Exit(m.Run())
}

func freezeAndHang(sock string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := guest.Dial(ctx, sock, guest.Options{Owner: "test helper: freeze and hang"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	h, err := c.Freeze(ctx, guest.FreezeOptions{Timeout: 10 * time.Minute})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("FROZEN %d %d\n", h.FreezeSent.UnixNano(), h.Frozen.UnixNano())
	time.Sleep(10 * time.Minute)
	return 0
}

// TestRealQEMU runs the agent client against real guests: three booted at
// once, the first (two data disks) shared by the subtests that run one after
// the other, all three frozen together at the end.
func TestRealQEMU(t *testing.T) {
	img := vmtest.Image(t)
	lab := vmtest.LabDir(t)
	hostDir := guest.HostDir(lab, "host1")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	specs := []vmtest.Spec{
		{LabDir: lab, Instance: "g1", Labels: []string{"a", "b"}},
		{LabDir: lab, Instance: "g2", Labels: []string{"a"}},
		{LabDir: lab, Instance: "g3", Labels: []string{"a"}},
	}
	vms := make([]*vm.VM, len(specs))
	stops := make([]func() error, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	bootStart := time.Now()
	for i := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i], stops[i], errs[i] = vmtest.Start(ctx, img, specs[i])
		}()
	}
	wg.Wait()
	for i := range specs {
		if stops[i] != nil {
			t.Cleanup(func() {
				if err := stops[i](); err != nil {
					t.Errorf("stop %s: %v", specs[i].Instance, err)
				}
			})
		}
	}
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range vms {
		t.Logf("boot time %s: %v (%s, %d disks)", v.Instance, v.BootDuration.Round(time.Millisecond), v.Accel, len(v.Disks))
	}
	t.Logf("three guests booted side by side in %v", time.Since(bootStart).Round(time.Millisecond))
	g1 := vms[0]

	dial := func(t *testing.T, v *vm.VM) *guest.Client {
		t.Helper()
		c, err := v.Agent(ctx, guest.Options{Owner: t.Name()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	t.Run("AgentSuite", func(t *testing.T) {
		c := dial(t, g1)
		agenttest.Run(t, c)
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("qemu-ga %s", info.Version)
	})

	t.Run("FreezeBlocksWrites", func(t *testing.T) {
		c := dial(t, g1)
		h, err := c.Freeze(ctx, guest.FreezeOptions{Timeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if st, err := c.FsfreezeStatus(ctx); err != nil || st != guest.Frozen {
			t.Errorf("status while frozen: %q, %v", st, err)
		}
		_, err = c.Exec(ctx, guest.ExecRequest{Path: "/bin/true"})
		var ce *guest.CommandError
		if !errors.Is(err, guest.ErrCommandDisabled) || !errors.Is(err, guest.ErrFrozen) || !errors.As(err, &ce) {
			t.Errorf("guest-exec while frozen: err = %v, want ErrCommandDisabled, ErrFrozen, *CommandError", err)
		} else {
			t.Logf("guest-exec while frozen: %v", err)
		}
		if err := c.Ping(ctx); err != nil {
			t.Errorf("ping while frozen: %v", err)
		}
		time.Sleep(1500 * time.Millisecond)
		rep, err := h.Thaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rep.GuardThawed {
			t.Fatal("guard thawed first")
		}
		t.Logf("freeze window (freeze sent -> thaw acknowledged): %v; freeze took %v; %d filesystems",
			rep.Window.Round(time.Millisecond), h.Frozen.Sub(h.FreezeSent).Round(time.Millisecond), h.Filesystems)
		if h.Filesystems != 2 {
			t.Errorf("froze %d filesystems, want 2 (/data/a, /data/b)", h.Filesystems)
		}
		time.Sleep(300 * time.Millisecond) // let the writer write past the thaw

		hooks := hookLog(t, ctx, c)
		freezeEnd, thawBegin := hooks["freeze end"], hooks["thaw begin"]
		if freezeEnd.IsZero() || thawBegin.IsZero() || hooks["freeze begin"].IsZero() || hooks["thaw end"].IsZero() {
			t.Fatalf("hook log lacks freeze/thaw begin/end: %v", hooks)
		}
		guestFrozen := thawBegin.Sub(freezeEnd)
		t.Logf("hook: freeze end %s, thaw begin %s: frozen %v in the guest's clock",
			freezeEnd.Format("15:04:05.000"), thawBegin.Format("15:04:05.000"), guestFrozen.Round(time.Millisecond))
		serial, _ := g1.Serial()
		for _, w := range []string{"HOOK freeze begin", "HOOK freeze script=10-app exit=0", "HOOK thaw end exit=0"} {
			if !strings.Contains(serial, w) {
				t.Errorf("serial console lacks %q", w)
			}
		}

		for _, r := range checkRecords(t, ctx, c, rep.Window/3) {
			if !r.OK() {
				t.Errorf("%s damaged", r)
			}
			var stall *guestapp.Gap
			for i := range r.Gaps {
				g := &r.Gaps[i]
				if g.From.Before(thawBegin) && g.To.After(freezeEnd) {
					stall = g
				}
			}
			if stall == nil {
				t.Errorf("%s: no stall of the writer across the freeze (gaps %+v)", r.File, r.Gaps)
				continue
			}
			t.Logf("%s: writer stalled %v (seq %d -> %d) for a freeze window of %v",
				r.Label, stall.Duration.Round(time.Millisecond), stall.AfterSeq, stall.AfterSeq+1, rep.Window.Round(time.Millisecond))
			// The hook's stamps bracket the frozen time loosely (FIFREEZE
			// follows the freeze hook; the thaw hook starts after FITHAW),
			// so the stall is compared with the window with some slack.
			if stall.Duration < rep.Window*6/10 || stall.Duration > rep.Window+time.Second {
				t.Errorf("%s: stall %v, want about the freeze (%v frozen in the guest, window %v)", r.Label, stall.Duration, guestFrozen, rep.Window)
			}
		}
	})

	t.Run("RoundTrip", func(t *testing.T) {
		c := dial(t, g1)
		var windows []time.Duration
		for i := 0; i < 3; i++ {
			h, err := c.Freeze(ctx, guest.FreezeOptions{})
			if err != nil {
				t.Fatal(err)
			}
			rep, err := h.Thaw(ctx)
			if err != nil {
				t.Fatal(err)
			}
			windows = append(windows, rep.Window)
		}
		sort.Slice(windows, func(i, j int) bool { return windows[i] < windows[j] })
		t.Logf("freeze -> thaw round trips (with the guest's hook): %v (median %v)", windows, windows[1])
	})

	t.Run("PrePostHooks", func(t *testing.T) {
		c := dial(t, g1)
		stampTo := func(f string) guest.Hook {
			return guest.Hook{Name: f, Path: "/bin/sh", Args: []string{"-c", "guestapp stamp > /run/raksha/" + f}, Timeout: 20 * time.Second}
		}
		h, err := c.Freeze(ctx, guest.FreezeOptions{PreHooks: []guest.Hook{stampTo("pre")}, PostHooks: []guest.Hook{stampTo("post")}})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := h.Thaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(h.PreHooks) != 1 || h.PreHooks[0].Err != nil || len(rep.PostHooks) != 1 || rep.PostHooks[0].Err != nil {
			t.Fatalf("hooks: pre %+v, post %+v", h.PreHooks, rep.PostHooks)
		}
		res, err := c.Run(ctx, guest.ExecRequest{Path: "cat", Args: []string{"/run/raksha/pre", "/run/raksha/post"}, Capture: true})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("cat: %v %+v", err, res)
		}
		t.Logf("pre-hook took %v, post-hook %v; stamps:\n%s", h.PreHooks[0].Duration.Round(time.Millisecond),
			rep.PostHooks[0].Duration.Round(time.Millisecond), res.Stdout)

		// A failing pre-hook with HookFail: no freeze.
		_, err = c.Freeze(ctx, guest.FreezeOptions{PreHooks: []guest.Hook{{Path: "/bin/false"}}})
		if !errors.Is(err, guest.ErrHookFailed) {
			t.Fatalf("failing pre-hook: err = %v", err)
		}
		if st, err := c.FsfreezeStatus(ctx); err != nil || st != guest.Thawed {
			t.Fatalf("after a failed pre-hook: %q, %v", st, err)
		}
	})

	t.Run("GuardThaws", func(t *testing.T) {
		c := dial(t, g1)
		const deadline = 2 * time.Second
		h, err := c.Freeze(ctx, guest.FreezeOptions{Timeout: deadline})
		if err != nil {
			t.Fatal(err)
		}
		// The caller vanishes: nobody calls Thaw.
		select {
		case <-h.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("the guard did not thaw within 30s")
		}
		if st, err := c.FsfreezeStatus(ctx); err != nil || st != guest.Thawed {
			t.Fatalf("after the guard: %q, %v", st, err)
		}
		rep, err := h.Thaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.GuardThawed {
			t.Fatal("Thaw does not report that the guard thawed")
		}
		stayed := rep.ThawAcked.Sub(h.Frozen)
		t.Logf("guard: freeze deadline %v; the guest stayed frozen %v (freeze ack -> thaw ack), window %v",
			deadline, stayed.Round(time.Millisecond), rep.Window.Round(time.Millisecond))
		if rep.Window < deadline || rep.Window > deadline+3*time.Second {
			t.Errorf("window %v, want a little over the %v deadline", rep.Window, deadline)
		}
	})

	t.Run("KilledOwnerThawOrphans", func(t *testing.T) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"="+g1.AgentSocket)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		line := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "FROZEN ") {
					line <- sc.Text()
					return
				}
			}
			close(line)
		}()
		var l string
		select {
		case l = <-line:
		case <-time.After(60 * time.Second):
			t.Fatal("helper did not freeze within 60s")
		}
		f := strings.Fields(l)
		if len(f) != 3 {
			t.Fatalf("helper said %q", l)
		}
		ackNs, _ := strconv.ParseInt(f[2], 10, 64)
		frozenAt := time.Unix(0, ackNs)

		// The owner is alive: ThawOrphans leaves its guest alone, and a
		// second client cannot take the guest.
		res, err := guest.ThawOrphans(ctx, hostDir, guest.OrphanOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r := find(res, "g1"); r.Skipped == "" || r.WasFrozen {
			t.Fatalf("live owner: %+v", r)
		} else {
			t.Logf("while the owner lives: %s", r.Skipped)
		}
		if _, err := g1.Agent(ctx, guest.Options{NoWait: true}); !errors.Is(err, guest.ErrLocked) {
			t.Fatalf("second client while the owner lives: %v, want ErrLocked", err)
		}

		killedAt := time.Now()
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		// No guest-side timeout: still frozen after the owner died.
		c, err := g1.Agent(ctx, guest.Options{NoWait: true})
		if err != nil {
			t.Fatal(err)
		}
		st, err := c.FsfreezeStatus(ctx)
		c.Close()
		if err != nil || st != guest.Frozen {
			t.Fatalf("after the kill: %q, %v; want still frozen", st, err)
		}

		res, err = guest.ThawOrphans(ctx, hostDir, guest.OrphanOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r := find(res, "g1")
		if !r.WasFrozen || r.Thawed != 2 {
			t.Fatalf("ThawOrphans: %+v", res)
		}
		for _, o := range res {
			if o.Instance != "g1" && (o.WasFrozen || o.Skipped != "" || o.Err != nil) {
				t.Errorf("ThawOrphans on %s: %+v", o.Instance, o)
			}
		}
		t.Logf("owner SIGKILLed: the guest stayed frozen %v in all (freeze ack -> thaw ack), %v after the kill (ThawOrphans)",
			r.ThawAcked.Sub(frozenAt).Round(time.Millisecond), r.ThawAcked.Sub(killedAt).Round(time.Millisecond))
		c = dial(t, g1)
		if st, err := c.FsfreezeStatus(ctx); err != nil || st != guest.Thawed {
			t.Fatalf("after ThawOrphans: %q, %v", st, err)
		}
	})

	t.Run("ThreeInParallel", func(t *testing.T) {
		reps := make([]*guest.ThawReport, len(vms))
		errs := make([]error, len(vms))
		var wg sync.WaitGroup
		for i, v := range vms {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := v.Agent(ctx, guest.Options{Owner: "parallel"})
				if err != nil {
					errs[i] = err
					return
				}
				defer c.Close()
				h, err := c.Freeze(ctx, guest.FreezeOptions{Timeout: 30 * time.Second})
				if err != nil {
					errs[i] = err
					return
				}
				time.Sleep(500 * time.Millisecond) // the snapshots would be taken here
				reps[i], errs[i] = h.Thaw(ctx)
			}()
		}
		wg.Wait()
		for i, v := range vms {
			if errs[i] != nil {
				t.Errorf("%s: %v", v.Instance, errs[i])
				continue
			}
			t.Logf("parallel freeze window %s: %v (held 500ms)", v.Instance, reps[i].Window.Round(time.Millisecond))
		}
	})
}

func find(res []guest.OrphanResult, instance string) guest.OrphanResult {
	for _, r := range res {
		if r.Instance == instance {
			return r
		}
	}
	return guest.OrphanResult{}
}

// checkRecords runs the in-guest checker on every data disk.
func checkRecords(t *testing.T, ctx context.Context, c *guest.Client, gap time.Duration) []*guestapp.Report {
	t.Helper()
	res, err := c.Run(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", "guestapp check -json -gap " + gap.String() + " /data/*"}, Capture: true})
	if err != nil {
		t.Fatal(err)
	}
	var reps []*guestapp.Report
	if err := json.Unmarshal(res.Stdout, &reps); err != nil || len(reps) == 0 {
		t.Fatalf("guestapp check: exit %d, %v\n%s%s", res.ExitCode, err, res.Stdout, res.Stderr)
	}
	return reps
}

// hookLog reads the guest's fsfreeze-hook log and returns the wall-clock time
// of the last "<action> begin" and "<action> end" line of each action.
func hookLog(t *testing.T, ctx context.Context, c *guest.Client) map[string]time.Time {
	t.Helper()
	res, err := c.Run(ctx, guest.ExecRequest{Path: "cat", Args: []string{"/run/raksha/hook.log"}, Capture: true})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("read hook log: %v %+v", err, res)
	}
	re := regexp.MustCompile(`^HOOK (freeze|thaw) (begin|end)\b.* wall=(\S+)`)
	out := map[string]time.Time{}
	for _, l := range strings.Split(string(res.Stdout), "\n") {
		m := re.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, m[3])
		if err != nil {
			t.Fatalf("hook log line %q: %v", l, err)
		}
		out[m[1]+" "+m[2]] = ts
	}
	return out
}
