// Package disk defines what the repository reads a backup from: a disk.Source,
// a point-in-time view of one disk with hints about which bytes matter.
//
// Implementations: file (a disk image or block device, full scan with
// SEEK_DATA/SEEK_HOLE), and, in their own packages, QEMU exports with dirty
// bitmaps and RBD snapshots with snapshot diffs.
package disk

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
)

// Extent is a byte range of a disk.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// End returns the offset just past the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// Source is one disk as it was at a point in time.
//
// Contract (DESIGN.md, "disk.Source"): ReadAt returns every byte of the disk as
// it was at the snapshot, for any offset, for as long as the source is open.
// Allocated ranges are a hint: bytes outside them read as zeros and the
// repository does not read them. Changed extents (given to the repository with
// the backup options) are a hint too: chunks no changed extent touches are
// taken from the base manifest unread.
type Source interface {
	io.ReaderAt
	// Size is the disk's size in bytes.
	Size() int64
	// Allocated returns the sorted, non-overlapping ranges that may hold
	// non-zero data. known is false when the source cannot tell; then every
	// byte is read.
	Allocated() (exts []Extent, known bool, err error)
	// Close releases the source; ReadAt must not be called afterwards.
	Close() error
}

// Normalize sorts extents, drops empty ones, merges overlapping or adjacent
// ones, and checks that each lies inside [0, size). Errors name the extent.
func Normalize(exts []Extent, size int64) ([]Extent, error) {
	out := make([]Extent, 0, len(exts))
	for i, e := range exts {
		if e.Offset < 0 || e.Length < 0 {
			return nil, fmt.Errorf("extent %d {offset %d, length %d}: negative offset or length", i, e.Offset, e.Length)
		}
		if e.Length == 0 {
			continue
		}
		if e.End() > size || e.End() < e.Offset {
			return nil, fmt.Errorf("extent %d {offset %d, length %d} ends at %d, past the end of the disk (%d bytes)", i, e.Offset, e.Length, e.End(), size)
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	merged := out[:0]
	for _, e := range out {
		if n := len(merged); n > 0 && e.Offset <= merged[n-1].End() {
			if e.End() > merged[n-1].End() {
				merged[n-1].Length = e.End() - merged[n-1].Offset
			}
			continue
		}
		merged = append(merged, e)
	}
	return merged, nil
}

// ReadExtentsFile reads a JSON list [{"offset": N, "length": N}, ...] from path
// and normalizes it for a disk of size bytes.
func ReadExtentsFile(path string, size int64) ([]Extent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("changed extents: %w", err)
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	var exts []Extent
	if err := dec.Decode(&exts); err != nil {
		return nil, fmt.Errorf("changed extents %s: not a JSON list of {\"offset\": N, \"length\": N}: %w", path, err)
	}
	norm, err := Normalize(exts, size)
	if err != nil {
		return nil, fmt.Errorf("changed extents %s: %w", path, err)
	}
	return norm, nil
}

// Cursor answers, for increasing ranges, whether they intersect a sorted,
// non-overlapping extent list. It is not safe for concurrent use.
type Cursor struct {
	exts []Extent
	i    int
}

// NewCursor returns a cursor over normalized extents.
func NewCursor(exts []Extent) *Cursor { return &Cursor{exts: exts} }

// Clip returns the parts of [off, off+n) that the extents cover. Calls must
// come with non-decreasing off.
func (c *Cursor) Clip(off, n int64) []Extent {
	for c.i < len(c.exts) && c.exts[c.i].End() <= off {
		c.i++
	}
	var out []Extent
	end := off + n
	for j := c.i; j < len(c.exts) && c.exts[j].Offset < end; j++ {
		s := max(off, c.exts[j].Offset)
		e := min(end, c.exts[j].End())
		out = append(out, Extent{Offset: s, Length: e - s})
	}
	return out
}

// Touches reports whether [off, off+n) intersects the extents. Calls must come
// with non-decreasing off.
func (c *Cursor) Touches(off, n int64) bool {
	for c.i < len(c.exts) && c.exts[c.i].End() <= off {
		c.i++
	}
	return c.i < len(c.exts) && c.exts[c.i].Offset < off+n
}
