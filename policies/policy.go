// Package policies holds Raksha's backup policies: the YAML model, its
// validation (errors name the file, line, field and what is wrong), and its
// translation into Temporal Schedules.
//
// One policy backs up one workload: the servers its selector picks, as one
// WorkloadBackup per run under the workflow id backup/<project>/<workload>
// (backup/<workload> when the selector names no project). A policy
// becomes one Temporal Schedule with the id policy/<name>. To back up many
// workloads, write one policy per workload (a file may hold several
// policies as YAML documents separated by ---).
package policies

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/workflows"
)

// Defaults for fields a policy leaves out.
const (
	DefaultCatchupWindow = time.Hour
	DefaultFreezeTimeout = 10 * time.Second
	DefaultHookTimeout   = 30 * time.Second
)

// Kinds of policy.
const (
	// KindBackup backs up one workload (the default).
	KindBackup = "backup"
	// KindMaintenance prunes expired backups, collects garbage and checks or
	// verifies one repository (RepositoryMaintenance).
	KindMaintenance = "maintenance"
	// KindDrill clones the newest backup of one workload into a drill
	// project, runs its health check in every guest, records the result
	// and tears the clone down (RestoreDrill).
	KindDrill = "drill"
)

// Policy is one backup, maintenance or drill policy.
type Policy struct {
	// Kind is KindBackup, KindMaintenance or KindDrill.
	Kind string `json:"kind"`
	// Maintenance is what a maintenance policy does (kind maintenance only).
	Maintenance *Maintenance `json:"maintenance,omitempty"`
	// Drill is what a drill policy does (kind drill only).
	Drill *Drill `json:"drill,omitempty"`
	// Project is the project the drilled workload's backups were captured
	// in (kind drill only; a backup policy says selector.project).
	Project string `json:"project,omitempty"`
	// Name identifies the policy; its schedule is policy/<name>.
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Workload names the workload the policy backs up: its backups carry the
	// label workload=<Workload> and run as workflow
	// backup/<selector.project>/<Workload> (workflows.BackupWorkflowID).
	// Default: the selector's raksha.workload metadata value, else Name.
	Workload    string      `json:"workload"`
	Selector    Selector    `json:"selector"`
	Schedule    Schedule    `json:"schedule"`
	Consistency Consistency `json:"consistency"`
	Hooks       Hooks       `json:"hooks,omitempty"`
	Retention   Retention   `json:"retention,omitempty"`
	// Labels are user labels every backup of the policy carries; a system
	// label (workload, project, policy: Raksha sets them) is refused.
	Labels map[string]string `json:"labels,omitempty"`
	// Repository is a repository id of the workers' registry.
	Repository string `json:"repository"`
	// Paused, when set, is the schedule's state after apply; when unset,
	// apply creates the schedule running and leaves an existing one's
	// state as it is (so `raksha policy pause` survives a re-apply).
	Paused *bool `json:"paused,omitempty"`

	// File, Line and Column say where the policy was read from.
	File   string `json:"-"`
	Line   int    `json:"-"`
	Column int    `json:"-"`
}

// Selector picks the servers of the workload: exactly one of Metadata,
// Tag, Stack, ServerGroup and Servers.
type Selector struct {
	// Project is the project the workload lives in.
	Project string `json:"project,omitempty"`
	// Metadata selects servers by server metadata; the one key supported is
	// raksha.workload.
	Metadata    map[string]string `json:"metadata,omitempty"`
	Tag         string            `json:"tag,omitempty"`
	Stack       string            `json:"stack,omitempty"`
	ServerGroup string            `json:"server_group,omitempty"`
	Servers     []string          `json:"servers,omitempty"`
	// AllProjects searches every project (admin only).
	AllProjects bool `json:"all_projects,omitempty"`
	// Include keeps only servers whose name matches one of these regular
	// expressions; Exclude drops servers whose name matches one of these
	// (cattle, hogs, mayflies).
	Include []string `json:"include,omitempty"`
	Exclude []string `json:"exclude,omitempty"`
}

