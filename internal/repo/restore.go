package repo

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// RestoreOptions tune RestoreDisk.
type RestoreOptions struct {
	// ZeroHoles writes zeros for hole chunks; needed when the target is not
	// known to be zero already (an existing volume restored in place). A new
	// sparse file does not need it.
	ZeroHoles bool
	// Progress, if set, is called from time to time and at the end.
	Progress func(Progress)
	// From resumes an interrupted restore into the same target: chunks
	// that end at or before From are not fetched or written again. It must
	// be a Progress.Resume of the earlier restore (a multiple of the chunk
	// size, or the disk's size).
	From int64
}

// RestoreStats count what a restore did.
type RestoreStats struct {
	BytesWritten int64   `json:"bytes_written"`
	BytesFetched int64   `json:"bytes_fetched"` // plaintext bytes of chunks fetched
	Chunks       int64   `json:"chunks"`
	Holes        int64   `json:"holes"`
	Seconds      float64 `json:"seconds"`
	// Resume is where the restore may start again (RestoreOptions.From) if
	// it failed: every chunk before it was written. The disk's size when it
	// succeeded.
	Resume int64 `json:"resume"`
}

// RestoreDisk writes disk manifest diskID (BACKUP/VM/DISK) to w, fetching
// chunks in parallel (Options.Transfers at once) and checking each against
// its id. It does not size w: a caller writing a file truncates it to the
// manifest's Size. Errors name the backup, VM, disk and chunk.
func (r *Repository) RestoreDisk(ctx context.Context, diskID string, w io.WriterAt, o RestoreOptions) (RestoreStats, error) {
	start := time.Now()
	m, err := r.LoadManifest(ctx, diskID)
	if err != nil {
		return RestoreStats{}, fmt.Errorf("restore %s: %w", diskID, err)
	}
	st, err := r.restore(ctx, m, w, o)
	st.Seconds = time.Since(start).Seconds()
	if err != nil {
		return st, fmt.Errorf("restore backup %s vm %s disk %s: %w", m.Backup, m.VM, m.Disk, err)
	}
	return st, nil
}

type fetchJob struct {
	i  int64
	id ChunkID
}

