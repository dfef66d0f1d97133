// Package rbd reads and writes Ceph RBD images for backups and restores:
// snapshots as point-in-time disk.Sources with snapshot-diff changed extents
// (DiffIterate), Raksha's snapshot bookkeeping (exactly one base snapshot per
// image after a backup, leak reports), and restore targets.
//
// The real implementation needs librbd and librados (cgo) and is built with
// the tags `ceph pacific` (go-ceph v0.35.0 on Ceph 16); `make` sets them when
// librbd-dev is installed. A build without the tags still compiles: every
// function then returns ErrUnavailable, saying how to get RBD support.
package rbd

import (
	"errors"
	"strings"
)

// ErrUnavailable is returned by every function of a build without Ceph support.
var ErrUnavailable = errors.New("RBD support is not built in: install librbd-dev and librados-dev and build with -tags ceph,pacific (make does this)")

// SnapPrefix starts the name of every snapshot Raksha creates. Snapshots
// without it (Cinder's, an operator's) are never deleted by Raksha.
const SnapPrefix = "raksha-"

// IsRakshaSnapshot reports whether a snapshot name is one Raksha made.
func IsRakshaSnapshot(name string) bool { return strings.HasPrefix(name, SnapPrefix) }

// Config says how to reach the cluster. It holds paths, never keys.
type Config struct {
	// CephConf is the ceph.conf path ("" = librados defaults, CEPH_CONF).
	CephConf string
	// User is the client id without "client." (default "admin").
	User string
	// Keyring overrides the keyring path from ceph.conf.
	Keyring string
}

// SnapInfo describes a snapshot of an image.
type SnapInfo struct {
	ID   uint64
	Name string
	Size uint64
}
