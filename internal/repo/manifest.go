package repo

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// SchemaVersion is the version of backup records and disk manifests written.
const SchemaVersion = 1

// PageEntries is how many chunk ids one manifest page holds (2 MiB of ids), so
// the memory for a chunk list never grows with the disk: a 64 TiB disk at 4 MiB
// chunks has 16 M chunks in 256 pages, read one page at a time.
const PageEntries = 1 << 16

// Backup is the record of one backup: one workload run or one disk backup. A
// backup exists once its record is stored, and only then.
type Backup struct {
	Schema    int               `json:"schema"`
	ID        string            `json:"id"`
	Created   time.Time         `json:"created"`
	Completed time.Time         `json:"completed"`
	Expires   *time.Time        `json:"expires,omitempty"`
	Tags      []string          `json:"tags,omitempty"`
	Protected bool              `json:"protected"`
	Labels    map[string]string `json:"labels,omitempty"`
	// Source is free-form metadata of what was backed up (the OpenStack
	// metadata of each VM for workload backups).
	Source json.RawMessage `json:"source,omitempty"`
	// Consistency is "app", "crash" or "" (unknown, e.g. a plain image file).
	Consistency string `json:"consistency,omitempty"`
	// FreezeWindows is how long each VM's guest was frozen (by VM name), for
	// an application-consistent workload backup.
	FreezeWindows map[string]time.Duration `json:"freeze_windows,omitempty"`
	// WorkloadWindow is the workload's freeze window: from the first
	// guest's freeze to the last guest's thaw.
	WorkloadWindow time.Duration `json:"workload_window,omitempty"`
	Disks          []DiskRef     `json:"disks"`
	Stats          DiskStats     `json:"stats"`
}

// DiskRef points from a backup record to one of its disk manifests.
type DiskRef struct {
	ID   string `json:"id"` // BACKUP/VM/DISK
	VM   string `json:"vm"`
	Disk string `json:"disk"`
	Size int64  `json:"size"`
}

