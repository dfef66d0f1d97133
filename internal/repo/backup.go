package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/repo/backend"
)

// DiskOptions tell BackupDisk what it may skip.
type DiskOptions struct {
	// Name describes the disk (an image path, a volume name); informational.
	Name string
	// Base is the disk manifest (BACKUP/VM/DISK) to diff against. Empty, or a
	// base that is missing or does not fit, means a full read.
	Base string
	// Changed lists the byte ranges changed since Base. Only with ChangedKnown
	// are untouched chunks taken from the base unread; otherwise every chunk is
	// read and only chunks whose content changed are uploaded.
	Changed      []disk.Extent
	ChangedKnown bool
	// Checkpoint is the CBT token the source was taken at, recorded in the manifest.
	Checkpoint *Checkpoint
	// Progress, if set, is called from time to time and at the end.
	Progress func(Progress)
	// Resumable makes the copy save its position in the repository every
	// CheckpointEvery chunks (default 256), so that a retry of BackupDisk in
	// the same session (another process, after JoinBackup) continues from the
	// last checkpoint instead of reading the disk again, and a retry after the
	// disk was completed returns its manifest. The source must be the same
	// point-in-time view (same size, base and checkpoint token), else the copy
	// starts over.
	Resumable       bool
	CheckpointEvery int64
	// OnCheckpoint, if set, is called after each saved checkpoint with the
	// number of bytes covered (for heartbeats).
	OnCheckpoint func(done int64)
	// OnResume, if set, is called when the copy continues an earlier
	// attempt, with the number of bytes that attempt had covered.
	OnResume func(from int64)
}

// partialManifest is the saved position of a resumable copy
// (manifests/BACKUP/VM/DISK/partial).
type partialManifest struct {
	Size       int64       `json:"size"`
	ChunkSize  int         `json:"chunk_size"`
	Base       string      `json:"base"`
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
	Name       string      `json:"name"`
	Pages      int         `json:"pages"`   // complete pages saved
	Current    []byte      `json:"current"` // the page being filled, encoded
	Next       int64       `json:"next"`    // first chunk not covered
	Stats      DiskStats   `json:"stats"`
}

func partialName(diskID string) string { return manifestPrefix(diskID) + "partial" }

func (p *partialManifest) matches(m *DiskManifest) bool {
	sameCk := (p.Checkpoint == nil) == (m.Checkpoint == nil) && (p.Checkpoint == nil || *p.Checkpoint == *m.Checkpoint)
	return p.Size == m.Size && p.ChunkSize == m.ChunkSize && p.Base == m.Base && p.Name == m.Name && sameCk &&
		p.Next >= 0 && p.Next <= m.Chunks && int64(p.Pages)*PageEntries <= p.Next
}

// loadPartial returns the saved position of an earlier attempt at this copy,
// or nil when there is none or it does not fit.
func (r *Repository) loadPartial(ctx context.Context, m *DiskManifest) (*partialManifest, []ChunkID) {
	var p partialManifest
	if err := r.loadJSON(ctx, partialName(m.ID), "partial:"+m.ID, &p); err != nil {
		if !backend.IsNotFound(err) {
			r.log.WarnContext(ctx, "saved position of an earlier copy unreadable; starting over", "disk", m.ID, "err", err)
		}
		return nil, nil
	}
	if !p.matches(m) {
		r.log.WarnContext(ctx, "saved position of an earlier copy is of another source or base; starting over", "disk", m.ID)
		return nil, nil
	}
	want := int(p.Next - int64(p.Pages)*PageEntries)
	ids, err := decodePage(p.Current, want)
	if err != nil {
		r.log.WarnContext(ctx, "saved position of an earlier copy is damaged; starting over", "disk", m.ID, "err", err)
		return nil, nil
	}
	return &p, ids
}

