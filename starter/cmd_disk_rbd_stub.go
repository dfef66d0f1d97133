//go:build !ceph

package main

import (
	"context"
	"io"

	"github.com/raksha-backup/raksha/internal/disk/rbd"
)

// openRBDSnapshot reports rbd.ErrUnavailable: this build has no Ceph support.
func openRBDSnapshot(ctx context.Context, cephConf string, loc rbdLocator) (rbdSource, error) {
	return nil, rbd.ErrUnavailable
}

// openRBDTarget reports rbd.ErrUnavailable: this build has no Ceph support.
func openRBDTarget(ctx context.Context, cephConf string, loc rbdLocator, size int64, overwrite bool) (io.WriterAt, io.Closer, bool, error) {
	return nil, nil, false, rbd.ErrUnavailable
}
