package repo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

// ErrSessionExpired means a backup ran longer than Options.MaxSessionAge or
// its session marker vanished; gc may have treated its new chunks as garbage,
// so it must not commit. Run the backup again.
var ErrSessionExpired = errors.New("backup session expired")

// BackupSpec describes a backup to make.
type BackupSpec struct {
	// ID is the backup id; empty generates a sortable one (20261123-142501-a1b2c3).
	ID          string
	Labels      map[string]string
	Tags        []string
	Expires     *time.Time
	Source      json.RawMessage
	Consistency string
	// FreezeWindows is how long each VM's guest was frozen, WorkloadWindow
	// the workload's first freeze to last thaw (see Backup).
	FreezeWindows  map[string]time.Duration
	WorkloadWindow time.Duration
}

// Session is a backup in progress: disks are added with BackupDisk (from any
// number of goroutines), then Commit writes the record, or Abort removes what
// was written.
type Session struct {
	r       *Repository
	spec    BackupSpec
	id      string
	started time.Time // the session marker's ModTime: the store's clock

	mu        sync.Mutex
	disks     []*DiskManifest
	finished  bool
	aborted   bool // Abort began: Commit is refused even if Abort failed
	inflight  map[ChunkID]struct{}
	testHooks sessionHooks
}

// sessionHooks let tests force interleavings with gc; nil in production.
type sessionHooks struct {
	beforeCommit func()
}

type sessionMarker struct {
	Backup string     `json:"backup"`
	Host   string     `json:"host"`
	PID    int        `json:"pid"`
	Spec   BackupSpec `json:"spec"`
}

// ErrNoSession means JoinBackup found no backup in progress with that id.
var ErrNoSession = errors.New("no backup in progress with this id")

// NewBackupID returns a new sortable backup id for time t.
func NewBackupID(t time.Time) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return t.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b)
}

// StartBackup opens a backup session. It writes a session marker first, so gc
// knows that chunks written or reused from now on may soon be referenced.
func (r *Repository) StartBackup(ctx context.Context, spec BackupSpec) (*Session, error) {
	id := spec.ID
	if id == "" {
		id = NewBackupID(time.Now())
	}
	if !ValidName(id) {
		return nil, fmt.Errorf("start backup: invalid backup id %q", id)
	}
	for k := range spec.Labels {
		if k == "" {
			return nil, fmt.Errorf("start backup: empty label key")
		}
	}
	if _, err := r.be.Stat(ctx, backupName(id)); err == nil {
		return nil, fmt.Errorf("start backup: backup %s already exists", id)
	} else if !backend.IsNotFound(err) {
		return nil, fmt.Errorf("start backup %s: %w", id, err)
	}
	host, _ := os.Hostname()
	spec.ID = id
	m := sessionMarker{Backup: id, Host: host, PID: os.Getpid(), Spec: spec}
	if err := r.saveJSON(ctx, "sessions/"+id, "session:"+id, m); err != nil {
		// The store may have taken the marker though the answer was lost:
		// no session is returned, so nobody else would remove it.
		r.dropMarker(ctx, id)
		return nil, fmt.Errorf("start backup %s: %w", id, err)
	}
	in, err := r.be.Stat(ctx, "sessions/"+id)
	if err != nil {
		r.dropMarker(ctx, id)
		return nil, fmt.Errorf("start backup %s: %w", id, err)
	}
	return &Session{r: r, spec: spec, id: id, started: in.ModTime, inflight: map[ChunkID]struct{}{}}, nil
}

// dropMarker removes the session marker of a backup that failed to start,
// best effort (gc removes a marker older than MaxSessionAge anyway).
func (r *Repository) dropMarker(ctx context.Context, id string) {
	if err := r.be.Delete(context.WithoutCancel(ctx), "sessions/"+id); err != nil && !backend.IsNotFound(err) {
		r.log.WarnContext(ctx, "start backup: could not remove the session marker of the failed start", "backup", id, "err", err)
	}
}

