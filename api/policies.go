package api

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/policies"
)

// PolicyLimits are the admin's limits on the backup policies tenants
// publish (raksha-api's configuration). Nil in Config: tenants publish
// none.
type PolicyLimits struct {
	// MinInterval is the shortest interval between a policy's runs.
	MinInterval time.Duration `yaml:"min_interval" json:"min_interval"`
	// MaxExpireAfter is the longest a backup of a tenant's policy lives:
	// every tenant policy gives its backups an expiry no later than this.
	MaxExpireAfter time.Duration `yaml:"max_expire_after" json:"max_expire_after"`
	// MaxPerProject bounds a project's policies (0: no limit).
	MaxPerProject int `yaml:"max_per_project" json:"max_per_project"`
}

// Validate refuses limits that leave nothing allowed.
func (l *PolicyLimits) Validate() error {
	if l.MinInterval < time.Minute || l.MaxExpireAfter <= 0 || l.MaxPerProject < 0 {
		return fmt.Errorf("tenant_policies: min_interval of at least 1m and a positive max_expire_after are required, max_per_project not negative")
	}
	return nil
}

// PolicyView is a tenant's backup policy: a Temporal Schedule
// policy/<project id>/<name> whose runs are WorkloadBackup of the
// project's workload, without hooks (never the operator's mark).
type PolicyView struct {
	Name        string     `json:"name"`
	ProjectID   string     `json:"project_id"`
	Workload    string     `json:"workload"`
	Every       string     `json:"every"`
	Offset      string     `json:"offset,omitempty"`
	Consistency string     `json:"consistency"`
	ExpireAfter string     `json:"expire_after"`
	Retention   *Retention `json:"retention,omitempty"`
	Repository  string     `json:"repository"`
	CreatedBy   string     `json:"created_by"`
	// NextRuns are the schedule's next run times (show only).
	NextRuns []time.Time `json:"next_runs,omitempty"`
	Paused   bool        `json:"paused"`
}

// Retention is what prune keeps of a tenant policy's backups after each
// run (before they expire).
type Retention struct {
	Last    int `json:"last,omitempty"`
	Hourly  int `json:"hourly,omitempty"`
	Daily   int `json:"daily,omitempty"`
	Weekly  int `json:"weekly,omitempty"`
	Monthly int `json:"monthly,omitempty"`
	Yearly  int `json:"yearly,omitempty"`
}

const policyMemoKey = "raksha_api_policy"

// policyScheduleID is the schedule of a tenant's policy: the project's id
// keeps two projects' names apart.
func policyScheduleID(project, name string) string {
	return policies.ScheduleID(project + "/" + name)
}

type policyCreateBody struct {
	Policy *struct {
		Name        string     `json:"name"`
		Workload    string     `json:"workload"`
		Every       string     `json:"every"`
		Offset      string     `json:"offset"`
		Consistency string     `json:"consistency"`
		ExpireAfter string     `json:"expire_after"`
		Retention   *Retention `json:"retention"`
		Repository  string     `json:"repository"`
	} `json:"policy"`
}

func (s *Server) policyLimits() (*PolicyLimits, error) {
	if s.cfg.PolicyLimits == nil {
		return nil, errorf(http.StatusForbidden, "Tenant policies are not enabled on this raksha-api.")
	}
	return s.cfg.PolicyLimits, nil
}

