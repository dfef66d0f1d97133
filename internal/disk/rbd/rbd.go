//go:build ceph

package rbd

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/raksha-backup/raksha/internal/disk"
)

// Conn is a connection to a Ceph cluster. It is safe for concurrent use.
type Conn struct {
	conn *rados.Conn
	mu   sync.Mutex
	ctxs map[string]*rados.IOContext
}

// Connect connects to the cluster.
func Connect(ctx context.Context, cfg Config) (*Conn, error) {
	user := cfg.User
	if user == "" {
		user = "admin"
	}
	conn, err := rados.NewConnWithUser(user)
	if err != nil {
		return nil, fmt.Errorf("rbd connect: %w", err)
	}
	if cfg.CephConf != "" {
		err = conn.ReadConfigFile(cfg.CephConf)
	} else {
		err = conn.ReadDefaultConfigFile()
	}
	if err != nil {
		conn.Shutdown()
		return nil, fmt.Errorf("rbd connect: read ceph.conf %q: %w", cfg.CephConf, err)
	}
	if cfg.Keyring != "" {
		if err := conn.SetConfigOption("keyring", cfg.Keyring); err != nil {
			conn.Shutdown()
			return nil, fmt.Errorf("rbd connect: keyring: %w", err)
		}
	}
	// Discards must always read back as zeros (Target writes zero ranges
	// as discards): librbd skips partial-object discards by default.
	for k, v := range map[string]string{"client_mount_timeout": "15", "rbd_skip_partial_discard": "false"} {
		if err := conn.SetConfigOption(k, v); err != nil {
			conn.Shutdown()
			return nil, fmt.Errorf("rbd connect: %s: %w", k, err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- conn.Connect() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		return nil, fmt.Errorf("rbd connect: %w", ctx.Err())
	}
	if err != nil {
		conn.Shutdown()
		return nil, fmt.Errorf("rbd connect as client.%s: %w", user, err)
	}
	return &Conn{conn: conn, ctxs: map[string]*rados.IOContext{}}, nil
}

// Close disconnects. Sources and targets must be closed first.
func (c *Conn) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, io := range c.ctxs {
		io.Destroy()
	}
	c.ctxs = nil
	c.conn.Shutdown()
}

func (c *Conn) ioctx(pool string) (*rados.IOContext, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if io, ok := c.ctxs[pool]; ok {
		return io, nil
	}
	io, err := c.conn.OpenIOContext(pool)
	if err != nil {
		return nil, fmt.Errorf("open pool %q: %w", pool, err)
	}
	c.ctxs[pool] = io
	return io, nil
}

// Snapshots lists an image's snapshots, oldest first.
func (c *Conn) Snapshots(ctx context.Context, pool, image string) ([]SnapInfo, error) {
	io, err := c.ioctx(pool)
	if err != nil {
		return nil, err
	}
	img, err := rbd.OpenImageReadOnly(io, image, rbd.NoSnapshot)
	if err != nil {
		return nil, fmt.Errorf("open image %s/%s: %w", pool, image, err)
	}
	defer img.Close()
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		return nil, fmt.Errorf("list snapshots of %s/%s: %w", pool, image, err)
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].Id < snaps[j].Id })
	out := make([]SnapInfo, len(snaps))
	for i, s := range snaps {
		out[i] = SnapInfo{ID: s.Id, Name: s.Name, Size: s.Size}
	}
	return out, nil
}

// CreateSnapshot snapshots image as name.
func (c *Conn) CreateSnapshot(ctx context.Context, pool, image, name string) error {
	io, err := c.ioctx(pool)
	if err != nil {
		return err
	}
	img, err := rbd.OpenImage(io, image, rbd.NoSnapshot)
	if err != nil {
		return fmt.Errorf("open image %s/%s: %w", pool, image, err)
	}
	defer img.Close()
	if _, err := img.CreateSnapshot(name); err != nil {
		return fmt.Errorf("snapshot %s/%s@%s: %w", pool, image, name, err)
	}
	return nil
}

// DeleteSnapshot removes snapshot name of image.
func (c *Conn) DeleteSnapshot(ctx context.Context, pool, image, name string) error {
	io, err := c.ioctx(pool)
	if err != nil {
		return err
	}
	img, err := rbd.OpenImage(io, image, rbd.NoSnapshot)
	if err != nil {
		return fmt.Errorf("open image %s/%s: %w", pool, image, err)
	}
	defer img.Close()
	if err := img.GetSnapshot(name).Remove(); err != nil {
		return fmt.Errorf("delete snapshot %s/%s@%s: %w", pool, image, name, err)
	}
	return nil
}