// JoinBackup opens a backup in progress that another process (or an earlier
// attempt) started, with the disks it has completed so far. Workers that copy
// disks of one backup, and the one that commits it, each join the session.
func (r *Repository) JoinBackup(ctx context.Context, id string) (*Session, error) {
	if !ValidName(id) {
		return nil, fmt.Errorf("join backup: invalid backup id %q", id)
	}
	var m sessionMarker
	if err := r.loadJSON(ctx, "sessions/"+id, "session:"+id, &m); err != nil {
		if backend.IsNotFound(err) {
			if _, serr := r.be.Stat(ctx, backupName(id)); serr == nil {
				return nil, fmt.Errorf("join backup %s: %w (it is already committed)", id, ErrNoSession)
			}
			return nil, fmt.Errorf("join backup %s: %w", id, ErrNoSession)
		}
		return nil, fmt.Errorf("join backup %s: %w", id, err)
	}
	in, err := r.be.Stat(ctx, "sessions/"+id)
	if err != nil {
		return nil, fmt.Errorf("join backup %s: %w", id, err)
	}
	s := &Session{r: r, spec: m.Spec, id: id, started: in.ModTime, inflight: map[ChunkID]struct{}{}}
	var headers []string
	err = r.be.List(ctx, "manifests/"+id+"/", func(in backend.Info) error {
		if strings.HasSuffix(in.Name, "/header") {
			headers = append(headers, strings.TrimSuffix(strings.TrimPrefix(in.Name, "manifests/"), "/header"))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("join backup %s: %w", id, err)
	}
	sort.Strings(headers)
	for _, d := range headers {
		dm, err := r.LoadManifest(ctx, d)
		if err != nil {
			return nil, fmt.Errorf("join backup %s: %w", id, err)
		}
		s.disks = append(s.disks, dm)
	}
	return s, nil
}

// SetConsistency sets the consistency the record will state ("app",
// "crash"), known only after the guests were thawed.
func (s *Session) SetConsistency(c string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.spec.Consistency = c
}

// SetFreezeWindows sets the guests' freeze windows the record will state,
// known only after the guests were thawed.
func (s *Session) SetFreezeWindows(w map[string]time.Duration, workload time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.spec.FreezeWindows, s.spec.WorkloadWindow = w, workload
}

// Disks returns the disk manifests completed in this session so far.
func (s *Session) Disks() []*DiskManifest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*DiskManifest(nil), s.disks...)
}

// ID returns the id the backup will have once committed.
func (s *Session) ID() string { return s.id }

// Commit writes the backup record after every disk manifest, then makes sure
// no chunk it references sits in the trash (a gc that ran meanwhile may have
// moved reused chunks there), then removes the session marker.
func (s *Session) Commit(ctx context.Context) (*Backup, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished || s.aborted {
		return nil, fmt.Errorf("commit %s: session already finished or aborted", s.id)
	}
	if len(s.disks) == 0 {
		return nil, fmt.Errorf("commit %s: no disk was backed up", s.id)
	}
	if s.testHooks.beforeCommit != nil {
		s.testHooks.beforeCommit()
	}
	r := s.r
	flushStart := time.Now()
	if err := backend.Flush(ctx, r.be); err != nil {
		return nil, fmt.Errorf("commit %s: %w", s.id, err)
	}
	r.log.DebugContext(ctx, "commit: chunks and manifests flushed", "backup", s.id, "took", time.Since(flushStart).Round(10*time.Microsecond))
	in, err := r.be.Stat(ctx, "sessions/"+s.id)
	if backend.IsNotFound(err) || (err == nil && time.Since(in.ModTime) > r.opts.MaxSessionAge) {
		return nil, fmt.Errorf("commit %s: %w (marker gone or older than %v)", s.id, ErrSessionExpired, r.opts.MaxSessionAge)
	}
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", s.id, err)
	}
	b := &Backup{Schema: SchemaVersion, ID: s.id, Created: s.started.UTC(), Completed: time.Now().UTC(),
		Expires: s.spec.Expires, Tags: s.spec.Tags, Labels: s.spec.Labels, Source: s.spec.Source,
		Consistency: s.spec.Consistency, FreezeWindows: s.spec.FreezeWindows, WorkloadWindow: s.spec.WorkloadWindow}
	for _, m := range s.disks {
		b.Disks = append(b.Disks, DiskRef{ID: m.ID, VM: m.VM, Disk: m.Disk, Size: m.Size})
		b.Stats.add(m.Stats)
	}
	if err := r.saveJSON(ctx, backupName(s.id), "backup:"+s.id, b); err != nil {
		return nil, fmt.Errorf("commit %s: %w", s.id, err)
	}
	flushStart = time.Now()
	if err := backend.Flush(ctx, r.be); err != nil {
		return nil, fmt.Errorf("commit %s: %w", s.id, err)
	}
	r.log.DebugContext(ctx, "commit: backup record written and flushed", "backup", s.id, "took", time.Since(flushStart).Round(10*time.Microsecond))
	s.finished = true
	if _, err := r.rescueFromTrash(ctx, s.disks); err != nil {
		// gc rescues referenced chunks too; this is a warning, not a failure.
		r.log.WarnContext(ctx, "commit: could not check the trash for chunks of the new backup", "backup", s.id, "err", err)
	}
	if err := r.be.Delete(ctx, "sessions/"+s.id); err != nil && !backend.IsNotFound(err) {
		r.log.WarnContext(ctx, "commit: could not remove the session marker", "backup", s.id, "err", err)
	}
	return b, nil
}