// Schedule says when the policy runs: Cron or Every.
type Schedule struct {
	// Cron is a five-field cron expression (minute hour day-of-month month
	// day-of-week) or @hourly, @daily, @weekly, @monthly, @yearly.
	Cron string `json:"cron,omitempty"`
	// Every is a fixed interval, Offset its phase (from the Unix epoch).
	Every  time.Duration `json:"every,omitempty"`
	Offset time.Duration `json:"offset,omitempty"`
	// TimeZone is the IANA time zone of Cron (default UTC).
	TimeZone string `json:"time_zone,omitempty"`
	// Jitter delays each run by a random time up to this much.
	Jitter time.Duration `json:"jitter,omitempty"`
	// CatchupWindow is how late a run missed during a Temporal outage may
	// still start (default DefaultCatchupWindow, at least 10s).
	CatchupWindow time.Duration `json:"catchup_window"`
}

// Consistency is how the guests are treated.
type Consistency struct {
	// Mode is "app" (freeze through the guest agent) or "crash".
	Mode string `json:"mode"`
	// OnAppFailure ("fail" or "crash") is what happens when a guest cannot
	// be frozen or its freeze deadline passed (mode app only).
	OnAppFailure  string        `json:"on_app_failure,omitempty"`
	FreezeTimeout time.Duration `json:"freeze_timeout,omitempty"`
}

// Hooks are guest programs run around the freeze (mode app only).
type Hooks struct {
	Pre  []Hook `json:"pre,omitempty"`
	Post []Hook `json:"post,omitempty"`
	// OnFailure is "fail" (a failed pre-hook fails the backup) or "continue".
	OnFailure string `json:"on_failure,omitempty"`
}

