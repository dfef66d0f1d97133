package policies

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/workflows"
)

// Memo keys of a policy's schedule and of the backups it starts.
const (
	MemoPolicy = "policy"
	MemoDigest = "policy_digest"
	// MemoExpireAfter carries the policy's backup lifetime (a duration
	// string) in each backup's memo.
	MemoExpireAfter = "expire_after"
)

// ErrNotFound is returned for a policy that has no schedule.
var ErrNotFound = errors.New("policy not found")

// searchAttributes are the Raksha search attributes of the policy's
// schedule and of every backup it starts.
func (p *Policy) searchAttributes() temporal.SearchAttributes {
	if p.Kind == KindMaintenance {
		return temporal.NewSearchAttributes(workflows.SAPolicy.ValueSet(p.Name), workflows.SAOperation.ValueSet("maintenance"))
	}
	if p.Kind == KindDrill {
		updates := []temporal.SearchAttributeUpdate{workflows.SAPolicy.ValueSet(p.Name), workflows.SAWorkload.ValueSet(p.Workload),
			workflows.SAOperation.ValueSet("drill")}
		if p.Drill != nil {
			updates = append(updates, workflows.SAProject.ValueSet(p.Drill.Project))
		}
		return temporal.NewSearchAttributes(updates...)
	}
	updates := []temporal.SearchAttributeUpdate{
		workflows.SAPolicy.ValueSet(p.Name),
		workflows.SAWorkload.ValueSet(p.Workload),
		workflows.SAOperation.ValueSet("backup"),
	}
	if p.Selector.Project != "" {
		updates = append(updates, workflows.SAProject.ValueSet(p.Selector.Project))
	}
	return temporal.NewSearchAttributes(updates...)
}

func (p *Policy) spec() client.ScheduleSpec {
	s := client.ScheduleSpec{Jitter: p.Schedule.Jitter}
	if p.Schedule.Cron != "" {
		s.CronExpressions = []string{p.Schedule.Cron}
		s.TimeZoneName = p.Schedule.TimeZone
		if s.TimeZoneName == "" {
			s.TimeZoneName = "UTC"
		}
	} else {
		s.Intervals = []client.ScheduleIntervalSpec{{Every: p.Schedule.Every, Offset: p.Schedule.Offset}}
	}
	return s
}

func (p *Policy) action() *client.ScheduleWorkflowAction {
	memo := map[string]any{MemoPolicy: p.Name, MemoDigest: p.Digest()}
	if p.Kind == KindMaintenance {
		return &client.ScheduleWorkflowAction{
			ID:                    workflows.MaintenanceWorkflowID(p.Repository),
			Workflow:              workflows.RepositoryMaintenance,
			Args:                  []any{p.MaintenanceRequest()},
			TaskQueue:             activities.ControlQueue,
			Memo:                  memo,
			TypedSearchAttributes: p.searchAttributes(),
			StaticSummary:         fmt.Sprintf("maintenance of repository %s by policy %s", p.Repository, p.Name),
		}
	}
	if p.Kind == KindDrill {
		return &client.ScheduleWorkflowAction{
			// The server appends the nominal start time to this id.
			ID:                    workflows.DrillWorkflowID(p.Workload),
			Workflow:              workflows.RestoreDrill,
			Args:                  []any{p.DrillRequest()},
			TaskQueue:             activities.ControlQueue,
			Memo:                  memo,
			TypedSearchAttributes: p.searchAttributes(),
			StaticSummary:         fmt.Sprintf("restore drill of workload %s by policy %s", p.Workload, p.Name),
		}
	}
	if p.Retention.ExpireAfter > 0 {
		memo[MemoExpireAfter] = FormatDuration(p.Retention.ExpireAfter)
	}
	return &client.ScheduleWorkflowAction{
		// The server appends the nominal start time to this id
		// (backup/<project>/<workload>-2026-01-02T02:00:00Z).
		ID:                    workflows.BackupWorkflowID(p.Selector.Project, p.Workload),
		Workflow:              workflows.WorkloadBackup,
		Args:                  []any{p.BackupRequest()},
		TaskQueue:             activities.ControlQueue,
		Memo:                  memo,
		TypedSearchAttributes: p.searchAttributes(),
		StaticSummary:         fmt.Sprintf("backup of workload %s by policy %s", p.Workload, p.Name),
	}
}

