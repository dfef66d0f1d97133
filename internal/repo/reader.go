package repo

import (
	"context"
	"fmt"
	"io"
	"sync"
)

// DefaultReaderCacheChunks is how many decoded chunks a DiskReader keeps when
// ReaderOptions.CacheChunks is 0.
const DefaultReaderCacheChunks = 8

// readerPages is how many chunk-list pages (2 MiB of ids each) a DiskReader
// keeps in memory.
const readerPages = 2

// ReaderOptions tune OpenDisk.
type ReaderOptions struct {
	// CacheChunks bounds the decoded chunks kept in memory (least recently
	// used go first); 0 means DefaultReaderCacheChunks. Memory is at most
	// CacheChunks × chunk size plus two pages of chunk ids.
	CacheChunks int
}

// ReaderStats count what a DiskReader fetched.
type ReaderStats struct {
	// ChunksFetched counts chunks loaded from the repository (cache misses).
	ChunksFetched int64 `json:"chunks_fetched"`
	// BytesFetched is the plaintext size of the chunks fetched.
	BytesFetched int64 `json:"bytes_fetched"`
	// CacheHits counts chunk accesses served from the cache.
	CacheHits int64 `json:"cache_hits"`
	// HoleReads counts chunk accesses that fell into holes (read as zeros,
	// nothing fetched).
	HoleReads int64 `json:"hole_reads"`
	// PagesFetched counts chunk-list pages loaded.
	PagesFetched int64 `json:"pages_fetched"`
}

// DiskReader reads a disk of a backup at any offset, fetching only the
// chunks a read touches. It implements io.ReaderAt and is safe for
// concurrent use (reads are serialised).
type DiskReader struct {
	r   *Repository
	m   *DiskManifest
	ctx context.Context
	max int

	mu    sync.Mutex
	pages []readerPage  // most recently used last
	cache []cachedChunk // most recently used last
	stats ReaderStats
}

type readerPage struct {
	n   int
	ids []ChunkID
}

type cachedChunk struct {
	i    int64
	data []byte
}

// OpenDisk opens disk manifest diskID (BACKUP/VM/DISK) for random reads.
// ctx bounds every fetch the reader makes (io.ReaderAt has no context of its
// own): cancel it to make pending and later reads fail.
func (r *Repository) OpenDisk(ctx context.Context, diskID string, opts ReaderOptions) (*DiskReader, error) {
	m, err := r.LoadManifest(ctx, diskID)
	if err != nil {
		return nil, fmt.Errorf("open disk %s: %w", diskID, err)
	}
	n := opts.CacheChunks
	if n <= 0 {
		n = DefaultReaderCacheChunks
	}
	return &DiskReader{r: r, m: m, ctx: ctx, max: n}, nil
}

// Size is the disk's size in bytes.
func (d *DiskReader) Size() int64 { return d.m.Size }

// Manifest returns the disk manifest read (do not modify it).
func (d *DiskReader) Manifest() *DiskManifest { return d.m }

// Stats returns what the reader fetched so far.
func (d *DiskReader) Stats() ReaderStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// ReadAt reads len(p) bytes at off. It returns io.EOF when the read reaches
// the end of the disk. Errors name the backup, VM, disk, chunk and offset.
func (d *DiskReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read disk %s: negative offset %d", d.m.ID, off)
	}
	if off >= d.m.Size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	cs := int64(d.m.ChunkSize)
	want := min(int64(len(p)), d.m.Size-off)
	var n int64
	for n < want {
		if err := d.ctx.Err(); err != nil {
			return int(n), fmt.Errorf("read disk %s at offset %d: %w", d.m.ID, off+n, err)
		}
		pos := off + n
		i := pos / cs
		in := pos - i*cs
		data, err := d.chunk(i)
		if err != nil {
			return int(n), fmt.Errorf("read backup %s vm %s disk %s at offset %d: %w", d.m.Backup, d.m.VM, d.m.Disk, pos, err)
		}
		end := min(d.chunkLen(i), in+(want-n))
		if data == nil {
			clear(p[n : n+end-in])
		} else {
			copy(p[n:n+end-in], data[in:end])
		}
		n += end - in
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

func (d *DiskReader) chunkLen(i int64) int64 {
	cs := int64(d.m.ChunkSize)
	return min(cs, d.m.Size-i*cs)
}

// chunk returns chunk i decoded, or nil for a hole. d.mu is held.
func (d *DiskReader) chunk(i int64) ([]byte, error) {
	for k := len(d.cache) - 1; k >= 0; k-- {
		if c := d.cache[k]; c.i == i {
			d.stats.CacheHits++
			copy(d.cache[k:], d.cache[k+1:])
			d.cache[len(d.cache)-1] = c
			return c.data, nil
		}
	}
	id, err := d.id(i)
	if err != nil {
		return nil, err
	}
	if id.IsHole() {
		d.stats.HoleReads++
		return nil, nil
	}
	data, err := d.r.loadChunk(d.ctx, id, false)
	if err != nil {
		return nil, fmt.Errorf("chunk %d: %w", i, err)
	}
	if int64(len(data)) != d.chunkLen(i) {
		return nil, fmt.Errorf("chunk %d (%s): %w: %d bytes, want %d", i, id, ErrCorrupt, len(data), d.chunkLen(i))
	}
	d.stats.ChunksFetched++
	d.stats.BytesFetched += int64(len(data))
	if len(d.cache) >= d.max {
		d.cache[0] = cachedChunk{} // let the oldest go
		d.cache = append(d.cache[:0], d.cache[1:]...)
	}
	d.cache = append(d.cache, cachedChunk{i: i, data: data})
	return data, nil
}

// id returns the id of chunk i, loading its page if needed. d.mu is held.
func (d *DiskReader) id(i int64) (ChunkID, error) {
	if i < 0 || i >= d.m.Chunks {
		return ChunkID{}, fmt.Errorf("chunk %d outside the disk (%d chunks)", i, d.m.Chunks)
	}
	n := int(i / PageEntries)
	for k := len(d.pages) - 1; k >= 0; k-- {
		if pg := d.pages[k]; pg.n == n {
			copy(d.pages[k:], d.pages[k+1:])
			d.pages[len(d.pages)-1] = pg
			return pg.ids[i%PageEntries], nil
		}
	}
	ids, err := d.r.loadPage(d.ctx, d.m, n)
	if err != nil {
		return ChunkID{}, err
	}
	d.stats.PagesFetched++
	if len(d.pages) >= readerPages {
		d.pages[0] = readerPage{}
		d.pages = append(d.pages[:0], d.pages[1:]...)
	}
	d.pages = append(d.pages, readerPage{n: n, ids: ids})
	return ids[i%PageEntries], nil
}
