// Package mem is an in-memory backend for fast unit tests. It keeps the same
// contract as the persistent backends (see package backend) and passes the same
// conformance suite; it is never used for real data.
package mem

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

type object struct {
	data []byte
	mod  time.Time
}

// Backend holds objects in a map. Its zero value is not usable; call New.
type Backend struct {
	mu      sync.RWMutex
	objects map[string]object
	now     func() time.Time
}

// New returns an empty in-memory backend.
func New() *Backend {
	return &Backend{objects: map[string]object{}, now: time.Now}
}

// Location implements backend.Backend.
func (b *Backend) Location() string { return "mem:" }

// Save implements backend.Backend; the stored bytes are a copy of data.
func (b *Backend) Save(ctx context.Context, name string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.objects[name] = object{data: append([]byte(nil), data...), mod: b.now()}
	return nil
}

// Load implements backend.Backend; the returned slice is the caller's.
func (b *Backend) Load(ctx context.Context, name string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	o, ok := b.objects[name]
	if !ok {
		return nil, fmt.Errorf("mem load %s: %w", name, backend.ErrNotFound)
	}
	return append([]byte(nil), o.data...), nil
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (backend.Info, error) {
	if err := ctx.Err(); err != nil {
		return backend.Info{}, err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	o, ok := b.objects[name]
	if !ok {
		return backend.Info{}, fmt.Errorf("mem stat %s: %w", name, backend.ErrNotFound)
	}
	return backend.Info{Name: name, Size: int64(len(o.data)), ModTime: o.mod}, nil
}

// Delete implements backend.Backend.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.objects[name]; !ok {
		return fmt.Errorf("mem delete %s: %w", name, backend.ErrNotFound)
	}
	delete(b.objects, name)
	return nil
}

// List implements backend.Backend. It lists a snapshot taken at the call, so fn
// may save or delete objects.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	b.mu.RLock()
	var infos []backend.Info
	for name, o := range b.objects {
		if strings.HasPrefix(name, prefix) {
			infos = append(infos, backend.Info{Name: name, Size: int64(len(o.data)), ModTime: o.mod})
		}
	}
	b.mu.RUnlock()
	for _, in := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(in); err != nil {
			return err
		}
	}
	return nil
}

// Close implements backend.Backend.
func (b *Backend) Close() error { return nil }