// ScheduleOptions is the Temporal Schedule of the policy: id policy/<name>;
// its action starts WorkloadBackup with the policy's BackupRequest on the
// control queue (RepositoryMaintenance, RestoreDrill for the other kinds); a run that would overlap a running one is skipped; runs
// missed by up to the catch-up window are taken late. Search attributes
// (RakshaPolicy, RakshaWorkload, RakshaOperation, RakshaProject) are set on
// the schedule and on every backup it starts.
func (p *Policy) ScheduleOptions() client.ScheduleOptions {
	return client.ScheduleOptions{
		ID:                    ScheduleID(p.Name),
		Spec:                  p.spec(),
		Action:                p.action(),
		Overlap:               enumspb.SCHEDULE_OVERLAP_POLICY_SKIP,
		CatchupWindow:         p.Schedule.CatchupWindow,
		Paused:                p.Paused != nil && *p.Paused,
		Note:                  p.note(),
		Memo:                  map[string]any{MemoPolicy: p.Name},
		TypedSearchAttributes: p.searchAttributes(),
	}
}

func (p *Policy) note() string {
	if p.Paused != nil && *p.Paused {
		return "paused by the policy file"
	}
	return ""
}

// What Apply did.
const (
	Created   = "created"
	Updated   = "updated"
	Unchanged = "unchanged"
)

// ApplyResult says what Apply did to a policy's schedule.
type ApplyResult struct {
	Policy     string `json:"policy"`
	ScheduleID string `json:"schedule_id"`
	// Action is Created, Updated or Unchanged.
	Action string `json:"action"`
}

// Apply makes the policy's schedule match the policy: it creates it, or
// updates it when its content or (if the policy says) its paused state
// differ. Applying the same policy twice changes nothing the second time.
func Apply(ctx context.Context, sc client.ScheduleClient, p *Policy) (ApplyResult, error) {
	opts := p.ScheduleOptions()
	res := ApplyResult{Policy: p.Name, ScheduleID: opts.ID}
	h := sc.GetHandle(ctx, opts.ID)
	desc, err := h.Describe(ctx)
	if isNotFound(err) {
		_, err = sc.Create(ctx, opts)
		if err == nil {
			res.Action = Created
			return res, nil
		}
		if !errors.Is(err, temporal.ErrScheduleAlreadyRunning) {
			return res, fmt.Errorf("apply policy %s: create schedule %s: %w", p.Name, opts.ID, err)
		}
		// Created by someone else in between: update it.
		desc, err = h.Describe(ctx)
	}
	if err != nil {
		return res, fmt.Errorf("apply policy %s: describe schedule %s: %w", p.Name, opts.ID, err)
	}
	if upToDate(desc, p) {
		res.Action = Unchanged
		return res, nil
	}
	sa := opts.TypedSearchAttributes
	err = h.Update(ctx, client.ScheduleUpdateOptions{DoUpdate: func(in client.ScheduleUpdateInput) (*client.ScheduleUpdate, error) {
		state := in.Description.Schedule.State
		if state == nil {
			state = &client.ScheduleState{}
		}
		if p.Paused != nil && state.Paused != *p.Paused {
			state.Paused = *p.Paused
			state.Note = p.note()
			if !*p.Paused {
				state.Note = "resumed by the policy file"
			}
		}
		return &client.ScheduleUpdate{
			Schedule: &client.Schedule{
				Action: opts.Action,
				Spec:   &opts.Spec,
				Policy: &client.SchedulePolicies{Overlap: opts.Overlap, CatchupWindow: opts.CatchupWindow},
				State:  state,
			},
			TypedSearchAttributes: &sa,
		}, nil
	}})
	if err != nil {
		return res, fmt.Errorf("apply policy %s: update schedule %s: %w", p.Name, opts.ID, err)
	}
	res.Action = Updated
	return res, nil
}

// upToDate reports whether a described schedule already is the policy.
func upToDate(desc *client.ScheduleDescription, p *Policy) bool {
	act, ok := desc.Schedule.Action.(*client.ScheduleWorkflowAction)
	if !ok {
		return false
	}
	var digest string
	if pl, ok := act.Memo[MemoDigest]; !ok || decode(pl, &digest) != nil || digest != p.Digest() {
		return false
	}
	if p.Paused != nil && (desc.Schedule.State == nil || desc.Schedule.State.Paused != *p.Paused) {
		return false
	}
	return true
}

// decode reads a memo value or workflow argument of a described schedule.
func decode(v any, dst any) error {
	pl, ok := v.(*commonpb.Payload)
	if !ok {
		return fmt.Errorf("not a payload: %T", v)
	}
	return converter.GetDefaultDataConverter().FromPayload(pl, dst)
}

func isNotFound(err error) bool {
	var nf *serviceerror.NotFound
	return errors.As(err, &nf)
}

