package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/raksha-backup/raksha/internal/cloud"
)

// WorkloadSource discovers the workloads of a project: what a backup of
// each would take now. *CloudWorkloads is the one raksha-api uses.
type WorkloadSource interface {
	// Workloads returns the workloads of the project (by id), sorted by
	// name. A workload whose discovery is refused (a server or volume of
	// another project in it) comes back with Err set, not as an error of
	// the whole call.
	Workloads(ctx context.Context, projectID string) ([]DiscoveredWorkload, error)
}

// DiscoveredWorkload is one workload as discovery found it: its servers
// (nil when Err is set) or why discovery refused it.
type DiscoveredWorkload struct {
	Name     string
	Workload *cloud.Workload
	Err      error
}

// CloudWorkloads discovers workloads through the cloud adapter, with the
// control worker's discovery code (cloud.Client.DiscoverWorkload, which
// refuses servers and volumes of another project): the servers of the
// project carrying raksha.workload metadata, grouped by its value. Its
// client needs a role in every project it is asked about (as the control
// worker's does) and the admin role for the hosts of the servers. It is
// safe for concurrent use.
type CloudWorkloads struct {
	Client *cloud.Client

	mu       sync.Mutex
	projects map[string]*cloud.Client
}

// maxProjectClients bounds the project-scoped clients CloudWorkloads keeps.
const maxProjectClients = 256

func (c *CloudWorkloads) forProject(ctx context.Context, projectID string) (*cloud.Client, error) {
	if projectID == c.Client.ProjectID() {
		return c.Client, nil
	}
	c.mu.Lock()
	pc, ok := c.projects[projectID]
	c.mu.Unlock()
	if ok {
		return pc, nil
	}
	pc, err := c.Client.ForProject(ctx, projectID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.projects == nil || len(c.projects) >= maxProjectClients {
		c.projects = map[string]*cloud.Client{}
	}
	c.projects[projectID] = pc
	return pc, nil
}

// Workloads implements WorkloadSource.
func (c *CloudWorkloads) Workloads(ctx context.Context, projectID string) ([]DiscoveredWorkload, error) {
	pc, err := c.forProject(ctx, projectID)
	if err != nil {
		return nil, fmt.Errorf("list workloads of project %s: %w", projectID, err)
	}
	names, err := pc.WorkloadNames(ctx)
	if err != nil {
		return nil, fmt.Errorf("list workloads of project %s: %w", projectID, err)
	}
	out := make([]DiscoveredWorkload, 0, len(names))
	for _, n := range names {
		w, err := pc.DiscoverWorkload(ctx, n, cloud.Selector{Workload: n})
		switch {
		case errors.Is(err, cloud.ErrForbidden):
			out = append(out, DiscoveredWorkload{Name: n, Err: err})
		case err != nil:
			return nil, fmt.Errorf("discover workload %s of project %s: %w", n, projectID, err)
		default:
			out = append(out, DiscoveredWorkload{Name: n, Workload: w})
		}
	}
	return out, nil
}

// WorkloadView is a workload as the API shows it: the servers discovery
// finds now (metadata raksha.workload = name in the project) and their
// disks. A tenant sees no host or hypervisor detail.
type WorkloadView struct {
	Name         string               `json:"name"`
	ProjectID    string               `json:"project_id"`
	DiscoveredAt *time.Time           `json:"discovered_at,omitempty"`
	Servers      []WorkloadServerView `json:"servers"`
	// Error says why discovery refused the workload (no backup of it can
	// run until it is fixed).
	Error string `json:"error,omitempty"`
}

// WorkloadServerView is one server of a workload.
type WorkloadServerView struct {
	ID             string               `json:"id"`
	Name           string               `json:"name"`
	Status         string               `json:"status"`
	Flavor         string               `json:"flavor"`
	Image          string               `json:"image,omitempty"`
	BootFromVolume bool                 `json:"boot_from_volume"`
	Volumes        []WorkloadVolumeView `json:"volumes"`
	// EphemeralGiB is the size of each ephemeral disk.
	EphemeralGiB []int `json:"ephemeral_gib,omitempty"`
}

// WorkloadVolumeView is one Cinder volume of a server.
type WorkloadVolumeView struct {
	ID       string `json:"id"`
	Name     string `json:"name,omitempty"`
	SizeGiB  int    `json:"size_gib"`
	Device   string `json:"device,omitempty"`
	Bootable bool   `json:"bootable"`
}

// msgWorkloadRefused is what a tenant reads of a refused discovery: not
// the cloud's message, which names the other project and its resource.
const msgWorkloadRefused = "Discovery refuses this workload: one of its servers or volumes belongs to another project."

func workloadView(projectID string, d DiscoveredWorkload) WorkloadView {
	v := WorkloadView{Name: d.Name, ProjectID: projectID, Servers: []WorkloadServerView{}}
	if d.Err != nil || d.Workload == nil {
		v.Error = msgWorkloadRefused
		return v
	}
	at := d.Workload.DiscoveredAt
	v.DiscoveredAt = &at
	for _, s := range d.Workload.Servers {
		sv := WorkloadServerView{ID: s.ID, Name: s.Name, Status: s.Status, Flavor: s.Flavor.Name,
			BootFromVolume: s.BootFromVolume, Volumes: []WorkloadVolumeView{}}
		if s.Image != nil {
			sv.Image = s.Image.Name
			if sv.Image == "" {
				sv.Image = s.Image.ID
			}
		}
		for _, vol := range s.Volumes {
			sv.Volumes = append(sv.Volumes, WorkloadVolumeView{ID: vol.ID, Name: vol.Name, SizeGiB: vol.SizeGB, Device: vol.Device, Bootable: vol.Bootable})
		}
		for _, e := range s.Ephemeral {
			sv.EphemeralGiB = append(sv.EphemeralGiB, e.SizeGB)
		}
		v.Servers = append(v.Servers, sv)
	}
	return v
}

// listWorkloads is GET /v1/workloads: the workloads of the token's
// project (or of project_id, with workload:list there) as discovery finds
// them now.
func (s *Server) listWorkloads(w http.ResponseWriter, r *http.Request, id *Identity) error {
	project := id.ProjectID
	if p := r.URL.Query().Get("project_id"); p != "" {
		if !projectIDRE.MatchString(p) {
			return errorf(http.StatusBadRequest, "Invalid project_id %q.", p)
		}
		project = p
	}
	if err := s.require(r.Context(), id, ActionWorkloadList, project, nil); err != nil {
		return err
	}
	if s.cfg.Workloads == nil {
		return errorf(http.StatusNotImplemented, "This raksha-api has no cloud connection to discover workloads with.")
	}
	ws, err := s.cfg.Workloads.Workloads(r.Context(), project)
	if err != nil {
		return &Error{Status: http.StatusServiceUnavailable, Message: "The cloud cannot list the project's workloads now; try again later.", Err: err}
	}
	out := struct {
		Workloads []WorkloadView `json:"workloads"`
	}{Workloads: []WorkloadView{}}
	for _, d := range ws {
		out.Workloads = append(out.Workloads, workloadView(project, d))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