// Checkpoint is the changed-block-tracking token a disk manifest was taken at:
// a QEMU dirty bitmap (name and generation) or an RBD snapshot name.
type Checkpoint struct {
	Kind       string `json:"kind"` // "qemu-bitmap", "rbd-snapshot", "libvirt-checkpoint", ...
	Name       string `json:"name"`
	Generation int64  `json:"generation,omitempty"`
	// Mode is how the disk was read: "incremental" (changed extents against
	// the base) or "full"; Reason says why a disk that could have been read
	// incrementally was read in full (no base, base checkpoint invalid, new
	// disk, no bitmaps). Empty in manifests of older builds.
	Mode   string `json:"mode,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Data is what the source needs to diff against this checkpoint again:
	// a libvirt checkpoint's XML, which is redefined before the next backup
	// (libvirt keeps no checkpoint metadata between backups).
	Data string `json:"data,omitempty"`
}

// DiskStats count what a backup did for a disk (or, summed, for a backup).
type DiskStats struct {
	// BytesRead is what was read from the source.
	BytesRead int64 `json:"bytes_read"`
	// BytesNew is the plaintext size of chunks this backup uploaded.
	BytesNew int64 `json:"bytes_new"`
	// BytesReused is the plaintext size of data chunks already in the repository.
	BytesReused int64 `json:"bytes_reused"`
	// BytesStored is what this backup wrote to the backend for chunks
	// (compressed, encrypted).
	BytesStored int64 `json:"bytes_stored"`
	// Holes is the number of all-zero chunks (stored as nothing).
	Holes       int64 `json:"holes"`
	ChunksNew   int64 `json:"chunks_new"`
	ChunksReuse int64 `json:"chunks_reused"`
	// ChunksRead counts chunks read from the source (whole or in part).
	ChunksRead int64 `json:"chunks_read"`
	// Seconds is the wall time of the copy.
	Seconds float64 `json:"seconds"`
}

func (s *DiskStats) add(o DiskStats) {
	s.BytesRead += o.BytesRead
	s.BytesNew += o.BytesNew
	s.BytesReused += o.BytesReused
	s.BytesStored += o.BytesStored
	s.Holes += o.Holes
	s.ChunksNew += o.ChunksNew
	s.ChunksReuse += o.ChunksReuse
	s.ChunksRead += o.ChunksRead
	s.Seconds += o.Seconds
}

// DiskManifest describes one disk of a backup. Its chunk list lives in pages.
type DiskManifest struct {
	Schema    int    `json:"schema"`
	ID        string `json:"id"` // BACKUP/VM/DISK
	Backup    string `json:"backup"`
	VM        string `json:"vm"`
	Disk      string `json:"disk"`
	Name      string `json:"name,omitempty"` // what the disk was, e.g. an image path or volume name
	Size      int64  `json:"size"`
	ChunkSize int    `json:"chunk_size"`
	Chunks    int64  `json:"chunks"`
	Pages     int    `json:"pages"`
	// Checkpoint is the CBT token this manifest was taken at.
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
	// Base is the disk manifest this one was diffed against ("" = full read).
	Base    string    `json:"base,omitempty"`
	Created time.Time `json:"created"`
	Stats   DiskStats `json:"stats"`
}

// ValidName reports whether s can be a VM or disk name in a manifest id
// (letters, digits, '.', '_', '-'; at most 128 characters; the first a
// letter or digit): `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`, checked by hand.
// (That regexp, compiled at package initialisation, cost every CLI command
// about 1,700 allocations and 3 ms: the bounded repetition expands to 127
// states.)
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// SplitDiskID splits BACKUP/VM/DISK, checking each part.
func SplitDiskID(id string) (backup, vm, disk string, err error) {
	parts := strings.Split(id, "/")
	if len(parts) != 3 || !ValidName(parts[0]) || !ValidName(parts[1]) || !ValidName(parts[2]) {
		return "", "", "", fmt.Errorf("invalid disk manifest id %q (want BACKUP/VM/DISK)", id)
	}
	return parts[0], parts[1], parts[2], nil
}

func backupName(id string) string         { return "backups/" + id }
func manifestPrefix(diskID string) string { return "manifests/" + diskID + "/" }
func headerName(diskID string) string     { return manifestPrefix(diskID) + "header" }
func pageName(diskID string, n int) string {
	return fmt.Sprintf("%spage-%06d", manifestPrefix(diskID), n)
}
func pageAAD(diskID string, n int) []byte { return fmt.Appendf(nil, "page:%s:%d", diskID, n) }

// encodePage lays out ids as: "RKP1" | count uint32 | count × 32 bytes.
func encodePage(ids []ChunkID) []byte {
	out := make([]byte, 8, 8+32*len(ids))
	copy(out, "RKP1")
	binary.LittleEndian.PutUint32(out[4:], uint32(len(ids)))
	for i := range ids {
		out = append(out, ids[i][:]...)
	}
	return out
}

// decodePage parses a page, checking it holds exactly want entries.
func decodePage(data []byte, want int) ([]ChunkID, error) {
	if len(data) < 8 || string(data[:4]) != "RKP1" {
		return nil, fmt.Errorf("%w: not a chunk-list page", ErrCorrupt)
	}
	n := int(binary.LittleEndian.Uint32(data[4:]))
	if n != want || len(data) != 8+32*n {
		return nil, fmt.Errorf("%w: page has %d entries in %d bytes, want %d entries", ErrCorrupt, n, len(data), want)
	}
	ids := make([]ChunkID, n)
	for i := range ids {
		copy(ids[i][:], data[8+32*i:])
	}
	return ids, nil
}

// pageLen is the number of entries page n of a manifest with chunks entries holds.
func pageLen(chunks int64, n int) int {
	rest := chunks - int64(n)*PageEntries
	return int(min(rest, PageEntries))
}

// LoadBackup loads a backup record.
func (r *Repository) LoadBackup(ctx context.Context, id string) (*Backup, error) {
	if !ValidName(id) {
		return nil, fmt.Errorf("invalid backup id %q", id)
	}
	var b Backup
	if err := r.loadJSON(ctx, backupName(id), "backup:"+id, &b); err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	if b.Schema != SchemaVersion || b.ID != id {
		return nil, fmt.Errorf("backup %s: %w: schema %d, id %q", id, ErrCorrupt, b.Schema, b.ID)
	}
	return &b, nil
}

// LoadManifest loads a disk manifest's header, checking it is consistent.
func (r *Repository) LoadManifest(ctx context.Context, diskID string) (*DiskManifest, error) {
	if _, _, _, err := SplitDiskID(diskID); err != nil {
		return nil, err
	}
	var m DiskManifest
	if err := r.loadJSON(ctx, headerName(diskID), "manifest:"+diskID, &m); err != nil {
		return nil, fmt.Errorf("disk manifest %s: %w", diskID, err)
	}
	cs := int64(m.ChunkSize)
	switch {
	case m.Schema != SchemaVersion || m.ID != diskID:
		return nil, fmt.Errorf("disk manifest %s: %w: schema %d, id %q", diskID, ErrCorrupt, m.Schema, m.ID)
	case m.Size < 0 || cs < MinChunkSize || cs > MaxChunkSize:
		return nil, fmt.Errorf("disk manifest %s: %w: size %d, chunk size %d", diskID, ErrCorrupt, m.Size, m.ChunkSize)
	case m.Chunks != (m.Size+cs-1)/cs || int64(m.Pages) != (m.Chunks+PageEntries-1)/PageEntries:
		return nil, fmt.Errorf("disk manifest %s: %w: %d chunks in %d pages do not cover %d bytes", diskID, ErrCorrupt, m.Chunks, m.Pages, m.Size)
	}
	return &m, nil
}

func (r *Repository) loadPage(ctx context.Context, m *DiskManifest, n int) ([]ChunkID, error) {
	data, err := r.be.Load(ctx, pageName(m.ID, n))
	if err != nil {
		return nil, fmt.Errorf("disk manifest %s page %d: %w", m.ID, n, err)
	}
	plain, err := r.codec.open(data, pageAAD(m.ID, n))
	if err != nil {
		return nil, fmt.Errorf("disk manifest %s page %d: %w", m.ID, n, err)
	}
	ids, err := decodePage(plain, pageLen(m.Chunks, n))
	if err != nil {
		return nil, fmt.Errorf("disk manifest %s page %d: %w", m.ID, n, err)
	}
	return ids, nil
}

// chunkList reads a manifest's chunk ids in order, one page in memory at a time.
type chunkList struct {
	r    *Repository
	m    *DiskManifest
	page int
	ids  []ChunkID
}

func (r *Repository) newChunkList(m *DiskManifest) *chunkList {
	return &chunkList{r: r, m: m, page: -1}
}

// At returns the id of chunk i. Access is fast when i grows monotonically.
func (c *chunkList) At(ctx context.Context, i int64) (ChunkID, error) {
	if i < 0 || i >= c.m.Chunks {
		return ChunkID{}, fmt.Errorf("chunk %d outside disk manifest %s (%d chunks)", i, c.m.ID, c.m.Chunks)
	}
	p := int(i / PageEntries)
	if p != c.page {
		ids, err := c.r.loadPage(ctx, c.m, p)
		if err != nil {
			return ChunkID{}, err
		}
		c.page, c.ids = p, ids
	}
	return c.ids[i%PageEntries], nil
}

// ForEachChunk calls fn for every chunk of the manifest in order (holes too).
func (r *Repository) ForEachChunk(ctx context.Context, m *DiskManifest, fn func(i int64, id ChunkID) error) error {
	for p := 0; p < m.Pages; p++ {
		ids, err := r.loadPage(ctx, m, p)
		if err != nil {
			return err
		}
		for j, id := range ids {
			if err := fn(int64(p)*PageEntries+int64(j), id); err != nil {
				return err
			}
		}
	}
	return nil
}
