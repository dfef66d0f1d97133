package qemu

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/nbd"
)

// Source is an exported fleecing node as a disk.Source: the disk as it was at
// the checkpoint. Reads go round-robin over several NBD connections.
type Source struct {
	conns  []*nbd.Conn
	next   atomic.Uint64
	bitmap string // metadata context of the previous bitmap, "" if none
}

// OpenExport opens the NBD export named export on the unix socket sock as a
// Source over n connections (4 when n <= 0): a point-in-time export such as
// QEMU's fleecing node or libvirt's pull-mode backup. bitmapContext, when
// not empty, is the export's dirty-bitmap metadata context
// (qemu:dirty-bitmap:NAME) that Changed reads; the export must offer it.
func OpenExport(ctx context.Context, sock, export, bitmapContext string, n int) (*Source, error) {
	contexts := []string{"base:allocation"}
	if bitmapContext != "" {
		contexts = append(contexts, bitmapContext)
	}
	s, err := openSource(ctx, sock, export, contexts, n)
	if err != nil {
		return nil, err
	}
	if bitmapContext != "" {
		if !s.conns[0].HasContext(bitmapContext) {
			s.Close()
			return nil, fmt.Errorf("export %s on %s: metadata context %s not offered", export, sock, bitmapContext)
		}
		s.bitmap = bitmapContext
	}
	return s, nil
}

func openSource(ctx context.Context, sock, export string, contexts []string, n int) (*Source, error) {
	if n <= 0 {
		n = 4
	}
	s := &Source{}
	for range n {
		c, err := nbd.Dial(ctx, "unix", sock, export, contexts)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.conns = append(s.conns, c)
	}
	return s, nil
}

// ReadAt implements io.ReaderAt.
func (s *Source) ReadAt(p []byte, off int64) (int, error) {
	c := s.conns[s.next.Add(1)%uint64(len(s.conns))]
	return c.ReadAt(p, off)
}

// Size implements disk.Source.
func (s *Source) Size() int64 { return s.conns[0].Size() }

// Allocated implements disk.Source from the export's base:allocation
// context: extents that do not read as zeros.
func (s *Source) Allocated() ([]disk.Extent, bool, error) {
	exts, err := s.conns[0].BlockStatus("base:allocation", 0, s.Size())
	if err != nil {
		return nil, false, err
	}
	return pick(exts, func(fl uint32) bool { return fl&nbd.StateZero == 0 }), true, nil
}

// ErrNoBitmap means the export has no previous bitmap: read the whole disk.
var ErrNoBitmap = errors.New("no usable previous bitmap")

// Changed returns the extents written since the previous checkpoint, at the
// bitmap's granularity.
func (s *Source) Changed() ([]disk.Extent, error) {
	if s.bitmap == "" {
		return nil, ErrNoBitmap
	}
	exts, err := s.conns[0].BlockStatus(s.bitmap, 0, s.Size())
	if err != nil {
		return nil, fmt.Errorf("changed extents: %w", err)
	}
	return pick(exts, func(fl uint32) bool { return fl&nbd.StateDirty != 0 }), nil
}

func pick(exts []nbd.Extent, keep func(uint32) bool) []disk.Extent {
	var out []disk.Extent
	for _, e := range exts {
		if !keep(e.Flags) {
			continue
		}
		if n := len(out); n > 0 && out[n-1].End() == e.Offset {
			out[n-1].Length += e.Length
			continue
		}
		out = append(out, disk.Extent{Offset: e.Offset, Length: e.Length})
	}
	return out
}

// Close closes the NBD connections.
func (s *Source) Close() error {
	var errs []error
	for _, c := range s.conns {
		errs = append(errs, c.Close())
	}
	s.conns = s.conns[:0:0]
	return errors.Join(errs...)
}