// createPolicy is POST /v1/policies: a backup policy of a workload of the
// token's project, every interval, within the admin's limits (minimum
// interval, maximum expiry, policies per project).
func (s *Server) createPolicy(w http.ResponseWriter, r *http.Request, id *Identity) error {
	var body policyCreateBody
	if err := decodeBody(r, &body); err != nil {
		return err
	}
	b := body.Policy
	if b == nil {
		return errorf(http.StatusBadRequest, "Malformed request body: no \"policy\" object.")
	}
	if err := s.require(r.Context(), id, ActionPolicyCreate, id.ProjectID, nil); err != nil {
		return err
	}
	lim, err := s.policyLimits()
	if err != nil {
		return err
	}
	if !repo.ValidName(b.Name) || len(b.Name) > 64 {
		return errorf(http.StatusBadRequest, "Invalid name %q: want 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit.", b.Name)
	}
	if !repo.ValidName(b.Workload) {
		return errorf(http.StatusBadRequest, "Invalid workload %q: want 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit.", b.Workload)
	}
	every, err := policies.ParseDuration(b.Every)
	if err != nil || every <= 0 {
		return errorf(http.StatusBadRequest, "Invalid every %q: want a duration such as 24h.", b.Every)
	}
	if every < lim.MinInterval {
		return errorf(http.StatusBadRequest, "Invalid every %s: the minimum interval is %s.", policies.FormatDuration(every), policies.FormatDuration(lim.MinInterval))
	}
	var offset time.Duration
	if b.Offset != "" {
		if offset, err = policies.ParseDuration(b.Offset); err != nil || offset < 0 || offset >= every {
			return errorf(http.StatusBadRequest, "Invalid offset %q: want a duration from 0 to less than every.", b.Offset)
		}
	}
	if b.ExpireAfter == "" {
		return errorf(http.StatusBadRequest, "No expire_after given: a tenant's policy needs one, at most %s.", policies.FormatDuration(lim.MaxExpireAfter))
	}
	expire, err := policies.ParseDuration(b.ExpireAfter)
	if err != nil || expire <= 0 {
		return errorf(http.StatusBadRequest, "Invalid expire_after %q: want a duration such as 720h.", b.ExpireAfter)
	}
	if expire > lim.MaxExpireAfter {
		return errorf(http.StatusBadRequest, "Invalid expire_after %s: the maximum retention is %s.", policies.FormatDuration(expire), policies.FormatDuration(lim.MaxExpireAfter))
	}
	if b.Consistency == "" {
		b.Consistency = "app"
	}
	if b.Consistency != "app" && b.Consistency != "crash" {
		return errorf(http.StatusBadRequest, "Invalid consistency %q: want app or crash.", b.Consistency)
	}
	ret := Retention{}
	if b.Retention != nil {
		ret = *b.Retention
		for _, n := range []int{ret.Last, ret.Hourly, ret.Daily, ret.Weekly, ret.Monthly, ret.Yearly} {
			if n < 0 || n > 10000 {
				return errorf(http.StatusBadRequest, "Invalid retention: every count from 0 to 10000.")
			}
		}
	}
	repoID, err := s.repoID(b.Repository)
	if err != nil {
		return err
	}
	if _, err := s.cfg.Repos.Open(r.Context(), repoID); errors.Is(err, ErrUnknownRepository) {
		return errorf(http.StatusNotFound, "Repository %s could not be found.", repoID)
	}
	if lim.MaxPerProject > 0 {
		mine, err := s.projectPolicies(r, id.ProjectID)
		if err != nil {
			return err
		}
		if len(mine) >= lim.MaxPerProject {
			return errorf(http.StatusRequestEntityTooLarge, "Quota exceeded for policies: project %s has %d policies, the limit is %d.", id.ProjectID, len(mine), lim.MaxPerProject)
		}
	}
	p := &policies.Policy{Kind: policies.KindBackup, Name: id.ProjectID + "/" + b.Name, Workload: b.Workload,
		Selector:    policies.Selector{Project: id.ProjectID, Metadata: map[string]string{cloud.WorkloadKey: b.Workload}},
		Schedule:    policies.Schedule{Every: every, Offset: offset, CatchupWindow: policies.DefaultCatchupWindow},
		Consistency: policies.Consistency{Mode: b.Consistency},
		Retention: policies.Retention{Last: ret.Last, Hourly: ret.Hourly, Daily: ret.Daily, Weekly: ret.Weekly,
			Monthly: ret.Monthly, Yearly: ret.Yearly, ExpireAfter: expire},
		Repository: repoID}
	view := PolicyView{Name: b.Name, ProjectID: id.ProjectID, Workload: b.Workload, Every: policies.FormatDuration(every),
		Consistency: b.Consistency, ExpireAfter: policies.FormatDuration(expire), Repository: repoID, CreatedBy: id.UserID}
	if offset > 0 {
		view.Offset = policies.FormatDuration(offset)
	}
	if ret != (Retention{}) {
		view.Retention = &ret
	}
	opts := p.ScheduleOptions()
	act, ok := opts.Action.(*client.ScheduleWorkflowAction)
	if !ok {
		return fmt.Errorf("create policy %s: the schedule's action is %T", b.Name, opts.Action)
	}
	// A tenant's request is never the operator's: no hooks, and the
	// workflow would refuse any.
	req := p.BackupRequest()
	req.Operator = false
	act.Args = []any{req}
	act.Memo[memoKey] = apiMemo{StartedBy: id.UserID, Repository: repoID}
	opts.ID = policyScheduleID(id.ProjectID, b.Name)
	opts.Memo[policyMemoKey] = view
	if _, err := s.cfg.Temporal.ScheduleClient().Create(r.Context(), opts); errors.Is(err, temporal.ErrScheduleAlreadyRunning) {
		return errorf(http.StatusConflict, "A policy named %s exists already.", b.Name)
	} else if err != nil {
		return fmt.Errorf("create policy %s of project %s: %w", b.Name, id.ProjectID, err)
	}
	s.log.Info("policy created", "schedule_id", opts.ID, "user_id", id.UserID, "project_id", id.ProjectID)
	writeJSON(w, http.StatusCreated, map[string]any{"policy": view})
	return nil
}

