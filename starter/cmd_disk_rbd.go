//go:build ceph

package main

import (
	"context"
	"errors"
	"io"

	gorbd "github.com/ceph/go-ceph/rbd"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/disk/rbd"
)

// rbdSnapshot is an open RBD snapshot for 'raksha disk backup rbd:...'.
type rbdSnapshot struct {
	*rbd.Source
	conn *rbd.Conn
}

func (s *rbdSnapshot) Close() error {
	err := s.Source.Close()
	s.conn.Close()
	return err
}

// openRBDSnapshot opens loc (with its snapshot) read-only.
func openRBDSnapshot(ctx context.Context, cephConf string, loc rbdLocator) (rbdSource, error) {
	c, err := rbd.Connect(ctx, rbd.Config{CephConf: cephConf})
	if err != nil {
		return nil, err
	}
	src, err := c.OpenSnapshot(ctx, loc.Pool, loc.Image, loc.Snap)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &rbdSnapshot{Source: src, conn: c}, nil
}

// Changed returns the extents changed since base; noBase reports a base that
// cannot serve (missing, not older): the caller reads everything.
func (s *rbdSnapshot) Changed(base string) (exts []disk.Extent, noBase bool, err error) {
	exts, err = s.Source.Changed(base)
	if errors.Is(err, rbd.ErrNoBase) {
		return nil, true, err
	}
	return exts, false, err
}

// rbdTarget is an image opened for a restore.
type rbdTarget struct {
	*rbd.Target
	conn *rbd.Conn
}

func (t *rbdTarget) Close() error {
	err := t.Target.Close()
	t.conn.Close()
	return err
}

// openRBDTarget creates loc as a new image of size bytes, or, if it exists and
// overwrite is set, opens it for an in-place restore (existed = true; its
// size must be size).
func openRBDTarget(ctx context.Context, cephConf string, loc rbdLocator, size int64, overwrite bool) (w io.WriterAt, closer io.Closer, existed bool, err error) {
	c, err := rbd.Connect(ctx, rbd.Config{CephConf: cephConf})
	if err != nil {
		return nil, nil, false, err
	}
	t, err := c.CreateImage(ctx, loc.Pool, loc.Image, size)
	if err == nil {
		tg := &rbdTarget{Target: t, conn: c}
		return tg, tg, false, nil
	}
	if !errors.Is(err, gorbd.ErrExist) {
		c.Close()
		return nil, nil, false, err
	}
	if !overwrite {
		c.Close()
		return nil, nil, true, usagef("RBD image %s exists; restore into a new image or pass --overwrite (an in-place restore)", loc)
	}
	t, err = c.OpenTarget(ctx, loc.Pool, loc.Image)
	if err != nil {
		c.Close()
		return nil, nil, true, err
	}
	if t.Size() != size {
		t.Close()
		c.Close()
		return nil, nil, true, usagef("RBD image %s has %d bytes, the backup's disk %d: an in-place restore needs the same size (resize it with 'rbd resize --size %dB' or restore into a new image)", loc, t.Size(), size, size)
	}
	tg := &rbdTarget{Target: t, conn: c}
	return tg, tg, true, nil
}
