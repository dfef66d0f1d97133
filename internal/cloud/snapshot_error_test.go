package cloud

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/lab"
)

// TestWaitSnapshotThatEndsInError: Cinder accepts the snapshot (202,
// "creating") and its backend fails it ("error"). WaitSnapshot returns at
// once a non-retryable *Error of kind ErrFailed naming the snapshot, its
// volume and the status; the failed snapshot can be deleted and another
// taken. A volume that ends in "error" is reported the same way.
func TestWaitSnapshotThatEndsInError(t *testing.T) {
	f := newFixture(t)
	c := f.connect(t, "lab-demo")
	ctx := context.Background()
	vol, err := c.CreateVolume(ctx, VolumeOpts{Name: "data", SizeGB: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitVolume(ctx, vol, "available", waitLong); err != nil {
		t.Fatal(err)
	}

	f.lab.FailNextBackend(lab.SnapshotCreate, 1)
	snap, err := c.CreateSnapshot(ctx, vol, SnapshotOpts{Name: "doomed", Force: true})
	if err != nil {
		t.Fatalf("create snapshot: %v (the failure comes later, from the backend)", err)
	}
	start := time.Now()
	s, err := c.WaitSnapshot(ctx, snap, waitLong)
	if err == nil {
		t.Fatalf("wait for a snapshot that ends in error: no error, snapshot %+v", s)
	}
	if time.Since(start) > waitLong/2 {
		t.Errorf("wait took %s: it should fail as soon as the status is error, not at the timeout", time.Since(start))
	}
	var ce *Error
	if !errors.As(err, &ce) || !errors.Is(err, ErrFailed) || errors.Is(err, ErrTimeout) {
		t.Fatalf("error %v (%T), want an *Error of kind ErrFailed", err, err)
	}
	if Retryable(err) {
		t.Errorf("a failed snapshot is retryable: waiting again cannot help: %v", err)
	}
	for _, want := range []string{snap, vol, `status "error"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if s == nil || s.Status != "error" || s.ID != snap {
		t.Errorf("last seen snapshot %+v, want %s in error", s, snap)
	}
	t.Logf("error: %v", err)

	// The failed snapshot is deleted like any other; the next one is taken.
	if err := c.DeleteSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitSnapshotGone(ctx, snap, waitLong); err != nil {
		t.Fatal(err)
	}
	snap2, err := c.CreateSnapshot(ctx, vol, SnapshotOpts{Name: "retry", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if s, err := c.WaitSnapshot(ctx, snap2, waitLong); err != nil || s.Status != "available" {
		t.Fatalf("snapshot after a failed one: %+v %v", s, err)
	}

	// A volume whose creation fails: the same kind of error.
	f.lab.FailNextBackend(lab.VolumeCreate, 1)
	bad, err := c.CreateVolume(ctx, VolumeOpts{Name: "doomed", SizeGB: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitVolume(ctx, bad, "available", waitLong); !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), `"error"`) {
		t.Fatalf("wait for a volume that ends in error: %v, want ErrFailed", err)
	}
	if err := c.DeleteVolume(ctx, bad); err != nil {
		t.Fatalf("delete the failed volume: %v", err)
	}
}