// ReleaseSnapshots deletes every Raksha snapshot of image except keep, so
// exactly one base remains after a committed backup. Snapshots Raksha did not
// make are never touched. It returns the names deleted.
func (c *Conn) ReleaseSnapshots(ctx context.Context, pool, image, keep string) ([]string, error) {
	snaps, err := c.Snapshots(ctx, pool, image)
	if err != nil {
		return nil, err
	}
	found := false
	for _, s := range snaps {
		found = found || s.Name == keep
	}
	if !found {
		return nil, fmt.Errorf("release snapshots of %s/%s: the base to keep, %q, does not exist; nothing deleted", pool, image, keep)
	}
	var deleted []string
	for _, s := range snaps {
		if s.Name == keep || !IsRakshaSnapshot(s.Name) {
			continue
		}
		if err := c.DeleteSnapshot(ctx, pool, image, s.Name); err != nil {
			return deleted, err
		}
		deleted = append(deleted, s.Name)
	}
	return deleted, nil
}

// Trashed is an image of a pool's trash whose only snapshots were Raksha's:
// a Cinder volume deleted while Raksha kept its diff base on it.
type Trashed struct {
	Pool, ID, Name string
	Snapshots      []string // the Raksha snapshots removed
	Removed        bool     // the image left the trash
}

// ReleaseTrashed lets go of Raksha's snapshots on the images of pool's trash
// and removes those images. Cinder's RBD driver (Yoga and later) moves a
// volume it deletes to the trash when the image has snapshots Cinder does
// not know, such as the base Raksha keeps for the next diff; the snapshot
// then pins the image, and its space, for ever (`rbd trash rm` refuses, and
// Cinder never looks again). An image is touched only when its trash entry
// is due (its deferment ended: Cinder's delete asks for none) and every
// snapshot on it is Raksha's: an image with another snapshot, or moved to
// the trash with a deferment still running (someone may restore it), stays
// as it is. The image is removed after its snapshots: that is the delete
// Cinder asked for and could not finish.
func (c *Conn) ReleaseTrashed(ctx context.Context, pool string) ([]Trashed, error) {
	io, err := c.ioctx(pool)
	if err != nil {
		return nil, err
	}
	entries, err := rbd.GetTrashList(io)
	if err != nil {
		return nil, fmt.Errorf("list the trash of pool %q: %w", pool, err)
	}
	now := time.Now()
	var out []Trashed
	var errs []error
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		if e.DefermentEndTime.After(now) {
			continue
		}
		img, err := rbd.OpenImageById(io, e.Id, rbd.NoSnapshot)
		if err != nil {
			errs = append(errs, fmt.Errorf("open trashed image %s/%s (%s): %w", pool, e.Id, e.Name, err))
			continue
		}
		snaps, err := img.GetSnapshotNames()
		if err != nil {
			img.Close()
			errs = append(errs, fmt.Errorf("list snapshots of trashed image %s/%s (%s): %w", pool, e.Id, e.Name, err))
			continue
		}
		ours := len(snaps) > 0
		for _, s := range snaps {
			ours = ours && IsRakshaSnapshot(s.Name)
		}
		if !ours {
			img.Close()
			continue
		}
		t := Trashed{Pool: pool, ID: e.Id, Name: e.Name}
		var serr error
		for _, s := range snaps {
			snap := img.GetSnapshot(s.Name)
			if p, err := snap.IsProtected(); err == nil && p {
				if err := snap.Unprotect(); err != nil {
					serr = fmt.Errorf("unprotect %s@%s of trashed image %s/%s: %w", e.Name, s.Name, pool, e.Id, err)
					break
				}
			}
			if err := snap.Remove(); err != nil {
				serr = fmt.Errorf("delete %s@%s of trashed image %s/%s: %w", e.Name, s.Name, pool, e.Id, err)
				break
			}
			t.Snapshots = append(t.Snapshots, s.Name)
		}
		img.Close()
		if serr == nil {
			if err := rbd.TrashRemove(io, e.Id, false); err != nil {
				serr = fmt.Errorf("remove trashed image %s/%s (%s): %w", pool, e.Id, e.Name, err)
			} else {
				t.Removed = true
			}
		}
		if serr != nil {
			errs = append(errs, serr)
		}
		if len(t.Snapshots) > 0 || t.Removed {
			out = append(out, t)
		}
	}
	return out, errors.Join(errs...)
}