// Status is what Temporal knows of a policy's schedule.
type Status struct {
	Policy     string `json:"policy"`
	ScheduleID string `json:"schedule_id"`
	Workload   string `json:"workload,omitempty"`
	// When is the schedule in words: "cron 0 2 * * * (UTC)" or "every 6h".
	When   string `json:"when"`
	Paused bool   `json:"paused"`
	Note   string `json:"note,omitempty"`
	// Request is the BackupRequest each run gets (Show only, backup policies).
	Request *workflows.BackupRequest `json:"request,omitempty"`
	// Maintenance is the MaintenanceRequest each run gets (Show only,
	// maintenance policies).
	Maintenance *workflows.MaintenanceRequest `json:"maintenance,omitempty"`
	// Drill is the DrillRequest each run gets (Show only, drill policies).
	Drill *workflows.DrillRequest `json:"drill,omitempty"`
	// ExpireAfter is the policy's backup lifetime (Show only).
	ExpireAfter string      `json:"expire_after,omitempty"`
	Digest      string      `json:"digest,omitempty"`
	Next        []time.Time `json:"next,omitempty"`
	Recent      []Run       `json:"recent,omitempty"`
	// Running are the backups this schedule started that still run.
	Running []string `json:"running,omitempty"`
	// Actions counts the backups started; SkippedOverlap those not started
	// because the previous one still ran; MissedCatchup those missed.
	Actions        int       `json:"actions"`
	SkippedOverlap int       `json:"skipped_overlap"`
	MissedCatchup  int       `json:"missed_catchup"`
	Created        time.Time `json:"created"`
	Updated        time.Time `json:"updated,omitempty"`
}

// Run is one backup a schedule started.
type Run struct {
	Scheduled  time.Time `json:"scheduled"`
	Started    time.Time `json:"started"`
	WorkflowID string    `json:"workflow_id"`
	RunID      string    `json:"run_id"`
}

func describeSpec(s *client.ScheduleSpec) string {
	if s == nil {
		return ""
	}
	var parts []string
	for _, c := range s.CronExpressions {
		parts = append(parts, "cron "+c)
	}
	// The server returns cron expressions as calendars.
	for _, c := range s.Calendars {
		parts = append(parts, "cron "+calendarString(c))
	}
	for _, iv := range s.Intervals {
		w := "every " + FormatDuration(iv.Every)
		if iv.Offset > 0 {
			w += " offset " + FormatDuration(iv.Offset)
		}
		parts = append(parts, w)
	}
	out := strings.Join(parts, ", ")
	if s.TimeZoneName != "" && len(s.Intervals) == 0 {
		out += " (" + s.TimeZoneName + ")"
	}
	if s.Jitter > 0 {
		out += " jitter " + FormatDuration(s.Jitter)
	}
	return out
}

func calendarString(c client.ScheduleCalendarSpec) string {
	if c.Comment != "" {
		return c.Comment
	}
	// A field that covers its whole range is "*" (the server expands "*").
	f := func(rs []client.ScheduleRange, lo, hi int) string {
		if len(rs) == 0 || len(rs) == 1 && rs[0].Start <= lo && rs[0].End >= hi && rs[0].Step <= 1 {
			return "*"
		}
		var out []string
		for _, r := range rs {
			s := fmt.Sprint(r.Start)
			if r.End > r.Start {
				s += fmt.Sprintf("-%d", r.End)
			}
			if r.Step > 1 {
				s += fmt.Sprintf("/%d", r.Step)
			}
			out = append(out, s)
		}
		return strings.Join(out, ",")
	}
	return strings.Join([]string{f(c.Minute, 0, 59), f(c.Hour, 0, 23), f(c.DayOfMonth, 1, 31), f(c.Month, 1, 12), f(c.DayOfWeek, 0, 6)}, " ")
}

