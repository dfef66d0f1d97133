package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"

	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/workflows"
)

// BackupView is a backup as the API shows it: its record, with the project
// that owns it.
type BackupView struct {
	ID          string            `json:"id"`
	Repository  string            `json:"repository"`
	ProjectID   string            `json:"project_id"`
	Workload    string            `json:"workload,omitempty"`
	Created     time.Time         `json:"created_at"`
	Completed   time.Time         `json:"completed_at"`
	Expires     *time.Time        `json:"expires_at,omitempty"`
	Protected   bool              `json:"protected"`
	Consistency string            `json:"consistency,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Tags        []string          `json:"tags,omitempty"`
	Servers     []string          `json:"servers,omitempty"`
	Disks       []BackupDiskView  `json:"disks"`
	BytesStored int64             `json:"bytes_stored"`
}

// BackupDiskView is one disk of a backup.
type BackupDiskView struct {
	// ID is the disk's id in the file routes: VM~DISK.
	ID   string `json:"id"`
	VM   string `json:"vm"`
	Disk string `json:"disk"`
	Size int64  `json:"size"`
}

// capturedSource is the part of a workload backup's source the API reads.
type capturedSource struct {
	ProjectID string `json:"project_id"`
	Servers   []struct {
		Name string `json:"name"`
	} `json:"servers"`
}

// BackupProject is the project that owns a backup: the project its
// servers were captured in (the source's project_id, which discovery
// wrote), else its `project` label. "" (a disk-image backup) is nobody's:
// only an admin sees it.
func BackupProject(b *repo.Backup) string {
	var src capturedSource
	if len(b.Source) > 0 && json.Unmarshal(b.Source, &src) == nil && src.ProjectID != "" {
		return src.ProjectID
	}
	return b.Labels["project"]
}

func backupView(repoID string, b *repo.Backup) BackupView {
	v := BackupView{ID: b.ID, Repository: repoID, ProjectID: BackupProject(b), Workload: b.Labels["workload"],
		Created: b.Created, Completed: b.Completed, Expires: b.Expires, Protected: b.Protected,
		Consistency: b.Consistency, Labels: b.Labels, Tags: b.Tags, Disks: []BackupDiskView{}, BytesStored: b.Stats.BytesStored}
	var src capturedSource
	if len(b.Source) > 0 && json.Unmarshal(b.Source, &src) == nil {
		for _, s := range src.Servers {
			v.Servers = append(v.Servers, s.Name)
		}
	}
	for _, d := range b.Disks {
		v.Disks = append(v.Disks, BackupDiskView{ID: diskAPIID(d), VM: d.VM, Disk: d.Disk, Size: d.Size})
	}
	return v
}

// repoID is the request's repository (query or body), else the default.
func (s *Server) repoID(given string) (string, error) {
	if given != "" {
		return given, nil
	}
	if s.cfg.DefaultRepository == "" {
		return "", errorf(http.StatusBadRequest, "No repository given and no default repository configured.")
	}
	return s.cfg.DefaultRepository, nil
}

func (s *Server) openRepo(r *http.Request, given string) (string, *repo.Repository, error) {
	id, err := s.repoID(given)
	if err != nil {
		return "", nil, err
	}
	rp, err := s.cfg.Repos.Open(r.Context(), id)
	if errors.Is(err, ErrUnknownRepository) {
		return "", nil, errorf(http.StatusNotFound, "Repository %s could not be found.", id)
	}
	if err != nil {
		return "", nil, fmt.Errorf("open repository %s: %w", id, err)
	}
	return id, rp, nil
}

// page reads limit (1..1000, default 100) and marker.
func page(r *http.Request) (int, string, error) {
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return 0, "", errorf(http.StatusBadRequest, "Invalid limit %q: want an integer from 1 to 1000.", v)
		}
		limit = n
	}
	return limit, q.Get("marker"), nil
}

// Link is a pagination link (rel "next").
type Link struct {
	Rel  string `json:"rel"`
	Href string `json:"href"`
}

// nextLink is the link to the page after marker, keeping the request's
// other parameters.
func nextLink(r *http.Request, marker string) []Link {
	q := r.URL.Query()
	q.Set("marker", marker)
	return []Link{{Rel: "next", Href: (&url.URL{Path: r.URL.Path, RawQuery: q.Encode()}).String()}}
}

// listBackups is GET /v1/backups: the backups of the token's project (or
// of project_id, with backup:list there), newest first, limit/marker.
func (s *Server) listBackups(w http.ResponseWriter, r *http.Request, id *Identity) error {
	limit, marker, err := page(r)
	if err != nil {
		return err
	}
	project := id.ProjectID
	if p := r.URL.Query().Get("project_id"); p != "" {
		project = p
	}
	if err := s.require(r.Context(), id, ActionBackupList, project, nil); err != nil {
		return err
	}
	repoID, rp, err := s.openRepo(r, r.URL.Query().Get("repository"))
	if err != nil {
		return err
	}
	all, err := rp.ListBackups(r.Context(), repo.Filter{})
	if err != nil {
		return fmt.Errorf("list backups of repository %s: %w", repoID, err)
	}
	var mine []*repo.Backup
	for _, b := range all {
		if BackupProject(b) == project {
			mine = append(mine, b)
		}
	}
	sort.SliceStable(mine, func(i, j int) bool {
		if !mine[i].Created.Equal(mine[j].Created) {
			return mine[i].Created.After(mine[j].Created)
		}
		return mine[i].ID > mine[j].ID
	})
	if marker != "" {
		at := -1
		for i, b := range mine {
			if b.ID == marker {
				at = i
			}
		}
		if at < 0 {
			return errorf(http.StatusBadRequest, "Marker %s could not be found.", marker)
		}
		mine = mine[at+1:]
	}
	out := struct {
		Backups []BackupView `json:"backups"`
		Links   []Link       `json:"backups_links,omitempty"`
	}{Backups: []BackupView{}}
	for i, b := range mine {
		if i == limit {
			out.Links = nextLink(r, mine[i-1].ID)
			break
		}
		out.Backups = append(out.Backups, backupView(repoID, b))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// loadBackup loads a backup the caller may act on with action: 404 when
// it does not exist or is not in a project where the caller has a role,
// 403 when the policy refuses.
func (s *Server) loadBackup(r *http.Request, id *Identity, repoGiven, backupID, action string) (string, *repo.Backup, error) {
	notFound := errorf(http.StatusNotFound, "Backup %s could not be found.", backupID)
	if !repo.ValidName(backupID) {
		return "", nil, notFound
	}
	repoID, rp, err := s.openRepo(r, repoGiven)
	if err != nil {
		return "", nil, err
	}
	b, err := rp.LoadBackup(r.Context(), backupID)
	if errors.Is(err, backend.ErrNotFound) {
		return "", nil, notFound
	}
	if err != nil {
		return "", nil, fmt.Errorf("load backup %s: %w", backupID, err)
	}
	if err := s.require(r.Context(), id, action, BackupProject(b), notFound); err != nil {
		return "", nil, err
	}
	return repoID, b, nil
}

// showBackup is GET /v1/backups/{id}.
func (s *Server) showBackup(w http.ResponseWriter, r *http.Request, id *Identity) error {
	repoID, b, err := s.loadBackup(r, id, r.URL.Query().Get("repository"), r.PathValue("id"), ActionBackupShow)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"backup": backupView(repoID, b)})
	return nil
}

// backupLocks serializes the API's own changes of one backup's record
// (delete, protect, unprotect), so that a protect racing a delete in this
// process cannot write back the record of a backup just deleted.
type backupLocks struct {
	mu    sync.Mutex
	locks map[string]*backupLock
}

type backupLock struct {
	sync.Mutex
	users int
}

func (l *backupLocks) lock(key string) func() {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[string]*backupLock{}
	}
	bl := l.locks[key]
	if bl == nil {
		bl = &backupLock{}
		l.locks[key] = bl
	}
	bl.users++
	l.mu.Unlock()
	bl.Lock()
	return func() {
		bl.Unlock()
		l.mu.Lock()
		if bl.users--; bl.users == 0 {
			delete(l.locks, key)
		}
		l.mu.Unlock()
	}
}

// deleteBackup is DELETE /v1/backups/{id}: the repository's delete, as
// `raksha backup delete` does it (the record first, then its manifests
// and drill records; chunks are left to gc, so every other backup stays
// whole). A protected backup is refused with 409.
func (s *Server) deleteBackup(w http.ResponseWriter, r *http.Request, id *Identity) error {
	repoGiven, backupID := r.URL.Query().Get("repository"), r.PathValue("id")
	if _, _, err := s.loadBackup(r, id, repoGiven, backupID, ActionBackupDelete); err != nil {
		return err
	}
	repoID, rp, err := s.openRepo(r, repoGiven)
	if err != nil {
		return err
	}
	defer s.backupLocks.lock(repoID + "/" + backupID)()
	if wid, err := s.runningReader(r.Context(), repoID, backupID); err != nil {
		return err
	} else if wid != "" {
		return errorf(http.StatusConflict, "Backup %s is being restored or cloned by %s; delete it once that run has ended.", backupID, runAPIID(wid))
	}
	err = rp.DeleteBackup(r.Context(), backupID)
	switch {
	case errors.Is(err, repo.ErrProtected):
		return errorf(http.StatusConflict, "Backup %s is protected; unprotect it first.", backupID)
	case errors.Is(err, repo.ErrNoBackup):
		return errorf(http.StatusNotFound, "Backup %s could not be found.", backupID)
	case err != nil:
		return fmt.Errorf("delete backup %s of repository %s: %w", backupID, repoID, err)
	}
	s.log.Info("backup deleted", "backup_id", backupID, "repository", repoID, "user_id", id.UserID, "project_id", id.ProjectID)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// protectBackup is POST /v1/backups/{id}/protect (protect true) and
// .../unprotect: a protected backup is never deleted, by a caller or by
// prune, until it is unprotected.
func (s *Server) protectBackup(protect bool) apiFunc {
	action := ActionBackupUnprotect
	if protect {
		action = ActionBackupProtect
	}
	return func(w http.ResponseWriter, r *http.Request, id *Identity) error {
		repoGiven, backupID := r.URL.Query().Get("repository"), r.PathValue("id")
		if _, _, err := s.loadBackup(r, id, repoGiven, backupID, action); err != nil {
			return err
		}
		repoID, rp, err := s.openRepo(r, repoGiven)
		if err != nil {
			return err
		}
		defer s.backupLocks.lock(repoID + "/" + backupID)()
		b, err := rp.UpdateBackup(r.Context(), backupID, func(b *repo.Backup) error { b.Protected = protect; return nil })
		if errors.Is(err, repo.ErrNoBackup) {
			return errorf(http.StatusNotFound, "Backup %s could not be found.", backupID)
		}
		if err != nil {
			return fmt.Errorf("%s backup %s of repository %s: %w", map[bool]string{true: "protect", false: "unprotect"}[protect], backupID, repoID, err)
		}
		writeJSON(w, http.StatusOK, map[string]any{"backup": backupView(repoID, b)})
		return nil
	}
}

// runningReader is the workflow id of a running restore or clone that
// reads the backup (a restore's id names its backup; a clone the API
// started says it in its memo), or "". A clone started on Temporal by an
// operator without the API's memo is not seen.
//
// The runs this server started in the last readerGrace are asked for
// first, each by its id (DescribeWorkflowExecution reads the run's own
// state, so it knows a run the moment it started); the visibility store's
// list, which may not show a run yet, finds the rest.
func (s *Server) runningReader(ctx context.Context, repoID, backupID string) (string, error) {
	for _, wid := range s.readers.recent(repoID+"/"+backupID, time.Now()) {
		d, err := s.cfg.Temporal.DescribeWorkflowExecution(ctx, wid, "")
		var notFound *serviceerror.NotFound
		switch {
		case errors.As(err, &notFound):
			continue
		case err != nil:
			return "", fmt.Errorf("delete backup %s: describe %s: %w", backupID, wid, err)
		case d.GetWorkflowExecutionInfo().GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING:
			return wid, nil
		}
	}
	var next []byte
	for {
		resp, err := s.cfg.Temporal.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
			Query:    "RakshaOperation IN ('restore', 'clone') AND ExecutionStatus = 'Running'",
			PageSize: 1000, NextPageToken: next})
		if err != nil {
			return "", fmt.Errorf("delete backup %s: list running restores and clones: %w", backupID, err)
		}
		for _, e := range resp.GetExecutions() {
			ri := infoOfExecution(e)
			if strings.HasPrefix(ri.WorkflowID, workflows.RestoreWorkflowID(backupID, "")) ||
				ri.Memo.BackupID == backupID && (ri.Memo.Repository == "" || ri.Memo.Repository == repoID) {
				return ri.WorkflowID, nil
			}
		}
		if next = resp.GetNextPageToken(); len(next) == 0 {
			return "", nil
		}
	}
}