// Leak is an image holding more Raksha snapshots than the one base it needs.
type Leak struct {
	Pool, Image string
	Snapshots   []string // Raksha snapshots, oldest first
}

// LeakedSnapshots reports the images of pool with more than one Raksha
// snapshot: space a failed or interrupted release leaked (each snapshot pins
// the data overwritten since it was taken).
func (c *Conn) LeakedSnapshots(ctx context.Context, pool string) ([]Leak, error) {
	io, err := c.ioctx(pool)
	if err != nil {
		return nil, err
	}
	names, err := rbd.GetImageNames(io)
	if err != nil {
		return nil, fmt.Errorf("list images of pool %q: %w", pool, err)
	}
	sort.Strings(names)
	var out []Leak
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		snaps, err := c.Snapshots(ctx, pool, n)
		if err != nil {
			return out, err
		}
		var ours []string
		for _, s := range snaps {
			if IsRakshaSnapshot(s.Name) {
				ours = append(ours, s.Name)
			}
		}
		if len(ours) > 1 {
			out = append(out, Leak{Pool: pool, Image: n, Snapshots: ours})
		}
	}
	return out, nil
}

// Source is an RBD snapshot as a disk.Source. ReadAt reads the snapshot, so
// the bytes are those at the snapshot for as long as the source is open.
type Source struct {
	img   *rbd.Image
	size  int64
	name  string // pool/image@snap
	snap  string
	snaps []rbd.SnapInfo
}

// OpenSnapshot opens image@snap read-only. base is the snapshot of the
// previous backup, or "".
func (c *Conn) OpenSnapshot(ctx context.Context, pool, image, snap string) (*Source, error) {
	if snap == "" {
		return nil, fmt.Errorf("open %s/%s: a snapshot name is required (a live image is no point-in-time view)", pool, image)
	}
	io, err := c.ioctx(pool)
	if err != nil {
		return nil, err
	}
	img, err := rbd.OpenImageReadOnly(io, image, snap)
	if err != nil {
		return nil, fmt.Errorf("open %s/%s@%s: %w", pool, image, snap, err)
	}
	size, err := img.GetSize()
	if err != nil {
		img.Close()
		return nil, fmt.Errorf("size of %s/%s@%s: %w", pool, image, snap, err)
	}
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		img.Close()
		return nil, fmt.Errorf("snapshots of %s/%s: %w", pool, image, err)
	}
	return &Source{img: img, size: int64(size), name: pool + "/" + image + "@" + snap, snap: snap, snaps: snaps}, nil
}

// ReadAt implements io.ReaderAt on the snapshot.
func (s *Source) ReadAt(p []byte, off int64) (int, error) { return s.img.ReadAt(p, off) }

// Size implements disk.Source.
func (s *Source) Size() int64 { return s.size }

// Name is pool/image@snap.
func (s *Source) Name() string { return s.name }

func (s *Source) diff(from string) ([]disk.Extent, error) {
	var exts []disk.Extent
	err := s.img.DiffIterate(rbd.DiffIterateConfig{
		SnapName: from, Offset: 0, Length: uint64(s.size),
		IncludeParent: rbd.IncludeParent, WholeObject: rbd.DisableWholeObject,
		Callback: func(off, length uint64, exists int, _ interface{}) int {
			if n := len(exts); n > 0 && exts[n-1].End() == int64(off) {
				exts[n-1].Length += int64(length)
			} else {
				exts = append(exts, disk.Extent{Offset: int64(off), Length: int64(length)})
			}
			return 0
		},
	})
	if err != nil {
		return nil, fmt.Errorf("diff %s from %q: %w", s.name, from, err)
	}
	return exts, nil
}

// Allocated implements disk.Source: the extents that hold data at the snapshot.
func (s *Source) Allocated() ([]disk.Extent, bool, error) {
	exts, err := s.diff("")
	if err != nil {
		return nil, false, err
	}
	return exts, true, nil
}

