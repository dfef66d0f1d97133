package retry_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/backendtest"
	"github.com/raksha-backup/raksha/internal/repo/backend/mem"
	"github.com/raksha-backup/raksha/internal/repo/backend/retry"
)

// flaky fails the first n calls of Save and Load with a transient error.
type flaky struct {
	backend.Backend
	failures int
	calls    int
	err      error
}

func (f *flaky) Save(ctx context.Context, name string, data []byte) error {
	f.calls++
	if f.calls <= f.failures {
		return f.err
	}
	return f.Backend.Save(ctx, name, data)
}

var fast = retry.Policy{Attempts: 4, Initial: time.Millisecond, Max: 2 * time.Millisecond}

func TestTransientIsRetried(t *testing.T) {
	f := &flaky{Backend: mem.New(), failures: 3, err: errors.New("503 slow down")}
	be := retry.Wrap(f, fast, nil)
	if err := be.Save(context.Background(), "x", []byte("x")); err != nil {
		t.Fatalf("Save after 3 transient failures with 4 attempts: %v", err)
	}
	if f.calls != 4 {
		t.Errorf("calls = %d, want 4", f.calls)
	}
}

func TestGivesUpAfterAttempts(t *testing.T) {
	f := &flaky{Backend: mem.New(), failures: 10, err: errors.New("connection reset")}
	be := retry.Wrap(f, fast, nil)
	err := be.Save(context.Background(), "x", []byte("x"))
	if err == nil || err.Error() != "connection reset" || f.calls != 4 {
		t.Errorf("err=%v calls=%d, want the last error after 4 calls", err, f.calls)
	}
}

func TestPermanentIsNotRetried(t *testing.T) {
	f := &flaky{Backend: mem.New(), failures: 10, err: backend.Permanent(errors.New("403 access denied"))}
	be := retry.Wrap(f, fast, nil)
	err := be.Save(context.Background(), "x", []byte("x"))
	if !backend.IsPermanent(err) || f.calls != 1 {
		t.Errorf("err=%v calls=%d, want one call and a permanent error", err, f.calls)
	}
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend { return retry.Wrap(mem.New(), fast, nil) })
}
