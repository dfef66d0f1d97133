package repo

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

// BadChunk is a chunk that failed verification, with every disk manifest
// (BACKUP/VM/DISK) that references it.
type BadChunk struct {
	ID    string   `json:"id"`
	Error string   `json:"error"`
	Disks []string `json:"disks"`
}

// Backups returns the ids of the backups the bad chunk affects.
func (b BadChunk) Backups() []string {
	seen := map[string]bool{}
	var out []string
	for _, d := range b.Disks {
		id, _, _ := strings.Cut(d, "/")
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// VerifyReport is what verify found.
type VerifyReport struct {
	Backups   int        `json:"backups"`
	Disks     int        `json:"disks"`
	Chunks    int        `json:"chunks"`
	Bytes     int64      `json:"bytes"`
	BadChunks []BadChunk `json:"bad_chunks,omitempty"`
	// BadObjects lists records or manifests that could not be read.
	BadObjects []string `json:"bad_objects,omitempty"`
}

// OK reports whether nothing bad was found.
func (v *VerifyReport) OK() bool { return len(v.BadChunks) == 0 && len(v.BadObjects) == 0 }

// ErrVerifyFailed is returned (wrapped) by Verify when anything is damaged.
var ErrVerifyFailed = errors.New("verify found damage")

// Verify re-reads every chunk that the selected backups reference (all
// backups if ids is empty), decrypts, decompresses and re-hashes it, and
// reports each bad chunk with every disk that references it. It returns the
// report and, when damage was found, an error wrapping ErrVerifyFailed.
func (r *Repository) Verify(ctx context.Context, ids []string, progress func(done, total int)) (*VerifyReport, error) {
	rep := &VerifyReport{}
	var backups []*Backup
	if len(ids) == 0 {
		var names []string
		err := r.be.List(ctx, "backups/", func(in backend.Info) error {
			names = append(names, strings.TrimPrefix(in.Name, "backups/"))
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
		ids = names
	}
	for _, id := range ids {
		b, err := r.LoadBackup(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			rep.BadObjects = append(rep.BadObjects, err.Error())
			continue
		}
		backups = append(backups, b)
	}
	rep.Backups = len(backups)
	users := map[ChunkID][]string{}
	var order []ChunkID
	for _, b := range backups {
		for _, d := range b.Disks {
			rep.Disks++
			m, err := r.LoadManifest(ctx, d.ID)
			if err != nil {
				rep.BadObjects = append(rep.BadObjects, err.Error())
				continue
			}
			err = r.ForEachChunk(ctx, m, func(_ int64, id ChunkID) error {
				if id.IsHole() {
					return nil
				}
				u := users[id]
				if len(u) == 0 {
					order = append(order, id)
				}
				if len(u) == 0 || u[len(u)-1] != d.ID {
					users[id] = append(u, d.ID)
				}
				return nil
			})
			if err != nil {
				rep.BadObjects = append(rep.BadObjects, err.Error())
			}
		}
	}
	rep.Chunks = len(order)
	var mu sync.Mutex
	var wg sync.WaitGroup
	jobs := make(chan ChunkID)
	done := 0
	for range r.opts.Transfers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range jobs {
				plain, err := r.loadChunk(ctx, id, true)
				mu.Lock()
				done++
				if err != nil {
					rep.BadChunks = append(rep.BadChunks, BadChunk{ID: id.String(), Error: err.Error(), Disks: users[id]})
				} else {
					rep.Bytes += int64(len(plain))
				}
				if progress != nil {
					progress(done, len(order))
				}
				mu.Unlock()
			}
		}()
	}
	for _, id := range order {
		select {
		case jobs <- id:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sort.Slice(rep.BadChunks, func(i, j int) bool { return rep.BadChunks[i].ID < rep.BadChunks[j].ID })
	if !rep.OK() {
		return rep, fmt.Errorf("verify: %w: %d bad chunks, %d unreadable records or manifests", ErrVerifyFailed, len(rep.BadChunks), len(rep.BadObjects))
	}
	return rep, nil
}

// CheckReport is what check found about the repository's structure.
type CheckReport struct {
	Backups         int      `json:"backups"`
	Manifests       int      `json:"manifests"`
	StoredChunks    int      `json:"stored_chunks"`
	TrashedChunks   int      `json:"trashed_chunks"`
	MissingChunks   []string `json:"missing_chunks,omitempty"` // "CHUNK (BACKUP/VM/DISK)"
	UnreferencedIDs int      `json:"unreferenced_chunks"`
	Sessions        int      `json:"sessions"`
	Errors          []string `json:"errors,omitempty"`
}

// OK reports whether the structure is sound.
func (c *CheckReport) OK() bool { return len(c.MissingChunks) == 0 && len(c.Errors) == 0 }

// ErrCheckFailed is returned (wrapped) by Check when the structure is damaged.
var ErrCheckFailed = errors.New("check found damage")

// Check verifies the structure without reading chunk data: config and keys
// open, every record and manifest decodes, every referenced chunk exists (in
// chunks/ or the trash). It reports unreferenced chunks and live sessions.
func (r *Repository) Check(ctx context.Context) (*CheckReport, error) {
	rep := &CheckReport{}
	stored := map[ChunkID]bool{}
	for _, prefix := range []string{"chunks/", "trash/"} {
		err := r.be.List(ctx, prefix, func(in backend.Info) error {
			id, ok := chunkFromName(in.Name)
			if !ok {
				rep.Errors = append(rep.Errors, fmt.Sprintf("stray object %s", in.Name))
				return nil
			}
			if prefix == "trash/" {
				rep.TrashedChunks++
			} else {
				rep.StoredChunks++
			}
			stored[id] = true
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("check: %w", err)
		}
	}
	err := r.be.List(ctx, "sessions/", func(backend.Info) error { rep.Sessions++; return nil })
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	var ids []string
	err = r.be.List(ctx, "backups/", func(in backend.Info) error {
		ids = append(ids, strings.TrimPrefix(in.Name, "backups/"))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	refd := map[ChunkID]bool{}
	for _, id := range ids {
		b, err := r.LoadBackup(ctx, id)
		if err != nil {
			rep.Errors = append(rep.Errors, err.Error())
			continue
		}
		rep.Backups++
		for _, d := range b.Disks {
			m, err := r.LoadManifest(ctx, d.ID)
			if err != nil {
				rep.Errors = append(rep.Errors, fmt.Sprintf("backup %s: %v", id, err))
				continue
			}
			rep.Manifests++
			if m.Size != d.Size {
				rep.Errors = append(rep.Errors, fmt.Sprintf("backup %s: disk %s: record says %d bytes, manifest %d", id, d.ID, d.Size, m.Size))
			}
			err = r.ForEachChunk(ctx, m, func(_ int64, cid ChunkID) error {
				if cid.IsHole() || refd[cid] {
					return nil
				}
				refd[cid] = true
				if !stored[cid] {
					rep.MissingChunks = append(rep.MissingChunks, fmt.Sprintf("%s (%s)", cid, d.ID))
				}
				return nil
			})
			if err != nil {
				rep.Errors = append(rep.Errors, fmt.Sprintf("backup %s: %v", id, err))
			}
		}
	}
	for id := range stored {
		if !refd[id] {
			rep.UnreferencedIDs++
		}
	}
	if !rep.OK() {
		return rep, fmt.Errorf("check: %w: %d missing chunks, %d errors", ErrCheckFailed, len(rep.MissingChunks), len(rep.Errors))
	}
	return rep, nil
}