// Abort removes what the session wrote: first a backup record that a Commit
// which reported failure may have left (the store took the record but its
// answer was lost), so the backup is not visible with its manifests gone;
// then the manifests and the marker. Chunks it uploaded stay until gc
// collects them. An Abort that failed may be called again.
func (s *Session) Abort(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return nil
	}
	s.aborted = true
	if err := s.r.be.Delete(ctx, backupName(s.id)); err != nil && !backend.IsNotFound(err) {
		return fmt.Errorf("abort %s: remove the record of the failed commit: %w", s.id, err)
	}
	var errs []error
	err := s.r.be.List(ctx, "manifests/"+s.id+"/", func(in backend.Info) error {
		if err := s.r.be.Delete(ctx, in.Name); err != nil && !backend.IsNotFound(err) {
			errs = append(errs, err)
		}
		return nil
	})
	errs = append(errs, err)
	if err := s.r.be.Delete(ctx, "sessions/"+s.id); err != nil && !backend.IsNotFound(err) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("abort %s: %w", s.id, err)
	}
	s.finished = true
	return nil
}

// rescueFromTrash copies back into chunks/ every chunk of the manifests that
// sits in trash/ (the trash copy stays for gc to remove). It lists the trash once, so it costs one listing when the
// trash is empty.
func (r *Repository) rescueFromTrash(ctx context.Context, ms []*DiskManifest) (int, error) {
	trash := map[ChunkID]struct{}{}
	err := r.be.List(ctx, "trash/", func(in backend.Info) error {
		if id, ok := chunkFromName(in.Name); ok {
			trash[id] = struct{}{}
		}
		return nil
	})
	if err != nil || len(trash) == 0 {
		return 0, err
	}
	n := 0
	for _, m := range ms {
		err := r.ForEachChunk(ctx, m, func(_ int64, id ChunkID) error {
			if _, ok := trash[id]; !ok {
				return nil
			}
			delete(trash, id)
			n++
			return r.restoreFromTrash(ctx, id, false)
		})
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// restoreFromTrash copies a trashed chunk back to chunks/ unless it is
// already there; with removeTrash (gc only, under its lease) it then removes
// the trash copy. A backup never removes from the trash: a gc moving the same
// chunk to the trash at that moment could delete the copy in chunks/ right
// after, and the trash copy is then the one left.
func (r *Repository) restoreFromTrash(ctx context.Context, id ChunkID, removeTrash bool) error {
	if _, err := r.be.Stat(ctx, chunkName(id)); backend.IsNotFound(err) {
		if err := backend.Copy(ctx, r.be, trashName(id), chunkName(id)); err != nil {
			return fmt.Errorf("rescue chunk %s from trash: %w", id, err)
		}
		r.log.InfoContext(ctx, "chunk rescued from trash", "chunk", id.String())
	} else if err != nil {
		return fmt.Errorf("rescue chunk %s from trash: %w", id, err)
	}
	if !removeTrash {
		return nil
	}
	if err := r.be.Delete(ctx, trashName(id)); err != nil && !backend.IsNotFound(err) {
		return fmt.Errorf("remove rescued chunk %s from trash: %w", id, err)
	}
	return nil
}

// haveChunk reports whether chunk id is stored, rescuing it from the trash if
// it is there.
func (r *Repository) haveChunk(ctx context.Context, id ChunkID) (bool, error) {
	_, err := r.be.Stat(ctx, chunkName(id))
	if err == nil {
		return true, nil
	}
	if !backend.IsNotFound(err) {
		return false, err
	}
	if _, err := r.be.Stat(ctx, trashName(id)); err != nil {
		if backend.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	if err := r.restoreFromTrash(ctx, id, false); err != nil {
		if backend.IsNotFound(err) {
			return false, nil // purged meanwhile: upload it again
		}
		return false, err
	}
	return true, nil
}

// loadChunk loads and decodes a chunk, falling back to the trash. With
// rehash it also checks that the content hashes to id (verify does; a restore
// relies on the codec's authentication, which binds the content to id).
func (r *Repository) loadChunk(ctx context.Context, id ChunkID, rehash bool) ([]byte, error) {
	return r.loadChunkInto(ctx, id, rehash, nil)
}

// chunkBuffers are a reader's reusable buffers: the stored object and the
// decompressed chunk. The chunk loadChunkInto returns lives in one of them
// until the next call.
type chunkBuffers struct{ stored, plain []byte }

func (r *Repository) loadChunkInto(ctx context.Context, id ChunkID, rehash bool, bufs *chunkBuffers) ([]byte, error) {
	if bufs == nil {
		bufs = &chunkBuffers{}
	}
	data, err := backend.LoadInto(ctx, r.be, chunkName(id), bufs.stored)
	if backend.IsNotFound(err) {
		var terr error
		data, terr = r.be.Load(ctx, trashName(id))
		if terr == nil {
			err = nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	if cap(data) > cap(bufs.stored) {
		bufs.stored = data[:0]
	}
	plain, decoded, err := r.codec.openInto(data, chunkAAD(id), bufs.plain)
	if decoded && cap(plain) > cap(bufs.plain) {
		bufs.plain = plain[:0]
	}
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	if !rehash {
		return plain, nil
	}
	if got := r.hasher.sum(plain); got != id {
		return nil, fmt.Errorf("chunk %s: %w: content hashes to %s", id, ErrCorrupt, got)
	}
	return plain, nil
}
