package repo

// Garbage collection.
//
// Object stores give no locks and no atomic rename, so gc must stay correct
// while backups run, with only these facts to go on: objects have a ModTime by
// the store's clock, a save replaces an object atomically, and every backup
// writes a session marker (sessions/ID) before it uploads or reuses anything
// and removes it after its record is committed. Like kopia and Proxmox Backup
// Server, gc never deletes a chunk in one step: it moves unreferenced chunks to
// trash/ and purges them only in a later run, and every reader falls back to the
// trash. Only one gc runs at a time (the gc lease, gclease.go), and only gc
// ever deletes a trash/ object.
//
// One run:
//
//  0. Take the gc lease (refuse with ErrGCRunning while another run holds it);
//     read E, the ModTime of gc/trashed: when the last run finished moving
//     chunks to the trash (zero if none did).
//  1. Save gc/last; its ModTime T0 is "now" by the store's clock.
//  2. List session markers. A marker older than MaxSessionAge is dead (its
//     backup refuses to commit once that old) and is removed. The cutoff is
//     min(T0 - Grace, start of the oldest live session).
//  3. Read every backup record and its manifests: the referenced set R.
//     Manifests without a record, older than the cutoff and with no live
//     session, are leftovers of crashed or deleted backups and are removed,
//     as are the drill records (drills/BACKUP/ID) of backups without a record.
//  4. Every chunk not in R and older than the cutoff moves to the trash (copy,
//     then delete). Chunks newer than the cutoff may belong to a running
//     backup and are left alone. Then save gc/trashed: every move of this run
//     is complete before its ModTime.
//  5. Read the records again: R2. Every trashed chunk in R2 (committed while
//     this run went on) is put back in chunks/ (if not there) and its trash
//     copy removed. Every other trashed chunk is purged for good if it was
//     moved by an earlier run (its ModTime is not after E) and E is before
//     the cutoff (no backup still live now started before that move ended).
//
// Backups never delete from the trash: a backup that needs a trashed chunk
// copies it back into chunks/ and leaves the trash copy for gc.
//
// Why a running backup B never loses a chunk X it references:
//   - If B uploaded X, X's ModTime is after B's marker, so after the cutoff of
//     any run that saw B live; runs that did not see B live ran before B
//     started (X did not exist) or after B committed (X is in R).
//   - If B reused X (found it stored, or took it from its base manifest) and a
//     run G trashed X before B committed, G deleted chunks/X after B's marker:
//     B found X stored after writing its marker, or X was referenced by B's
//     base, which was still committed when B loaded it after its marker. G
//     saved gc/trashed after that delete, so E ≥ that save is after B's
//     marker, and no run that sees B live purges X (its cutoff is at most B's
//     marker). When B commits it copies back every chunk it references that
//     sits in the trash; a run that trashes X after that read its R2 after
//     B's record was written, so it puts X back itself.
//   - If B found X only in the trash, it copies X back before using it; if X
//     was purged meanwhile, B uploads X again.
//   - A backup that copies X back while G moves X to the trash (G copied X to
//     the trash, B copied it back, G deleted chunks/X) cannot lose X either:
//     the trash copy stays, because only gc deletes it, and only after
//     putting X back when X is referenced.
//   - Restores and verify read a chunk from the trash when it is not in
//     chunks/, so a backup whose chunk sits in the trash for a while is still
//     whole.
//
// The grace period (default 1 h) adds a margin for clock steps and for stores
// whose listings lag behind writes.

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

// GCOptions tune a gc run.
type GCOptions struct {
	// Grace is how old an unreferenced chunk must be before it is trashed, and a
	// trashed chunk before it is purged (default 1 h; 0 in tests).
	Grace time.Duration
	// DryRun counts what would be trashed and purged without changing anything
	// (it takes no lease).
	DryRun bool
	// LeaseTTL is how long the gc lease lives without a refresh
	// (DefaultGCLeaseTTL when zero); LeaseSettle how long a run waits after
	// saving its lease before it looks for others' (1 s when zero; stores
	// whose listings lag need it).
	LeaseTTL, LeaseSettle time.Duration
	// testHook, if set, runs between steps and inside step 4 after a chunk's
	// trash copy ("trash-copied"), so tests can force interleavings.
	testHook func(step string)
}

// DefaultGCGrace is the grace period when GCOptions.Grace is negative.
const DefaultGCGrace = time.Hour