// Hook is one guest program.
type Hook struct {
	Name    string        `json:"name,omitempty"`
	Path    string        `json:"path"`
	Args    []string      `json:"args,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
}

// Retention is what prune keeps of the workload's backups after each run,
// and when a backup expires.
type Retention struct {
	Last    int `json:"last,omitempty"`
	Hourly  int `json:"hourly,omitempty"`
	Daily   int `json:"daily,omitempty"`
	Weekly  int `json:"weekly,omitempty"`
	Monthly int `json:"monthly,omitempty"`
	Yearly  int `json:"yearly,omitempty"`
	// ExpireAfter is the lifetime of each backup; an expired backup goes at
	// the next prune whatever the keep rules say.
	ExpireAfter time.Duration `json:"expire_after,omitempty"`
}

// Maintenance is what each run of a maintenance policy does to its
// repository. Parse fills in the defaults: prune expired backups, gc, check.
type Maintenance struct {
	PruneExpired *bool         `json:"prune_expired,omitempty"`
	GC           *bool         `json:"gc,omitempty"`
	GCGrace      time.Duration `json:"gc_grace,omitempty"`
	// Verify is "none", "check" (structure) or "full" (every chunk re-read).
	Verify string `json:"verify,omitempty"`
}

// Drill is what each run of a drill policy does: clone the workload's
// newest backup into Project, run the post-hooks and the health check in
// every guest, tear the clone down.
type Drill struct {
	// Project is the drill project the clone goes into (never the
	// workload's own).
	Project string `json:"project"`
	// VMs selects servers of the backup (empty: all).
	VMs []string `json:"vms,omitempty"`
	// Networks and Flavors map captured names or ids to the drill
	// project's.
	Networks map[string]string `json:"networks,omitempty"`
	Flavors  map[string]string `json:"flavors,omitempty"`
	// PostHooks run in every guest before the health check.
	PostHooks []Hook `json:"post_hooks,omitempty"`
	// HealthCheck runs in every guest; exit 0 is healthy.
	HealthCheck Hook `json:"health_check"`
	// Timeout bounds the clone up to the health check passing (default
	// DefaultDrillTimeout).
	Timeout time.Duration `json:"timeout"`
}

// DefaultDrillTimeout is a drill policy's timeout unless it gives one.
const DefaultDrillTimeout = workflows.DefaultDrillTimeout

// DrillRequest is the RestoreDrill input every run of a drill policy gets.
func (p *Policy) DrillRequest() workflows.DrillRequest {
	// A policy is the operator's file: its drills may run hooks.
	req := workflows.DrillRequest{Workload: p.Workload, Project: p.Project, Policy: p.Name, Repository: p.Repository, Operator: true}
	if dr := p.Drill; dr != nil {
		hc := activities.Hook(dr.HealthCheck)
		req.DrillProject, req.VMs, req.Networks, req.Flavors, req.HealthCheck, req.Timeout = dr.Project, dr.VMs, dr.Networks, dr.Flavors, &hc, dr.Timeout
		for _, h := range dr.PostHooks {
			req.PostHooks = append(req.PostHooks, activities.Hook(h))
		}
	}
	return req
}

// MaintenanceRequest is the RepositoryMaintenance input every run of a
// maintenance policy gets.
func (p *Policy) MaintenanceRequest() workflows.MaintenanceRequest {
	req := workflows.MaintenanceRequest{Repository: p.Repository}
	if m := p.Maintenance; m != nil {
		req.PruneExpired = m.PruneExpired != nil && *m.PruneExpired
		req.GC = m.GC != nil && *m.GC
		req.GCGrace = m.GCGrace
		if m.Verify != "none" {
			req.Verify = m.Verify
		}
	}
	return req
}

// ScheduleID is the Temporal Schedule id of a policy.
func ScheduleID(name string) string { return ScheduleIDPrefix + name }

// ScheduleIDPrefix starts the id of every policy's schedule.
const ScheduleIDPrefix = "policy/"

// BackupRequest is the WorkloadBackup input every run of the policy gets.
func (p *Policy) BackupRequest() workflows.BackupRequest {
	sel := activities.Selector{
		Workload:    p.Selector.Metadata[cloud.WorkloadKey],
		Tag:         p.Selector.Tag,
		Stack:       p.Selector.Stack,
		ServerGroup: p.Selector.ServerGroup,
		ServerIDs:   p.Selector.Servers,
		Include:     joinRegexps(p.Selector.Include),
		Exclude:     joinRegexps(p.Selector.Exclude),
		AllProjects: p.Selector.AllProjects,
	}
	req := workflows.BackupRequest{
		Workload:      p.Workload,
		Project:       p.Selector.Project,
		Policy:        p.Name,
		Operator:      true, // a policy is the operator's
		Repository:    p.Repository,
		Selector:      sel,
		Consistency:   p.Consistency.Mode,
		OnAppFailure:  p.Consistency.OnAppFailure,
		FreezeTimeout: p.Consistency.FreezeTimeout,
		HookFailure:   p.Hooks.OnFailure,
		ExpireAfter:   p.Retention.ExpireAfter,
		Retention: activities.Retention{Last: p.Retention.Last, Hourly: p.Retention.Hourly, Daily: p.Retention.Daily,
			Weekly: p.Retention.Weekly, Monthly: p.Retention.Monthly, Yearly: p.Retention.Yearly},
		Labels: p.Labels,
	}
	for _, h := range p.Hooks.Pre {
		req.PreHooks = append(req.PreHooks, activities.Hook(h))
	}
	for _, h := range p.Hooks.Post {
		req.PostHooks = append(req.PostHooks, activities.Hook(h))
	}
	return req
}

// joinRegexps makes one regular expression that matches when any of res does.
func joinRegexps(res []string) string {
	switch len(res) {
	case 0:
		return ""
	case 1:
		return res[0]
	}
	out := ""
	for i, re := range res {
		if i > 0 {
			out += "|"
		}
		out += "(?:" + re + ")"
	}
	return out
}

// Digest identifies the policy's content (everything but Paused and where
// it was read from): apply leaves a schedule whose digest matches alone.
func (p *Policy) Digest() string {
	q := *p
	q.Paused = nil
	data, _ := json.Marshal(q) // plain data: cannot fail
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}