// Progress reports how far a disk copy or restore is.
type Progress struct {
	Done, Total int64 // bytes of the disk covered so far, and its size
	// Resume (restores only) is where a restore may start again: every
	// chunk before it has been written to the target (not necessarily
	// flushed: the caller syncs the target before relying on it).
	Resume int64
	DiskStats
}

// pipeline sizes
const (
	// window bounds how far the producer may run ahead of the in-order collector.
	window = 4096
)

type chunkJob struct {
	i      int64
	off    int64
	n      int
	parts  []disk.Extent // ranges to read; nil means the whole chunk
	base   ChunkID
	inBase bool
}

type chunkResult struct {
	i     int64
	id    ChunkID
	stats DiskStats
}

type uploadJob struct {
	i      int64
	id     ChunkID
	sealed *[]byte
	stats  DiskStats // what reading the chunk cost
}

// BackupDisk copies one disk from src into the session as manifest
// BACKUP/vm/diskName. Memory stays bounded by the chunk size times the number
// of chunks in flight (Workers + Transfers + a few), whatever the disk size.
func (s *Session) BackupDisk(ctx context.Context, vm, diskName string, src disk.Source, o DiskOptions) (*DiskManifest, error) {
	if !ValidName(vm) || !ValidName(diskName) {
		return nil, fmt.Errorf("backup disk: invalid vm %q or disk %q name (letters, digits, '.', '_', '-')", vm, diskName)
	}
	diskID := s.id + "/" + vm + "/" + diskName
	s.mu.Lock()
	if s.finished || s.aborted {
		s.mu.Unlock()
		return nil, fmt.Errorf("backup disk %s: session already finished or aborted", diskID)
	}
	for _, m := range s.disks {
		if m.ID == diskID {
			s.mu.Unlock()
			if o.Resumable {
				return m, nil // an earlier attempt completed it
			}
			return nil, fmt.Errorf("backup disk %s: already in this backup", diskID)
		}
	}
	s.mu.Unlock()
	start := time.Now()
	m, err := s.copyDisk(ctx, diskID, vm, diskName, src, o)
	if err != nil {
		return nil, fmt.Errorf("backup disk %s: %w", diskID, err)
	}
	m.Stats.Seconds = time.Since(start).Seconds()
	if err := s.r.saveJSON(ctx, headerName(diskID), "manifest:"+diskID, m); err != nil {
		return nil, fmt.Errorf("backup disk %s: %w", diskID, err)
	}
	if o.Resumable {
		if err := s.r.be.Delete(ctx, partialName(diskID)); err != nil && !backend.IsNotFound(err) {
			s.r.log.WarnContext(ctx, "could not remove the saved position of a finished copy", "disk", diskID, "err", err)
		}
	}
	s.mu.Lock()
	s.disks = append(s.disks, m)
	s.mu.Unlock()
	return m, nil
}

// resolveBase loads the base manifest if it can serve this disk; otherwise it
// logs why and returns nil (a full read follows).
func (r *Repository) resolveBase(ctx context.Context, baseID string, size int64) *DiskManifest {
	if baseID == "" {
		return nil
	}
	base, err := r.LoadManifest(ctx, baseID)
	if err != nil {
		r.log.WarnContext(ctx, "base manifest unusable, reading the whole disk", "base", baseID, "err", err)
		return nil
	}
	if base.ChunkSize != r.cfg.ChunkSize {
		r.log.WarnContext(ctx, "base manifest has another chunk size, reading the whole disk", "base", baseID,
			"base_chunk_size", base.ChunkSize, "chunk_size", r.cfg.ChunkSize)
		return nil
	}
	return base
}

