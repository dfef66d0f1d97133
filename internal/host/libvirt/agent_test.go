package libvirt_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/guest/agenttest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
)

// TestAgentSuite runs the shared guest.Agent suite against a real guest
// whose agent channel libvirtd owns, through libvirt's pass-through.
func TestAgentSuite(t *testing.T) {
	c := libvirttest.Conn(t)
	img := vmtest.Image(t)
	d := libvirttest.Boot(t, c, img, libvirttest.Spec{Labels: []string{"data"}, NoWriter: true})
	a := libvirttest.Agent(t, c, d)
	agenttest.Run(t, a)
}

// TestAgentFreezeGuardAndLock: Raksha's freeze discipline holds through
// libvirt: a second client is refused while the first holds the guest's
// lock, the guard thaws at the deadline, and a closed client leaves the
// guest thawed.
func TestAgentFreezeGuardAndLock(t *testing.T) {
	c := libvirttest.Conn(t)
	img := vmtest.Image(t)
	d := libvirttest.Boot(t, c, img, libvirttest.Spec{Labels: []string{"data"}, NoWriter: true})
	a := libvirttest.Agent(t, c, d)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	_, err := libvirt.OpenAgent(ctx, c, d.Name, libvirt.AgentOptions{LockDir: d.Dir + "/locks", Guest: guest.Options{NoWait: true}})
	if !errors.Is(err, guest.ErrLocked) {
		t.Fatalf("second client: err = %v, want ErrLocked", err)
	}
	// The deadline covers the freeze call itself: under TCG on a loaded
	// machine guest-fsfreeze-freeze took longer than 2 s.
	h, err := a.Freeze(ctx, guest.FreezeOptions{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := a.FsfreezeStatus(ctx); err != nil || st != guest.Frozen {
		t.Fatalf("status after freeze: %q, %v", st, err)
	}
	select {
	case <-h.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("the guard did not thaw within 60 s of a 10 s deadline")
	}
	rep, err := h.Thaw(ctx)
	if err != nil || !rep.GuardThawed {
		t.Fatalf("thaw after the guard: %+v, %v; want GuardThawed", rep, err)
	}
	if st, err := a.FsfreezeStatus(ctx); err != nil || st != guest.Thawed {
		t.Fatalf("status after the guard: %q, %v", st, err)
	}
	if _, err := a.Freeze(ctx, guest.FreezeOptions{Timeout: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := libvirttest.Agent(t, c, d)
	if st, err := b.FsfreezeStatus(ctx); err != nil || st != guest.Thawed {
		t.Fatalf("status after Close of a frozen client: %q, %v", st, err)
	}
}

// TestAgentErrors: a stopped domain and an unknown one are named, with the
// errors of package guest and this package.
func TestAgentErrors(t *testing.T) {
	c := libvirttest.Conn(t)
	img := vmtest.Image(t)
	d := libvirttest.Boot(t, c, img, libvirttest.Spec{Labels: []string{"data"}, NoWriter: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := libvirt.AgentOptions{LockDir: t.TempDir()}
	if _, err := libvirt.OpenAgent(ctx, c, "00000000-0000-0000-0000-00000000beef", opts); !errors.Is(err, libvirt.ErrNoDomain) {
		t.Fatalf("unknown UUID: err = %v, want ErrNoDomain", err)
	}
	if _, err := libvirt.OpenAgent(ctx, c, "no-such-domain", opts); !errors.Is(err, libvirt.ErrNoDomain) || !strings.Contains(err.Error(), "no-such-domain") {
		t.Fatalf("unknown name: err = %v, want ErrNoDomain naming it", err)
	}
	if err := c.Libvirt().DomainDestroy(d.Dom); err != nil {
		t.Fatal(err)
	}
	_, err := libvirt.OpenAgent(ctx, c, d.UUID, opts)
	if !errors.Is(err, guest.ErrNotAnswering) || !errors.Is(err, libvirt.ErrNotRunning) || !strings.Contains(err.Error(), d.Name) {
		t.Fatalf("stopped domain: err = %v, want ErrNotAnswering and ErrNotRunning naming %s", err, d.Name)
	}
}

// TestThawOrphans: a guest frozen by a host worker that died (its lock
// released by the kernel, no guard left) is thawed by the sweep a new
// worker runs at start; while a live owner holds the lock, it is skipped.
func TestThawOrphans(t *testing.T) {
	c := libvirttest.Conn(t)
	img := vmtest.Image(t)
	d := libvirttest.Boot(t, c, img, libvirttest.Spec{Labels: []string{"data"}, NoWriter: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	locks := t.TempDir()
	mine := func(name, _ string) bool { return name == d.Name }

	// Frozen behind libvirt's back, as by a worker that was then SIGKILLed.
	raw := libvirt.NewAgentTransport(c, d.Dom)
	if _, err := raw.Call(ctx, "guest-fsfreeze-freeze", nil); err != nil {
		t.Fatal(err)
	}
	defer raw.Call(context.Background(), "guest-fsfreeze-thaw", nil)

	live, err := libvirt.OpenAgent(ctx, c, d.UUID, libvirt.AgentOptions{LockDir: locks, Guest: guest.Options{Owner: "a live worker"}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := libvirt.ThawOrphans(ctx, c, locks, mine, guest.OrphanOptions{})
	if err != nil || len(res) != 1 || !strings.Contains(res[0].Skipped, "a live worker") || res[0].WasFrozen {
		t.Fatalf("sweep with a live owner: %+v, %v; want it skipped naming the owner", res, err)
	}
	if st, err := live.FsfreezeStatus(ctx); err != nil || st != guest.Frozen {
		t.Fatalf("status: %q, %v", st, err)
	}
	// Closing the client thaws only its own freezes: this one is not.
	live.Close()

	res, err = libvirt.ThawOrphans(ctx, c, locks, mine, guest.OrphanOptions{})
	if err != nil || len(res) != 1 || !res[0].WasFrozen || res[0].Thawed != 1 {
		t.Fatalf("sweep without an owner: %+v, %v; want the guest thawed", res, err)
	}
	a := libvirttest.Agent(t, c, d)
	if st, err := a.FsfreezeStatus(ctx); err != nil || st != guest.Thawed {
		t.Fatalf("status after the sweep: %q, %v", st, err)
	}
}
