package apiclient

import (
	"context"
	"net/url"

	"github.com/gophercloud/gophercloud/v2"

	"github.com/raksha-backup/raksha/api"
)

// ListBackups lists one page of the backups of the token's project (or of
// opts.ProjectID), newest first.
func (c *Client) ListBackups(ctx context.Context, opts ListOpts) ([]api.BackupView, Page, error) {
	var out struct {
		Backups []api.BackupView `json:"backups"`
		Links   links            `json:"backups_links"`
	}
	err := c.get(ctx, "list backups", "backups", opts.query(), &out)
	return out.Backups, out.Links.next(), err
}

// GetBackup shows one backup.
func (c *Client) GetBackup(ctx context.Context, id string) (*api.BackupView, error) {
	var out struct {
		Backup api.BackupView `json:"backup"`
	}
	if err := c.get(ctx, "show backup "+id, "backups/"+url.PathEscape(id), nil, &out); err != nil {
		return nil, err
	}
	return &out.Backup, nil
}

// BackupStartOpts are what a tenant may ask of a backup: the workload (the
// servers of its project whose metadata raksha.workload names it), the
// repository, app or crash consistency and an expiry (a duration, "720h").
type BackupStartOpts struct {
	Workload    string `json:"workload"`
	Repository  string `json:"repository,omitempty"`
	Consistency string `json:"consistency,omitempty"`
	ExpireAfter string `json:"expire_after,omitempty"`
}

// StartBackup starts a workload backup; the run's id shows its progress.
func (c *Client) StartBackup(ctx context.Context, opts BackupStartOpts) (*api.BackupRunView, error) {
	var out struct {
		Run api.BackupRunView `json:"backup_run"`
	}
	if err := c.post(ctx, "start a backup of "+opts.Workload, "backups", map[string]any{"backup": opts}, &out, 202); err != nil {
		return nil, err
	}
	return &out.Run, nil
}

// GetBackupRun shows a backup run with its progress.
func (c *Client) GetBackupRun(ctx context.Context, id string) (*api.BackupRunView, error) {
	var out struct {
		Run api.BackupRunView `json:"backup_run"`
	}
	if err := c.get(ctx, "show backup run "+id, "backup-runs/"+url.PathEscape(id), nil, &out); err != nil {
		return nil, err
	}
	return &out.Run, nil
}

// CancelBackupRun asks a running backup to stop (guests thawed, nothing
// committed).
func (c *Client) CancelBackupRun(ctx context.Context, id string) (*api.BackupRunView, error) {
	var out struct {
		Run api.BackupRunView `json:"backup_run"`
	}
	if err := c.post(ctx, "cancel backup run "+id, "backup-runs/"+url.PathEscape(id)+"/cancel", nil, &out, 202); err != nil {
		return nil, err
	}
	return &out.Run, nil
}

// RestoreStartOpts are a tenant's restore options (the CLI's, without hooks
// or health checks, which are the operator's).
type RestoreStartOpts struct {
	BackupID          string            `json:"backup_id"`
	Repository        string            `json:"repository,omitempty"`
	ProjectID         string            `json:"project_id,omitempty"`
	VMs               []string          `json:"vms,omitempty"`
	Volumes           []string          `json:"volumes,omitempty"`
	NamePrefix        string            `json:"name_prefix,omitempty"`
	Networks          map[string]string `json:"networks,omitempty"`
	Flavors           map[string]string `json:"flavors,omitempty"`
	KeepFixedIPs      bool              `json:"keep_fixed_ips,omitempty"`
	InPlace           bool              `json:"in_place,omitempty"`
	NoWorkloadLabel   bool              `json:"no_workload_label,omitempty"`
	MaxParallelWrites int               `json:"max_parallel_writes,omitempty"`
}

// StartRestore starts a restore of a backup into the token's project (or
// opts.ProjectID, with rights on both).
func (c *Client) StartRestore(ctx context.Context, opts RestoreStartOpts) (*api.RestoreView, error) {
	var out struct {
		Restore api.RestoreView `json:"restore"`
	}
	if err := c.post(ctx, "start a restore of "+opts.BackupID, "restores", map[string]any{"restore": opts}, &out, 202); err != nil {
		return nil, err
	}
	return &out.Restore, nil
}