func (s *Session) copyDisk(ctx context.Context, diskID, vm, diskName string, src disk.Source, o DiskOptions) (*DiskManifest, error) {
	r := s.r
	size := src.Size()
	if size < 0 {
		return nil, fmt.Errorf("source reports negative size %d", size)
	}
	cs := int64(r.cfg.ChunkSize)
	nchunks := (size + cs - 1) / cs
	m := &DiskManifest{Schema: SchemaVersion, ID: diskID, Backup: s.id, VM: vm, Disk: diskName, Name: o.Name,
		Size: size, ChunkSize: r.cfg.ChunkSize, Chunks: nchunks,
		Pages: int((nchunks + PageEntries - 1) / PageEntries), Checkpoint: o.Checkpoint, Created: time.Now().UTC()}

	base := r.resolveBase(ctx, o.Base, size)
	var changed *disk.Cursor
	if base != nil {
		m.Base = base.ID
		if o.ChangedKnown {
			norm, err := disk.Normalize(o.Changed, size)
			if err != nil {
				return nil, fmt.Errorf("changed extents: %w", err)
			}
			changed = disk.NewCursor(norm)
		}
	} else if o.ChangedKnown {
		r.log.InfoContext(ctx, "changed extents given but no usable base: reading the whole disk", "disk", diskID)
	}
	start := int64(0)
	var resumed *partialManifest
	var resumedPage []ChunkID
	if o.Resumable {
		resumed, resumedPage = r.loadPartial(ctx, m)
		if resumed != nil {
			start = resumed.Next
			m.Stats = resumed.Stats
			r.log.InfoContext(ctx, "resuming an interrupted copy", "disk", diskID, "chunk", start, "of", nchunks)
			if o.OnResume != nil {
				o.OnResume(min(start*cs, size))
			}
		}
	}
	every := o.CheckpointEvery
	if every <= 0 {
		every = 256
	}
	allocExts, allocKnown, err := src.Allocated()
	if err != nil {
		return nil, fmt.Errorf("allocated ranges: %w", err)
	}
	var alloc *disk.Cursor
	if allocKnown {
		norm, err := disk.Normalize(allocExts, size)
		if err != nil {
			return nil, fmt.Errorf("allocated ranges from the source: %w", err)
		}
		alloc = disk.NewCursor(norm)
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	fail := func(err error) { cancel(err) }

	jobs := make(chan chunkJob, r.opts.Workers)
	uploads := make(chan uploadJob, 2)
	// At most one plain buffer per worker, and one sealed buffer per worker,
	// queued upload and uploader, are in use at once.
	plainPool := newBufList(r.opts.Workers, func() []byte { return bigBuffer(int(cs)) })
	sealedPool := newBufList(r.opts.Workers+cap(uploads)+r.opts.Transfers,
		func() []byte { return bigBuffer(sealedCap(cs))[:0] })
	results := make(chan chunkResult, window)
	tokens := make(chan struct{}, window) // producer-ahead-of-collector bound

	var producers, workers, uploaders sync.WaitGroup
	// producer: decides per chunk: hole, unchanged (from base), or read.
	producers.Add(1)
	go func() {
		defer producers.Done()
		defer close(jobs)
		var baseList *chunkList
		if base != nil {
			baseList = r.newChunkList(base)
		}
		for i := start; i < nchunks; i++ {
			select {
			case tokens <- struct{}{}:
			case <-ctx.Done():
				return
			}
			off := i * cs
			n := min(cs, size-off)
			j := chunkJob{i: i, off: off, n: int(n)}
			// The base's entry i may stand for this chunk only if it covers the same bytes.
			if base != nil && i < base.Chunks && ((i+1)*cs <= base.Size && (i+1)*cs <= size || base.Size == size) {
				id, err := baseList.At(ctx, i)
				if err != nil {
					fail(fmt.Errorf("read base %s: %w", base.ID, err))
					return
				}
				j.base, j.inBase = id, true
			}
			// Untouched by changes since the base: take the base's entry unread.
			if j.inBase && changed != nil && !changed.Touches(off, n) {
				res := chunkResult{i: i, id: j.base}
				if j.base.IsHole() {
					res.stats.Holes = 1
				} else {
					res.stats.BytesReused, res.stats.ChunksReuse = n, 1
				}
				results <- res
				continue
			}
			if alloc != nil {
				j.parts = alloc.Clip(off, n)
				if len(j.parts) == 0 {
					results <- chunkResult{i: i, stats: DiskStats{Holes: 1}}
					continue
				}
				if len(j.parts) == 1 && j.parts[0].Offset == off && j.parts[0].Length == n {
					j.parts = nil
				}
			}
			select {
			case jobs <- j:
			case <-ctx.Done():
				return
			}
		}
	}()

	// workers: read, hash, dedup, compress, encrypt.
	for range r.opts.Workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for j := range jobs {
				if ctx.Err() != nil {
					continue
				}
				res, up, err := s.processChunk(ctx, src, j, plainPool, sealedPool)
				if err != nil {
					fail(err)
					continue
				}
				if up != nil {
					select {
					case uploads <- *up:
					case <-ctx.Done():
						sealedPool.put(up.sealed)
					}
					continue
				}
				results <- res
			}
		}()
	}
	// uploaders
	for range r.opts.Transfers {
		uploaders.Add(1)
		go func() {
			defer uploaders.Done()
			for u := range uploads {
				if ctx.Err() == nil {
					if err := r.be.Save(ctx, chunkName(u.id), *u.sealed); err != nil {
						fail(fmt.Errorf("upload chunk %d (%s): %w", u.i, u.id, err))
					} else {
						u.stats.BytesStored = int64(len(*u.sealed))
						results <- chunkResult{i: u.i, id: u.id, stats: u.stats}
					}
				}
				s.mu.Lock()
				delete(s.inflight, u.id)
				s.mu.Unlock()
				sealedPool.put(u.sealed)
			}
		}()
	}
	go func() {
		producers.Wait()
		workers.Wait()
		close(uploads)
		uploaders.Wait()
		close(results)
	}()

	// collector: in order, into pages.
	pending := map[int64]chunkResult{}
	page := make([]ChunkID, 0, min(nchunks, PageEntries))
	pageNo := 0
	next := start
	if resumed != nil {
		pageNo = resumed.Pages
		page = append(page, resumedPage...)
	}
	lastCheckpoint := next
	lastProgress := time.Time{}
	var collectErr error
	for res := range results {
		if collectErr != nil || ctx.Err() != nil {
			continue // drain
		}
		pending[res.i] = res
		for {
			cur, ok := pending[next]
			if !ok {
				break
			}
			delete(pending, next)
			<-tokens
			m.Stats.add(cur.stats)
			page = append(page, cur.id)
			next++
			if len(page) == PageEntries || next == nchunks {
				if err := r.savePage(ctx, diskID, pageNo, page); err != nil {
					collectErr = err
					fail(err)
					break
				}
				pageNo++
				page = page[:0]
			}
			if o.Resumable && next-lastCheckpoint >= every && next < nchunks {
				lastCheckpoint = next
				p := partialManifest{Size: m.Size, ChunkSize: m.ChunkSize, Base: m.Base, Checkpoint: m.Checkpoint,
					Name: m.Name, Pages: pageNo, Current: encodePage(page), Next: next, Stats: m.Stats}
				if err := r.saveJSON(ctx, partialName(diskID), "partial:"+diskID, p); err != nil {
					collectErr = err
					fail(err)
					break
				}
				if o.OnCheckpoint != nil {
					o.OnCheckpoint(next * cs)
				}
			}
		}
		if o.Progress != nil && time.Since(lastProgress) > 200*time.Millisecond {
			lastProgress = time.Now()
			o.Progress(Progress{Done: min(next*cs, size), Total: size, DiskStats: m.Stats})
		}
	}
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	if next != nchunks {
		return nil, fmt.Errorf("internal error: collected %d of %d chunks", next, nchunks)
	}
	if nchunks == 0 {
		m.Pages = 0
	}
	if o.Progress != nil {
		o.Progress(Progress{Done: size, Total: size, DiskStats: m.Stats})
	}
	return m, nil
}