func (r *Repository) restore(ctx context.Context, m *DiskManifest, w io.WriterAt, o RestoreOptions) (RestoreStats, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	cs := int64(m.ChunkSize)
	if o.From < 0 || o.From > m.Size || (o.From%cs != 0 && o.From != m.Size) {
		return RestoreStats{}, fmt.Errorf("resume at %d: not a chunk boundary of a %d-byte disk with %d-byte chunks", o.From, m.Size, cs)
	}
	first := (o.From + cs - 1) / cs // the first chunk to write
	jobs := make(chan fetchJob, r.opts.Transfers)
	var mu sync.Mutex
	var st RestoreStats
	done := o.From
	lastProgress := time.Time{}
	// Chunks complete out of order; next is the first chunk not yet
	// written, complete holds those after it that are.
	next, complete := first, map[int64]bool{}
	// report counts chunk i of n bytes: a hole, or fetched and written
	// (written < n when zero blocks were skipped).
	report := func(i, n int64, hole bool, written int64) {
		mu.Lock()
		defer mu.Unlock()
		complete[i] = true
		for complete[next] {
			delete(complete, next)
			next++
		}
		done += n
		if hole {
			st.Holes++
			if o.ZeroHoles {
				st.BytesWritten += n
			}
		} else {
			st.Chunks++
			st.BytesFetched += n
			st.BytesWritten += written
		}
		if o.Progress != nil && time.Since(lastProgress) > 200*time.Millisecond {
			lastProgress = time.Now()
			o.Progress(Progress{Done: done, Total: m.Size, Resume: min(next*cs, m.Size)})
		}
	}
	chunkLen := func(i int64) int64 { return min(cs, m.Size-i*cs) }
	// A target written with O_DIRECT needs block-aligned buffers: chunks
	// are decompressed into aligned ones, stored-raw chunks copied there.
	dw, _ := w.(*DirectWriter)
	direct := dw != nil && dw.Direct()
	var wg sync.WaitGroup
	for range r.opts.Transfers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bufs := &chunkBuffers{stored: bigBuffer(sealedCap(cs))[:0]}
			var alignedBuf []byte
			if direct {
				alignedBuf = alignedBuffer(int(cs) + decodeSlack)
				bufs.plain = alignedBuf
			} else {
				bufs.plain = bigBuffer(int(cs) + decodeSlack)[:0]
			}
			for j := range jobs {
				if ctx.Err() != nil {
					continue
				}
				plain, err := r.loadChunkInto(ctx, j.id, false, bufs)
				if err != nil {
					cancel(fmt.Errorf("chunk %d (offset %d): %w", j.i, j.i*cs, err))
					continue
				}
				if direct && !aligned(plain) && len(plain) <= cap(alignedBuf) {
					plain = append(alignedBuf[:0], plain...)
				}
				if int64(len(plain)) != chunkLen(j.i) {
					cancel(fmt.Errorf("chunk %d (%s): %w: %d bytes, want %d", j.i, j.id, ErrCorrupt, len(plain), chunkLen(j.i)))
					continue
				}
				var werr error
				written := int64(len(plain))
				if o.ZeroHoles {
					_, werr = w.WriteAt(plain, j.i*cs)
				} else {
					written, werr = writeSparse(w, plain, j.i*cs)
				}
				if werr != nil {
					cancel(fmt.Errorf("write at offset %d: %w", j.i*cs, werr))
					continue
				}
				report(j.i, int64(len(plain)), false, written)
			}
		}()
	}
	var zeroChunk []byte // holes written as zeros (ZeroHoles)
	if o.ZeroHoles {
		zeroChunk = alignedBuffer(int(cs))[:cs]
	}
	err := r.ForEachChunk(ctx, m, func(i int64, id ChunkID) error {
		if i < first {
			return nil
		}
		if id.IsHole() {
			if o.ZeroHoles {
				if _, err := w.WriteAt(zeroChunk[:chunkLen(i)], i*cs); err != nil {
					return fmt.Errorf("write zeros at offset %d: %w", i*cs, err)
				}
			}
			report(i, chunkLen(i), true, 0)
			return nil
		}
		select {
		case jobs <- fetchJob{i: i, id: id}:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	})
	close(jobs)
	wg.Wait()
	st.Resume = min(next*cs, m.Size)
	if cerr := context.Cause(ctx); cerr != nil {
		return st, cerr
	}
	if err != nil {
		return st, err
	}
	if o.Progress != nil {
		o.Progress(Progress{Done: m.Size, Total: m.Size, Resume: m.Size})
	}
	return st, nil
}

// sparseBlock is the granularity at which restores into a fresh file skip
// zeros: the file system block size of common file systems.
const sparseBlock = 4096

// minSparseGap is the shortest run of zeros a restore leaves as a hole;
// shorter gaps are written with the data around them, so the file gets
// fewer, larger writes and extents.
const minSparseGap = 64 << 10

// writeSparse writes the non-zero blocks of p at off, skipping runs of zero
// blocks of minSparseGap or more, which a new sparse file already reads as
// zeros. It returns the bytes written.
func writeSparse(w io.WriterAt, p []byte, off int64) (int64, error) {
	var written int64
	start, end := -1, -1 // the run to write: [start, end)
	flush := func() error {
		n, err := w.WriteAt(p[start:end], off+int64(start))
		written += int64(n)
		start = -1
		return err
	}
	for b := 0; b < len(p); b += sparseBlock {
		e := min(b+sparseBlock, len(p))
		if isZero(p[b:e]) {
			continue
		}
		if start >= 0 && b-end >= minSparseGap {
			if err := flush(); err != nil {
				return written, err
			}
		}
		if start < 0 {
			start = b
		}
		end = e
	}
	if start >= 0 {
		return written, flush()
	}
	return written, nil
}