// ListRestores lists one page of the restores into the token's project (or
// opts.ProjectID), newest first.
func (c *Client) ListRestores(ctx context.Context, opts ListOpts) ([]api.RestoreView, Page, error) {
	var out struct {
		Restores []api.RestoreView `json:"restores"`
		Links    links             `json:"restores_links"`
	}
	err := c.get(ctx, "list restores", "restores", opts.query(), &out)
	return out.Restores, out.Links.next(), err
}

// GetRestore shows a restore with its progress.
func (c *Client) GetRestore(ctx context.Context, id string) (*api.RestoreView, error) {
	var out struct {
		Restore api.RestoreView `json:"restore"`
	}
	if err := c.get(ctx, "show restore "+id, "restores/"+url.PathEscape(id), nil, &out); err != nil {
		return nil, err
	}
	return &out.Restore, nil
}

// CancelRestore asks a running restore to stop; it deletes what it made.
func (c *Client) CancelRestore(ctx context.Context, id string) (*api.RestoreView, error) {
	var out struct {
		Restore api.RestoreView `json:"restore"`
	}
	if err := c.post(ctx, "cancel restore "+id, "restores/"+url.PathEscape(id)+"/cancel", nil, &out, 202); err != nil {
		return nil, err
	}
	return &out.Restore, nil
}

// CloneStartOpts are a tenant's clone options: a named restore into a
// project where the caller also holds a role.
type CloneStartOpts struct {
	Name              string            `json:"name"`
	BackupID          string            `json:"backup_id"`
	Repository        string            `json:"repository,omitempty"`
	ProjectID         string            `json:"project_id,omitempty"`
	VMs               []string          `json:"vms,omitempty"`
	NamePrefix        string            `json:"name_prefix,omitempty"`
	Networks          map[string]string `json:"networks,omitempty"`
	Flavors           map[string]string `json:"flavors,omitempty"`
	KeepFixedIPs      bool              `json:"keep_fixed_ips,omitempty"`
	MaxParallelWrites int               `json:"max_parallel_writes,omitempty"`
}

// StartClone starts a clone.
func (c *Client) StartClone(ctx context.Context, opts CloneStartOpts) (*api.CloneView, error) {
	var out struct {
		Clone api.CloneView `json:"clone"`
	}
	if err := c.post(ctx, "start clone "+opts.Name, "clones", map[string]any{"clone": opts}, &out, 202); err != nil {
		return nil, err
	}
	return &out.Clone, nil
}

// ListClones lists one page of the clones into the token's project (or
// opts.ProjectID), newest first.
func (c *Client) ListClones(ctx context.Context, opts ListOpts) ([]api.CloneView, Page, error) {
	var out struct {
		Clones []api.CloneView `json:"clones"`
		Links  links           `json:"clones_links"`
	}
	err := c.get(ctx, "list clones", "clones", opts.query(), &out)
	return out.Clones, out.Links.next(), err
}

// DeleteClone starts the tear-down of a clone that finished: every server
// and volume labelled with its name in its project.
func (c *Client) DeleteClone(ctx context.Context, id string) (*api.CloneDeleteView, error) {
	var out struct {
		Delete api.CloneDeleteView `json:"clone_delete"`
	}
	_, err := c.sc.Request(ctx, "DELETE", c.sc.ResourceBase+"clones/"+url.PathEscape(id),
		&gophercloud.RequestOpts{JSONResponse: &out, OkCodes: []int{202}})
	if err != nil {
		return nil, wrap("delete clone "+id, err)
	}
	return &out.Delete, nil
}

// CancelClone asks a clone still being made to stop; it deletes what it
// made.
func (c *Client) CancelClone(ctx context.Context, id string) (*api.CloneView, error) {
	var out struct {
		Clone api.CloneView `json:"clone"`
	}
	if err := c.post(ctx, "cancel clone "+id, "clones/"+url.PathEscape(id)+"/cancel", nil, &out, 202); err != nil {
		return nil, err
	}
	return &out.Clone, nil
}