// GCStats count what a gc run did.
type GCStats struct {
	Referenced      int   `json:"referenced_chunks"`
	Trashed         int   `json:"trashed_chunks"`
	TrashedBytes    int64 `json:"trashed_bytes"`
	Purged          int   `json:"purged_chunks"`
	PurgedBytes     int64 `json:"purged_bytes"`
	Rescued         int   `json:"rescued_chunks"`
	KeptYoung       int   `json:"kept_young_chunks"`
	LiveSessions    int   `json:"live_sessions"`
	DeadSessions    int   `json:"dead_sessions"`
	OrphanManifests int   `json:"orphan_manifests"`
	// OrphanDrills counts drill records of backups that no longer exist.
	OrphanDrills int `json:"orphan_drills,omitempty"`
}

// GC collects chunks no backup references; see the comment at the top of gc.go.
func (r *Repository) GC(ctx context.Context, o GCOptions) (GCStats, error) {
	var st GCStats
	hook := func(step string) {
		if o.testHook != nil {
			o.testHook(step)
		}
	}
	grace := o.Grace
	if grace < 0 {
		grace = DefaultGCGrace
	}
	// 0. the lease, and when the last run finished moving chunks to the trash
	leaseOK := func() error { return nil }
	if !o.DryRun {
		ttl, settle := o.LeaseTTL, o.LeaseSettle
		if ttl <= 0 {
			ttl = DefaultGCLeaseTTL
		}
		if settle <= 0 {
			settle = time.Second
		}
		l, err := r.acquireGCLease(ctx, ttl, settle)
		if err != nil {
			return st, fmt.Errorf("gc: %w", err)
		}
		defer l.release(ctx)
		leaseOK = l.check
	}
	lastTrashed, err := r.listedModTime(ctx, "gc/trashed")
	if err != nil && !backend.IsNotFound(err) {
		return st, fmt.Errorf("gc: %w", err)
	}
	// 1. the store's now
	if err := r.be.Save(ctx, "gc/last", []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	t0, err := r.listedModTime(ctx, "gc/last")
	if err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	// 2. sessions and the cutoff
	cutoff := t0.Add(-grace)
	live := map[string]bool{}
	var dead []string
	err = r.be.List(ctx, "sessions/", func(in backend.Info) error {
		id := strings.TrimPrefix(in.Name, "sessions/")
		if t0.Sub(in.ModTime) > r.opts.MaxSessionAge {
			dead = append(dead, in.Name)
			return nil
		}
		live[id] = true
		if in.ModTime.Before(cutoff) {
			cutoff = in.ModTime
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("gc: list sessions: %w", err)
	}
	st.LiveSessions, st.DeadSessions = len(live), len(dead)
	if err := leaseOK(); err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	if !o.DryRun {
		for _, n := range dead {
			r.log.WarnContext(ctx, "gc: removing a dead backup session", "marker", n)
			if err := r.be.Delete(ctx, n); err != nil && !backend.IsNotFound(err) {
				return st, fmt.Errorf("gc: %w", err)
			}
		}
	}
	hook("sessions")
	// 3. referenced set, orphan manifests
	refs, records, err := r.referenced(ctx)
	if err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	st.Referenced = len(refs)
	orphans := map[string]bool{}
	err = r.be.List(ctx, "manifests/", func(in backend.Info) error {
		backupID, _, _ := strings.Cut(strings.TrimPrefix(in.Name, "manifests/"), "/")
		if !records[backupID] && !live[backupID] && in.ModTime.Before(cutoff) {
			orphans[in.Name] = true
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("gc: list manifests: %w", err)
	}
	st.OrphanManifests = len(orphans)
	// Drill records of a deleted backup (DeleteBackup removes them; this
	// catches a delete that stopped between the record and its drills).
	err = r.be.List(ctx, "drills/", func(in backend.Info) error {
		backupID, _, _ := strings.Cut(strings.TrimPrefix(in.Name, "drills/"), "/")
		if !records[backupID] && !live[backupID] && in.ModTime.Before(cutoff) {
			orphans[in.Name] = true
			st.OrphanDrills++
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("gc: list drills: %w", err)
	}
	if err := leaseOK(); err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	if !o.DryRun {
		for n := range orphans {
			if err := r.be.Delete(ctx, n); err != nil && !backend.IsNotFound(err) {
				return st, fmt.Errorf("gc: remove orphan manifest object %s: %w", n, err)
			}
		}
	}
	hook("mark")
	// 4. trash unreferenced old chunks
	var toTrash []backend.Info
	err = r.be.List(ctx, "chunks/", func(in backend.Info) error {
		id, ok := chunkFromName(in.Name)
		if !ok {
			return nil
		}
		if _, ok := refs[id]; ok {
			return nil
		}
		if !in.ModTime.Before(cutoff) {
			st.KeptYoung++
			return nil
		}
		toTrash = append(toTrash, in)
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("gc: list chunks: %w", err)
	}
	for _, in := range toTrash {
		id, _ := chunkFromName(in.Name)
		st.Trashed++
		st.TrashedBytes += in.Size
		if o.DryRun {
			continue
		}
		if err := leaseOK(); err != nil {
			return st, fmt.Errorf("gc: %w", err)
		}
		if err := backend.Copy(ctx, r.be, in.Name, trashName(id)); err != nil {
			if backend.IsNotFound(err) {
				continue
			}
			return st, fmt.Errorf("gc: move %s to trash: %w", id, err)
		}
		hook("trash-copied")
		if err := r.be.Delete(ctx, in.Name); err != nil && !backend.IsNotFound(err) {
			return st, fmt.Errorf("gc: move %s to trash: %w", id, err)
		}
	}
	if !o.DryRun {
		if err := r.be.Save(ctx, "gc/trashed", []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
			return st, fmt.Errorf("gc: %w", err)
		}
	}
	hook("trash")
	// 5. rescue what got referenced meanwhile, purge the rest of the old trash
	refs2, _, err := r.referenced(ctx)
	if err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	var trash []backend.Info
	err = r.be.List(ctx, "trash/", func(in backend.Info) error {
		trash = append(trash, in)
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("gc: list trash: %w", err)
	}
	for _, in := range trash {
		id, ok := chunkFromName(in.Name)
		if !ok {
			continue
		}
		if _, ok := refs2[id]; ok {
			st.Rescued++
			if o.DryRun {
				continue
			}
			if err := leaseOK(); err != nil {
				return st, fmt.Errorf("gc: %w", err)
			}
			if err := r.restoreFromTrash(ctx, id, true); err != nil {
				return st, fmt.Errorf("gc: %w", err)
			}
			continue
		}
		// Moved by an earlier run that finished before any live backup began.
		if in.ModTime.After(lastTrashed) || !lastTrashed.Before(cutoff) {
			continue
		}
		st.Purged++
		st.PurgedBytes += in.Size
		if !o.DryRun {
			if err := leaseOK(); err != nil {
				return st, fmt.Errorf("gc: %w", err)
			}
			if err := r.be.Delete(ctx, in.Name); err != nil && !backend.IsNotFound(err) {
				return st, fmt.Errorf("gc: purge %s: %w", id, err)
			}
		}
	}
	hook("purge")
	return st, nil
}

// referenced returns the set of chunk ids that committed backups reference,
// and the set of backup ids with records. A record or manifest that cannot
// be read stops gc: collecting with an incomplete set would delete live data.
func (r *Repository) referenced(ctx context.Context) (map[ChunkID]struct{}, map[string]bool, error) {
	backups, err := r.ListBackups(ctx, Filter{})
	if err != nil {
		return nil, nil, err
	}
	refs := map[ChunkID]struct{}{}
	records := map[string]bool{}
	for _, b := range backups {
		records[b.ID] = true
		for _, d := range b.Disks {
			m, err := r.LoadManifest(ctx, d.ID)
			if err != nil {
				return nil, nil, fmt.Errorf("backup %s: %w", b.ID, err)
			}
			err = r.ForEachChunk(ctx, m, func(_ int64, id ChunkID) error {
				if !id.IsHole() {
					refs[id] = struct{}{}
				}
				return nil
			})
			if err != nil {
				return nil, nil, fmt.Errorf("backup %s: %w", b.ID, err)
			}
		}
	}
	return refs, records, nil
}

// listedModTime returns an object's ModTime as a listing reports it. gc
// compares it with other listed ModTimes, and a store may report them at a
// finer resolution in listings than in a HEAD answer (radosgw: milliseconds
// against whole seconds), which would make a time taken by Stat look earlier
// than objects saved after it.
func (r *Repository) listedModTime(ctx context.Context, name string) (time.Time, error) {
	var t time.Time
	found := false
	err := r.be.List(ctx, name, func(in backend.Info) error {
		if in.Name == name {
			t, found = in.ModTime, true
		}
		return nil
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("list %s: %w", name, err)
	}
	if !found {
		return time.Time{}, fmt.Errorf("list %s: %w", name, backend.ErrNotFound)
	}
	return t, nil
}