// Show describes the schedule of the named policy; ErrNotFound when there
// is none.
func Show(ctx context.Context, sc client.ScheduleClient, name string) (*Status, error) {
	id := ScheduleID(name)
	desc, err := sc.GetHandle(ctx, id).Describe(ctx)
	if isNotFound(err) {
		return nil, fmt.Errorf("show policy %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("show policy %s: describe schedule %s: %w", name, id, err)
	}
	st := &Status{Policy: name, ScheduleID: id, When: describeSpec(desc.Schedule.Spec),
		Actions: desc.Info.NumActions, SkippedOverlap: desc.Info.NumActionsSkippedOverlap,
		MissedCatchup: desc.Info.NumActionsMissedCatchupWindow, Next: desc.Info.NextActionTimes,
		Created: desc.Info.CreatedAt, Updated: desc.Info.LastUpdateAt}
	if s := desc.Schedule.State; s != nil {
		st.Paused, st.Note = s.Paused, s.Note
	}
	if act, ok := desc.Schedule.Action.(*client.ScheduleWorkflowAction); ok {
		if len(act.Args) == 1 && act.Workflow == "RepositoryMaintenance" {
			var req workflows.MaintenanceRequest
			if err := decode(act.Args[0], &req); err == nil {
				st.Maintenance = &req
			}
		} else if len(act.Args) == 1 && act.Workflow == "RestoreDrill" {
			var req workflows.DrillRequest
			if err := decode(act.Args[0], &req); err == nil {
				st.Drill = &req
				st.Workload = req.Workload
			}
		} else if len(act.Args) == 1 {
			var req workflows.BackupRequest
			if err := decode(act.Args[0], &req); err == nil {
				st.Request = &req
				st.Workload = req.Workload
			}
		}
		if v, ok := act.Memo[MemoExpireAfter]; ok {
			_ = decode(v, &st.ExpireAfter)
		}
		if v, ok := act.Memo[MemoDigest]; ok {
			_ = decode(v, &st.Digest)
		}
	}
	for _, a := range desc.Info.RecentActions {
		r := Run{Scheduled: a.ScheduleTime, Started: a.ActualTime}
		if w := a.StartWorkflowResult; w != nil {
			r.WorkflowID, r.RunID = w.WorkflowID, w.FirstExecutionRunID
		}
		st.Recent = append(st.Recent, r)
	}
	for _, w := range desc.Info.RunningWorkflows {
		st.Running = append(st.Running, w.WorkflowID)
	}
	return st, nil
}

// List returns the status of every policy's schedule (the schedules whose
// id starts with policy/), sorted by name. It is eventually consistent: a
// schedule created a moment ago may be missing.
func List(ctx context.Context, sc client.ScheduleClient) ([]*Status, error) {
	it, err := sc.List(ctx, client.ScheduleListOptions{PageSize: 500})
	if err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	var out []*Status
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			return nil, fmt.Errorf("list policies: %w", err)
		}
		name, ok := strings.CutPrefix(e.ID, ScheduleIDPrefix)
		if !ok {
			continue
		}
		st := &Status{Policy: name, ScheduleID: e.ID, When: describeSpec(e.Spec), Paused: e.Paused, Note: e.Note, Next: e.NextActionTimes}
		if e.SearchAttributes != nil {
			if pl, ok := e.SearchAttributes.GetIndexedFields()[workflows.SAWorkload.GetName()]; ok {
				_ = decode(pl, &st.Workload)
			}
		}
		for _, a := range e.RecentActions {
			r := Run{Scheduled: a.ScheduleTime, Started: a.ActualTime}
			if w := a.StartWorkflowResult; w != nil {
				r.WorkflowID, r.RunID = w.WorkflowID, w.FirstExecutionRunID
			}
			st.Recent = append(st.Recent, r)
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Policy < out[j].Policy })
	return out, nil
}

// Pause stops the named policy's schedule from starting backups (running
// ones go on) until Resume or an apply of a file that says paused: false.
func Pause(ctx context.Context, sc client.ScheduleClient, name, note string) error {
	if note == "" {
		note = "paused by raksha policy pause"
	}
	err := sc.GetHandle(ctx, ScheduleID(name)).Pause(ctx, client.SchedulePauseOptions{Note: note})
	return wrap("pause", name, err)
}

// Resume lets the named policy's schedule start backups again.
func Resume(ctx context.Context, sc client.ScheduleClient, name, note string) error {
	if note == "" {
		note = "resumed by raksha policy resume"
	}
	err := sc.GetHandle(ctx, ScheduleID(name)).Unpause(ctx, client.ScheduleUnpauseOptions{Note: note})
	return wrap("resume", name, err)
}

// Trigger starts one backup of the named policy now, also when the
// schedule is paused; like scheduled runs, it is skipped if the policy's
// previous backup still runs.
func Trigger(ctx context.Context, sc client.ScheduleClient, name string) error {
	err := sc.GetHandle(ctx, ScheduleID(name)).Trigger(ctx, client.ScheduleTriggerOptions{})
	return wrap("trigger", name, err)
}

// Delete removes the named policy's schedule; backups it started go on,
// and the backups already made stay in the repository.
func Delete(ctx context.Context, sc client.ScheduleClient, name string) error {
	err := sc.GetHandle(ctx, ScheduleID(name)).Delete(ctx)
	return wrap("delete", name, err)
}

func wrap(op, name string, err error) error {
	switch {
	case err == nil:
		return nil
	case isNotFound(err):
		return fmt.Errorf("%s policy %s: %w", op, name, ErrNotFound)
	default:
		return fmt.Errorf("%s policy %s: %w", op, name, err)
	}
}
