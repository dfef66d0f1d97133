package repo

import (
	"bytes"
	"context"
	"slices"
	"sync"

	"github.com/raksha-backup/raksha/internal/disk"
)

// prepareBytes bounds the plaintext Prepare holds (plus at most as much
// compressed data): what a backup gains from it is the work of the chunks
// read during the key derivation, tens of milliseconds.
const prepareBytes = 32 << 20

// Prepared holds chunks that Opening.Prepare read and compressed while the
// master key was being derived. Give it to BackupDisk (DiskOptions.Prepared)
// for the same source: the copy then hashes, encrypts and stores those
// chunks without reading or compressing them again.
type Prepared struct {
	cs int64

	mu     sync.Mutex
	chunks map[int64]*preparedChunk
}

type preparedChunk struct {
	off       int64
	n         int
	parts     []disk.Extent // as chunkJob.parts: nil means the whole chunk
	plain     *[]byte       // the chunk as read, n bytes
	read      int64         // bytes read from the source
	zero      bool          // all zeros: a hole
	container []byte        // prepareChunk's output (nil for a hole)
	hdr       int
}

// take removes and returns the prepared chunk for job j if there is one
// that was read exactly as j would read it.
func (p *Prepared) take(j chunkJob) *preparedChunk {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	pc := p.chunks[j.i]
	if pc == nil {
		return nil
	}
	delete(p.chunks, j.i)
	if pc.off != j.off || pc.n != j.n || !slices.Equal(pc.parts, j.parts) {
		return nil
	}
	return pc
}

// Len returns how many chunks are prepared (and not yet used).
func (p *Prepared) Len() int {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.chunks)
}

// Prepare reads and compresses, while the key is being derived, the chunks
// of src that the changed extents touch, in order, until the key is ready
// or about prepareBytes are held. Those chunks are read whole by any
// backup of src (with or without a base), so the work is not wasted unless
// the backup finds a chunk already stored; nothing is written to the
// repository and no chunk is referenced, so it may run before the backup's
// session starts. Errors end the preparation silently: the backup meets
// them again and reports them.
func (o *Opening) Prepare(ctx context.Context, src disk.Source, changed []disk.Extent) *Prepared {
	cs := int64(o.cfg.ChunkSize)
	p := &Prepared{cs: cs, chunks: map[int64]*preparedChunk{}}
	size := src.Size()
	norm, err := disk.Normalize(changed, size)
	if err != nil || o.ready() {
		return p
	}
	allocExts, allocKnown, err := src.Allocated()
	if err != nil {
		return p
	}
	var alloc *disk.Cursor
	if allocKnown {
		an, err := disk.Normalize(allocExts, size)
		if err != nil {
			return p
		}
		alloc = disk.NewCursor(an)
	}
	limit := max(prepareBytes/cs, 1)
	last := int64(-1)
	for _, e := range norm {
		for i := max(e.Offset/cs, last+1); i*cs < e.End(); i++ {
			last = i
			if int64(len(p.chunks)) >= limit || o.ready() || ctx.Err() != nil {
				return p
			}
			off := i * cs
			n := min(cs, size-off)
			pc := &preparedChunk{off: off, n: int(n)}
			if alloc != nil {
				pc.parts = alloc.Clip(off, n)
				if len(pc.parts) == 0 {
					continue // a hole: nothing to read
				}
				if len(pc.parts) == 1 && pc.parts[0].Offset == off && pc.parts[0].Length == n {
					pc.parts = nil
				}
			}
			buf := make([]byte, cs)
			pc.plain = &buf
			pc.read, err = readChunk(src, buf[:n], off, pc.parts)
			if err != nil {
				return p
			}
			if bytes.Equal(buf[:n], zeroChunk[:n]) {
				pc.zero = true
			} else {
				pc.container, pc.hdr = o.codec.prepareChunk(buf[:n], make([]byte, 0, sealedCap(cs)))
			}
			p.mu.Lock()
			p.chunks[i] = pc
			p.mu.Unlock()
		}
	}
	return p
}

// sealedCap is the capacity of the buffers sealed chunks are built in.
func sealedCap(cs int64) int { return int(cs + cs/128 + 1024) }
