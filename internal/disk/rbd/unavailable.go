//go:build !ceph

package rbd

import (
	"context"
	"errors"

	"github.com/raksha-backup/raksha/internal/disk"
)

// Conn is a connection to a Ceph cluster; in this build it cannot be made.
type Conn struct{}

// Connect reports ErrUnavailable: this build has no Ceph support.
func Connect(ctx context.Context, cfg Config) (*Conn, error) { return nil, ErrUnavailable }

// Close does nothing.
func (c *Conn) Close() {}

// Source is an RBD snapshot; in this build none can be opened.
type Source struct{ disk.Source }

// OpenSnapshot reports ErrUnavailable.
func (c *Conn) OpenSnapshot(ctx context.Context, pool, image, snap string) (*Source, error) {
	return nil, ErrUnavailable
}

// Snapshots reports ErrUnavailable.
func (c *Conn) Snapshots(ctx context.Context, pool, image string) ([]SnapInfo, error) {
	return nil, ErrUnavailable
}

// CreateSnapshot reports ErrUnavailable.
func (c *Conn) CreateSnapshot(ctx context.Context, pool, image, name string) error {
	return ErrUnavailable
}

// DeleteSnapshot reports ErrUnavailable.
func (c *Conn) DeleteSnapshot(ctx context.Context, pool, image, name string) error {
	return ErrUnavailable
}

// ReleaseSnapshots reports ErrUnavailable.
func (c *Conn) ReleaseSnapshots(ctx context.Context, pool, image, keep string) ([]string, error) {
	return nil, ErrUnavailable
}

// Changed reports ErrUnavailable.
func (s *Source) Changed(base string) ([]disk.Extent, error) { return nil, ErrUnavailable }

// ErrNoBase means the base snapshot cannot serve as a diff base.
var ErrNoBase = errors.New("base snapshot unusable")

// Target is an RBD image open for writing; in this build none can be opened.
type Target struct{}

// OpenTarget reports ErrUnavailable.
func (c *Conn) OpenTarget(ctx context.Context, pool, image string) (*Target, error) {
	return nil, ErrUnavailable
}

// WriteAt reports ErrUnavailable.
func (t *Target) WriteAt(p []byte, off int64) (int, error) { return 0, ErrUnavailable }

// Size is 0.
func (t *Target) Size() int64 { return 0 }

// Sync reports ErrUnavailable.
func (t *Target) Sync() error { return ErrUnavailable }

// Close does nothing.
func (t *Target) Close() error { return nil }

// Trashed is an image of a pool's trash whose only snapshots were Raksha's.
type Trashed struct {
	Pool, ID, Name string
	Snapshots      []string
	Removed        bool
}

// ReleaseTrashed reports ErrUnavailable.
func (c *Conn) ReleaseTrashed(ctx context.Context, pool string) ([]Trashed, error) {
	return nil, ErrUnavailable
}
