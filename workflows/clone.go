package workflows

import (
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
)

// CloneRequest is the input of Clone: a restore into another project (a
// staging environment), labelled so that CloneDelete can tear it down.
type CloneRequest struct {
	RestoreRequest
	// Name is the clone's name (its workflow id is CloneWorkflowID(Name)).
	Name string `json:"name"`
}

// Clone restores a backup into another project as a labelled staging copy:
// every server and volume carries raksha.clone=<name>; the captured
// raksha.workload label is dropped, so the clone never joins the production
// workload's backups; post-restore hooks (data masking) and a health check
// run in the guests. A clone that fails is deleted.
func Clone(ctx workflow.Context, req CloneRequest) (*RestoreResult, error) {
	switch {
	case req.Name == "":
		return nil, temporal.NewNonRetryableApplicationError("clone name is empty", activities.ErrInvalid, nil)
	case req.Project == "":
		return nil, temporal.NewNonRetryableApplicationError("a clone needs a target project", activities.ErrInvalid, nil)
	case req.InPlace:
		return nil, temporal.NewNonRetryableApplicationError("a clone cannot be in place", activities.ErrInvalid, nil)
	}
	r := req.RestoreRequest
	r.Operation = "clone"
	r.Metadata = maps.Clone(r.Metadata)
	if r.Metadata == nil {
		r.Metadata = map[string]string{}
	}
	r.Metadata[activities.MetaClone] = req.Name
	r.Metadata[cloud.WorkloadKey] = ""
	return Restore(ctx, r)
}

// CloneDeleteRequest is the input of CloneDelete.
type CloneDeleteRequest struct {
	Name    string `json:"name"`
	Project string `json:"project"`
	// MissingOK makes a clone of which nothing is left (one that failed
	// and deleted itself) a success with nothing removed, instead of
	// ErrNotFound: a drill's teardown, which runs whatever happened.
	MissingOK bool `json:"missing_ok,omitempty"`
}

// CloneDeleteResult lists what CloneDelete removed.
type CloneDeleteResult struct {
	Servers []string `json:"servers"`
	Volumes []string `json:"volumes"`
}

// CloneDelete tears a clone down completely: every server, then every volume
// of the project labelled raksha.clone=<name>. It fails, listing them, if
// something cannot be deleted.
func CloneDelete(ctx workflow.Context, req CloneDeleteRequest) (*CloneDeleteResult, error) {
	if req.Name == "" || req.Project == "" {
		return nil, temporal.NewNonRetryableApplicationError("clone delete needs the clone's name and project", activities.ErrInvalid, nil)
	}
	_ = workflow.UpsertTypedSearchAttributes(ctx, SAOperation.ValueSet("clone-delete"), SAProject.ValueSet(req.Project))
	var found activities.Resources
	if err := workflow.ExecuteActivity(cloudOpts(ctx, 2*time.Minute, 5), a.FindByLabel, activities.FindByLabelInput{
		Project: req.Project, Key: activities.MetaClone, Value: req.Name}).Get(ctx, &found); err != nil {
		return nil, fmt.Errorf("find clone %s: %w", req.Name, err)
	}
	if len(found.Servers)+len(found.Volumes) == 0 {
		if req.MissingOK {
			return &CloneDeleteResult{}, nil
		}
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("clone %s: nothing in project %s carries %s=%s",
			req.Name, req.Project, activities.MetaClone, req.Name), activities.ErrNotFound, nil)
	}
	var left []string
	res := &CloneDeleteResult{}
	for _, s := range found.Servers {
		if err := workflow.ExecuteActivity(cloudOpts(ctx, 10*time.Minute, 5), a.DeleteRestoreServer,
			activities.ServerRef{Project: req.Project, ServerID: s}).Get(ctx, nil); err != nil {
			left = append(left, fmt.Sprintf("server %s (%v)", s, err))
			continue
		}
		res.Servers = append(res.Servers, s)
	}
	for _, v := range found.Volumes {
		if err := workflow.ExecuteActivity(cloudOpts(ctx, 10*time.Minute, 5), a.DeleteRestoreVolume,
			activities.VolumeRef{Project: req.Project, VolumeID: v}).Get(ctx, nil); err != nil {
			left = append(left, fmt.Sprintf("volume %s (%v)", v, err))
			continue
		}
		res.Volumes = append(res.Volumes, v)
	}
	if len(left) > 0 {
		return res, temporal.NewNonRetryableApplicationError(fmt.Sprintf("clone %s: could not delete %s", req.Name, strings.Join(left, ", ")),
			ErrLeftovers, errors.New("leftovers"), left)
	}
	return res, nil
}
