// Package retry wraps a backend.Backend so that transient failures (timeouts,
// 5xx answers, dropped connections) are retried with exponential backoff, while
// permanent ones (not found, bad credentials, cancelled context) return at once.
package retry

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

// Policy says how often and how patiently to retry.
type Policy struct {
	// Attempts is the total number of tries, the first included (default 6).
	Attempts int
	// Initial is the wait before the second try (default 200ms); each later wait
	// doubles, with ±25 % jitter, up to Max (default 10s).
	Initial, Max time.Duration
}

func (p Policy) withDefaults() Policy {
	if p.Attempts <= 0 {
		p.Attempts = 6
	}
	if p.Initial <= 0 {
		p.Initial = 200 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 10 * time.Second
	}
	return p
}

// Backend retries the operations of the backend it wraps.
type Backend struct {
	backend.Backend
	policy Policy
	log    *slog.Logger
}

// Wrap returns be with retries. log may be nil.
func Wrap(be backend.Backend, p Policy, log *slog.Logger) *Backend {
	if log == nil {
		log = slog.Default()
	}
	return &Backend{Backend: be, policy: p.withDefaults(), log: log}
}

// Unwrap returns the wrapped backend.
func (b *Backend) Unwrap() backend.Backend { return b.Backend }

func (b *Backend) do(ctx context.Context, op, name string, fn func() error) error {
	wait := b.policy.Initial
	var err error
	for attempt := 1; ; attempt++ {
		err = fn()
		if err == nil || backend.IsPermanent(err) || attempt >= b.policy.Attempts {
			break
		}
		jitter := time.Duration(rand.Int64N(int64(wait)/2+1)) - wait/4
		b.log.Warn("backend operation failed, retrying", "op", op, "object", name,
			"attempt", attempt, "wait", wait+jitter, "err", err)
		t := time.NewTimer(wait + jitter)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s %s: %w (after: %v)", op, name, ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, b.policy.Max)
	}
	return err
}

// Save implements backend.Backend with retries.
func (b *Backend) Save(ctx context.Context, name string, data []byte) error {
	return b.do(ctx, "save", name, func() error { return b.Backend.Save(ctx, name, data) })
}

// Load implements backend.Backend with retries.
func (b *Backend) Load(ctx context.Context, name string) (data []byte, err error) {
	err = b.do(ctx, "load", name, func() error {
		data, err = b.Backend.Load(ctx, name)
		return err
	})
	return data, err
}

// LoadInto loads into buf through the wrapped backend, with retries.
func (b *Backend) LoadInto(ctx context.Context, name string, buf []byte) (data []byte, err error) {
	err = b.do(ctx, "load", name, func() error {
		data, err = backend.LoadInto(ctx, b.Backend, name, buf)
		return err
	})
	return data, err
}

// Stat implements backend.Backend with retries.
func (b *Backend) Stat(ctx context.Context, name string) (in backend.Info, err error) {
	err = b.do(ctx, "stat", name, func() error {
		in, err = b.Backend.Stat(ctx, name)
		return err
	})
	return in, err
}

// Delete implements backend.Backend with retries. A retried delete whose first
// try did succeed reports not-found, as the contract says for a missing object.
func (b *Backend) Delete(ctx context.Context, name string) error {
	return b.do(ctx, "delete", name, func() error { return b.Backend.Delete(ctx, name) })
}

// List implements backend.Backend. A listing is retried only if it failed
// before fn was first called, so fn never sees an object twice.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	called := false
	return b.do(ctx, "list", prefix, func() error {
		err := b.Backend.List(ctx, prefix, func(in backend.Info) error {
			called = true
			return fn(in)
		})
		if err != nil && called {
			return backend.Permanent(err)
		}
		return err
	})
}

// Copy copies through the wrapped backend, with retries.
func (b *Backend) Copy(ctx context.Context, from, to string) error {
	return b.do(ctx, "copy", from, func() error { return backend.Copy(ctx, b.Backend, from, to) })
}

// Flush flushes the wrapped backend, with retries.
func (b *Backend) Flush(ctx context.Context) error {
	return b.do(ctx, "flush", "", func() error { return backend.Flush(ctx, b.Backend) })
}