func (r *Repository) savePage(ctx context.Context, diskID string, n int, ids []ChunkID) error {
	sealed := r.codec.seal(encodePage(ids), pageAAD(diskID, n), nil)
	if err := r.be.Save(ctx, pageName(diskID, n), sealed); err != nil {
		return fmt.Errorf("save chunk list page %d: %w", n, err)
	}
	return nil
}

// zeroBuf is compared against by isZero.
var zeroBuf [64 << 10]byte

// isZero reports whether b is all zeros.
func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBuf))
		if !bytes.Equal(b[:n], zeroBuf[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// processChunk reads one chunk and decides: hole, same as base, already
// stored (dedup), or to upload (then it returns the sealed object).
func (s *Session) processChunk(ctx context.Context, src disk.Source, j chunkJob, plainPool, sealedPool *bufList) (chunkResult, *uploadJob, error) {
	r := s.r
	res := chunkResult{i: j.i}
	res.stats.ChunksRead = 1
	bufp := plainPool.get()
	defer plainPool.put(bufp)
	buf := (*bufp)[:j.n]
	read, err := readChunk(src, buf, j.off, j.parts)
	if err != nil {
		return res, nil, fmt.Errorf("read chunk %d at %w", j.i, err)
	}
	res.stats.BytesRead = read
	if isZero(buf) {
		res.stats.Holes = 1
		return res, nil, nil
	}
	id := r.hasher.sum(buf)
	res.id = id
	reused := func() (chunkResult, *uploadJob, error) {
		res.stats.BytesReused, res.stats.ChunksReuse = int64(j.n), 1
		return res, nil, nil
	}
	if j.inBase && j.base == id {
		return reused()
	}
	s.mu.Lock()
	_, busy := s.inflight[id]
	if !busy {
		s.inflight[id] = struct{}{}
	}
	s.mu.Unlock()
	if busy {
		return reused() // the same content is being uploaded by this session right now
	}
	have, err := r.haveChunk(ctx, id)
	if err != nil {
		s.mu.Lock()
		delete(s.inflight, id)
		s.mu.Unlock()
		return res, nil, fmt.Errorf("look up chunk %s: %w", id, err)
	}
	if have {
		s.mu.Lock()
		delete(s.inflight, id)
		s.mu.Unlock()
		return reused()
	}
	sp := sealedPool.get()
	*sp = r.codec.sealChunk(buf, chunkAAD(id), (*sp)[:0])
	res.stats.BytesNew, res.stats.ChunksNew = int64(j.n), 1
	return res, &uploadJob{i: j.i, id: id, sealed: sp, stats: res.stats}, nil
}

// sealedCap is the capacity of the buffers sealed chunks are built in.
func sealedCap(cs int64) int { return int(cs + cs/128 + 1024) }

// readChunk reads a chunk of len(buf) bytes at off: whole, or only the
// given parts (the rest zeros). It returns the bytes read; errors name the
// offset.
func readChunk(src io.ReaderAt, buf []byte, off int64, parts []disk.Extent) (int64, error) {
	if parts == nil {
		if err := readFull(src, buf, off); err != nil {
			return 0, fmt.Errorf("offset %d: %w", off, err)
		}
		return int64(len(buf)), nil
	}
	clear(buf)
	var read int64
	for _, p := range parts {
		if err := readFull(src, buf[p.Offset-off:p.End()-off], p.Offset); err != nil {
			return read, fmt.Errorf("offset %d: %w", p.Offset, err)
		}
		read += p.Length
	}
	return read, nil
}

func readFull(src io.ReaderAt, buf []byte, off int64) error {
	n, err := src.ReadAt(buf, off)
	if n == len(buf) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("short read: %d of %d bytes: %w", n, len(buf), io.ErrUnexpectedEOF)
	}
	return err
}