// ErrNoBase means the base snapshot cannot serve as a diff base (missing, or
// not older than the snapshot); the caller reads the whole disk.
var ErrNoBase = errors.New("base snapshot unusable")

// Changed returns the extents changed (written or discarded) between the base
// snapshot and this one. A base that does not exist or is not older gives
// ErrNoBase: read everything, never an incomplete diff.
func (s *Source) Changed(base string) ([]disk.Extent, error) {
	var baseInfo, cur *rbd.SnapInfo
	for i := range s.snaps {
		if s.snaps[i].Name == base {
			baseInfo = &s.snaps[i]
		}
		if s.snaps[i].Name == s.snap {
			cur = &s.snaps[i]
		}
	}
	switch {
	case base == "":
		return nil, fmt.Errorf("%s: %w: no base given", s.name, ErrNoBase)
	case baseInfo == nil:
		return nil, fmt.Errorf("%s: %w: snapshot %q does not exist", s.name, ErrNoBase, base)
	case cur == nil || baseInfo.Id >= cur.Id:
		return nil, fmt.Errorf("%s: %w: %q is not older than the snapshot", s.name, ErrNoBase, base)
	}
	return s.diff(base)
}

// Close implements disk.Source.
func (s *Source) Close() error { return s.img.Close() }

// Target is an image opened for writing a restore.
type Target struct {
	img  *rbd.Image
	size int64
	name string
}

// CreateImage creates a new image of size bytes and opens it for a restore.
// A new image reads as zeros, so restores skip holes (sparse).
func (c *Conn) CreateImage(ctx context.Context, pool, image string, size int64) (*Target, error) {
	io, err := c.ioctx(pool)
	if err != nil {
		return nil, err
	}
	opts := rbd.NewRbdImageOptions()
	defer opts.Destroy()
	if err := opts.SetUint64(rbd.ImageOptionOrder, 22); err != nil {
		return nil, fmt.Errorf("create %s/%s: %w", pool, image, err)
	}
	if err := rbd.CreateImage(io, image, uint64(size), opts); err != nil {
		return nil, fmt.Errorf("create %s/%s: %w", pool, image, err)
	}
	return c.OpenTarget(ctx, pool, image)
}

// OpenTarget opens an existing image for an in-place restore (holes must then
// be written as zeros: RestoreOptions.ZeroHoles).
func (c *Conn) OpenTarget(ctx context.Context, pool, image string) (*Target, error) {
	io, err := c.ioctx(pool)
	if err != nil {
		return nil, err
	}
	img, err := rbd.OpenImage(io, image, rbd.NoSnapshot)
	if err != nil {
		return nil, fmt.Errorf("open %s/%s for writing: %w", pool, image, err)
	}
	size, err := img.GetSize()
	if err != nil {
		img.Close()
		return nil, fmt.Errorf("size of %s/%s: %w", pool, image, err)
	}
	return &Target{img: img, size: int64(size), name: pool + "/" + image}, nil
}

// WriteAt implements io.WriterAt. A range of zeros is discarded instead of
// written (it reads back as zeros, Connect turns off librbd's skipping of
// partial discards), so that a restore's holes and zero chunks allocate
// nothing in the cluster.
func (t *Target) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > t.size {
		return 0, fmt.Errorf("write %s at %d: %d bytes past the end (%d)", t.name, off, len(p), t.size)
	}
	if len(p) > 0 && allZero(p) {
		if _, err := t.img.Discard(uint64(off), uint64(len(p))); err != nil {
			return 0, fmt.Errorf("discard %s at %d: %w", t.name, off, err)
		}
		return len(p), nil
	}
	n, err := t.img.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("write %s at %d: %w", t.name, off, err)
	}
	return n, nil
}

// Size is the image size.
func (t *Target) Size() int64 { return t.size }

// Sync flushes every write made so far to the cluster.
func (t *Target) Sync() error {
	if err := t.img.Flush(); err != nil {
		return fmt.Errorf("flush %s: %w", t.name, err)
	}
	return nil
}

// Close flushes and closes the image.
func (t *Target) Close() error {
	ferr := t.img.Flush()
	cerr := t.img.Close()
	if ferr != nil {
		return fmt.Errorf("flush %s: %w", t.name, ferr)
	}
	if cerr != nil {
		return fmt.Errorf("close %s: %w", t.name, cerr)
	}
	return nil
}

// allZero reports whether p holds only zero bytes.
func allZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}