func policyViewOf(m *commonpb.Memo) (PolicyView, bool) {
	p := m.GetFields()[policyMemoKey]
	if p == nil {
		return PolicyView{}, false
	}
	var v PolicyView
	if converter.GetDefaultDataConverter().FromPayload(p, &v) != nil {
		return PolicyView{}, false
	}
	return v, true
}

// projectPolicies lists the project's policies from Temporal's schedules
// (its visibility, so a policy made an instant ago may be missing),
// sorted by name.
func (s *Server) projectPolicies(r *http.Request, project string) ([]PolicyView, error) {
	prefix := policyScheduleID(project, "")
	it, err := s.cfg.Temporal.ScheduleClient().List(r.Context(), client.ScheduleListOptions{PageSize: 1000})
	if err != nil {
		return nil, fmt.Errorf("list policies of project %s: %w", project, err)
	}
	out := []PolicyView{}
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			return nil, fmt.Errorf("list policies of project %s: %w", project, err)
		}
		if !strings.HasPrefix(e.ID, prefix) {
			continue
		}
		if v, ok := policyViewOf(e.Memo); ok && v.ProjectID == project {
			v.Paused = e.Paused
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// listPolicies is GET /v1/policies: the policies of the token's project
// (or of project_id, with policy:list there).
func (s *Server) listPolicies(w http.ResponseWriter, r *http.Request, id *Identity) error {
	project := id.ProjectID
	if p := r.URL.Query().Get("project_id"); p != "" {
		if !projectIDRE.MatchString(p) {
			return errorf(http.StatusBadRequest, "Invalid project_id %q.", p)
		}
		project = p
	}
	if err := s.require(r.Context(), id, ActionPolicyList, project, nil); err != nil {
		return err
	}
	ps, err := s.projectPolicies(r, project)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"policies": ps})
	return nil
}

// policyHandle finds a policy of the token's project by name: 404 when
// there is none (another project's policy of that name is another
// schedule, never reached).
func (s *Server) policyHandle(r *http.Request, id *Identity, action string) (client.ScheduleHandle, PolicyView, *client.ScheduleDescription, error) {
	name := r.PathValue("name")
	notFound := errorf(http.StatusNotFound, "Policy %s could not be found.", name)
	if !repo.ValidName(name) {
		return nil, PolicyView{}, nil, notFound
	}
	if err := s.require(r.Context(), id, action, id.ProjectID, nil); err != nil {
		return nil, PolicyView{}, nil, err
	}
	h := s.cfg.Temporal.ScheduleClient().GetHandle(r.Context(), policyScheduleID(id.ProjectID, name))
	d, err := h.Describe(r.Context())
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		return nil, PolicyView{}, nil, notFound
	}
	if err != nil {
		return nil, PolicyView{}, nil, fmt.Errorf("describe policy %s of project %s: %w", name, id.ProjectID, err)
	}
	v, ok := policyViewOf(d.Memo)
	if !ok || v.ProjectID != id.ProjectID {
		return nil, PolicyView{}, nil, notFound
	}
	v.Paused = d.Schedule.State != nil && d.Schedule.State.Paused
	return h, v, d, nil
}

// showPolicy is GET /v1/policies/{name}, with its next runs.
func (s *Server) showPolicy(w http.ResponseWriter, r *http.Request, id *Identity) error {
	_, v, d, err := s.policyHandle(r, id, ActionPolicyShow)
	if err != nil {
		return err
	}
	v.NextRuns = d.Info.NextActionTimes
	writeJSON(w, http.StatusOK, map[string]any{"policy": v})
	return nil
}

// deletePolicy is DELETE /v1/policies/{name}: its schedule is deleted
// (a run under way goes on; its backups stay until they expire).
func (s *Server) deletePolicy(w http.ResponseWriter, r *http.Request, id *Identity) error {
	h, v, _, err := s.policyHandle(r, id, ActionPolicyDelete)
	if err != nil {
		return err
	}
	if err := h.Delete(r.Context()); err != nil {
		return fmt.Errorf("delete policy %s of project %s: %w", v.Name, id.ProjectID, err)
	}
	s.log.Info("policy deleted", "schedule_id", h.GetID(), "user_id", id.UserID, "project_id", id.ProjectID)
	w.WriteHeader(http.StatusNoContent)
	return nil
}
