package api

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"

	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"

	"github.com/raksha-backup/raksha/workflows"
)

// runKind is what tells the API's restores and clones apart. Both are
// Restore workflows (a clone is a restore into another project), listed
// from Temporal's visibility store by operation and project, shown with
// their progress query and cancelled the same way.
type runKind struct {
	// op is the RakshaOperation search attribute, the workflow id's
	// prefix ("op/") and the JSON key of one run.
	op string
	// noun names a run in messages; plural is the list's JSON key.
	noun, plural string
	// list, show and cancel are the policy's actions.
	list, show, cancel string
	// view renders a run with its progress (nil: none) and, when not
	// empty, a status that replaces the workflow's.
	view func(ri runInfo, p *workflows.RestoreProgress, status string) any
}

// set gives a view its progress (nil: none) and, when not empty, a status
// that replaces the workflow's.
func (v *RestoreView) set(p *workflows.RestoreProgress, status string) {
	v.Progress = p
	if status != "" {
		v.Status = status
	}
}

func restoreKind() runKind {
	return runKind{op: "restore", noun: "Restore", plural: "restores",
		list: ActionRestoreList, show: ActionRestoreShow, cancel: ActionRestoreCancel,
		view: func(ri runInfo, p *workflows.RestoreProgress, status string) any {
			v := restoreView(ri)
			v.set(p, status)
			return v
		}}
}

func cloneKind() runKind {
	return runKind{op: "clone", noun: "Clone", plural: "clones",
		list: ActionCloneList, show: ActionCloneShow, cancel: ActionCloneCancel,
		view: func(ri runInfo, p *workflows.RestoreProgress, status string) any {
			v := cloneView(ri)
			v.set(p, status)
			return v
		}}
}

// listRuns is GET /v1/{plural}: the runs of a kind into the token's project
// (or project_id, with the list action there), newest first; marker is the
// opaque token of the next page.
func (s *Server) listRuns(k runKind, w http.ResponseWriter, r *http.Request, id *Identity) error {
	limit, marker, err := page(r)
	if err != nil {
		return err
	}
	project := id.ProjectID
	if p := r.URL.Query().Get("project_id"); p != "" {
		project = p
	}
	if !projectIDRE.MatchString(project) {
		return errorf(http.StatusBadRequest, "Invalid project_id %q.", project)
	}
	if err := s.require(r.Context(), id, k.list, project, nil); err != nil {
		return err
	}
	var next []byte
	if marker != "" {
		if next, err = base64.RawURLEncoding.DecodeString(marker); err != nil || len(next) == 0 {
			return errorf(http.StatusBadRequest, "Marker %s could not be found.", marker)
		}
	}
	resp, err := s.cfg.Temporal.ListWorkflow(r.Context(), &workflowservice.ListWorkflowExecutionsRequest{
		Query:    fmt.Sprintf("RakshaOperation = '%s' AND RakshaProject = '%s'", k.op, project),
		PageSize: int32(limit), NextPageToken: next})
	if err != nil {
		var inv *serviceerror.InvalidArgument
		if errors.As(err, &inv) && marker != "" {
			return errorf(http.StatusBadRequest, "Marker %s could not be found.", marker)
		}
		return fmt.Errorf("list %s of project %s: %w", k.plural, project, err)
	}
	views := []any{}
	for _, e := range resp.GetExecutions() {
		views = append(views, k.view(infoOfExecution(e), nil, ""))
	}
	out := map[string]any{k.plural: views}
	if t := resp.GetNextPageToken(); len(t) > 0 {
		out[k.plural+"_links"] = nextLink(r, base64.RawURLEncoding.EncodeToString(t))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// runOf finds the run of the request's {id} with the action's rights on it;
// a run of another kind, or in a project where the caller has no role, is
// not found.
func (s *Server) runOf(k runKind, r *http.Request, id *Identity, action string) (runInfo, string, error) {
	notFound := errorf(http.StatusNotFound, "%s %s could not be found.", k.noun, r.PathValue("id"))
	wid, ok := runWorkflowID(r.PathValue("id"), k.op+"/")
	if !ok {
		return runInfo{}, "", notFound
	}
	ri, err := s.describeRun(r.Context(), id, wid, k.op, action, notFound)
	return ri, wid, err
}

// showRun is GET /v1/{plural}/{id}, with the workflow's progress while it
// runs.
func (s *Server) showRun(k runKind, w http.ResponseWriter, r *http.Request, id *Identity) error {
	ri, wid, err := s.runOf(k, r, id, k.show)
	if err != nil {
		return err
	}
	var progress *workflows.RestoreProgress
	if ri.Running {
		var p workflows.RestoreProgress
		if s.query(r.Context(), wid, &p) {
			progress = &p
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{k.op: k.view(ri, progress, "")})
	return nil
}

// cancelRunRequest is POST /v1/{plural}/{id}/cancel: the workflow is
// cancelled and deletes what it made.
func (s *Server) cancelRunRequest(k runKind, w http.ResponseWriter, r *http.Request, id *Identity) error {
	ri, _, err := s.runOf(k, r, id, k.cancel)
	if err != nil {
		return err
	}
	if err := s.cancelRun(r.Context(), ri, k.noun+" "+r.PathValue("id")); err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, map[string]any{k.op: k.view(ri, nil, "CANCEL_REQUESTED")})
	return nil
}
