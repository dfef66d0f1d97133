//go:build !ceph

package rbd

import (
	"context"

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
