package cloud

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servergroups"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/openstack/orchestration/v1/stackresources"
	"github.com/gophercloud/gophercloud/v2/openstack/orchestration/v1/stacks"
)

// WorkloadKey is the server metadata key that names a server's workload.
const WorkloadKey = "raksha.workload"

// Selector says which servers make up a workload. Exactly one of Workload,
// Tag, Stack, ServerGroup and ServerIDs is set; Include and Exclude then
// filter by server name.
type Selector struct {
	// Workload selects servers whose metadata raksha.workload equals it.
	Workload string `json:"workload,omitempty"`
	// Tag selects servers with this Nova tag.
	Tag string `json:"tag,omitempty"`
	// Stack selects the OS::Nova::Server resources of a Heat stack (name
	// or id), nested stacks included.
	Stack string `json:"stack,omitempty"`
	// ServerGroup selects the members of a server group (name or id).
	ServerGroup string `json:"server_group,omitempty"`
	// ServerIDs selects servers by id.
	ServerIDs []string `json:"server_ids,omitempty"`
	// Include keeps only servers whose name matches; Exclude drops those
	// whose name matches (Go regular expressions).
	Include string `json:"include,omitempty"`
	Exclude string `json:"exclude,omitempty"`
	// AllProjects searches every project (admin only; metadata, tag and
	// server group selectors).
	AllProjects bool `json:"all_projects,omitempty"`
}

// String describes the selector for logs and errors.
func (s Selector) String() string {
	switch {
	case s.Workload != "":
		return fmt.Sprintf("metadata %s=%s", WorkloadKey, s.Workload)
	case s.Tag != "":
		return "tag " + s.Tag
	case s.Stack != "":
		return "Heat stack " + s.Stack
	case s.ServerGroup != "":
		return "server group " + s.ServerGroup
	case len(s.ServerIDs) > 0:
		return fmt.Sprintf("servers %v", s.ServerIDs)
	}
	return "no selector"
}

func (s Selector) validate() error {
	n := 0
	for _, set := range []bool{s.Workload != "", s.Tag != "", s.Stack != "", s.ServerGroup != "", len(s.ServerIDs) > 0} {
		if set {
			n++
		}
	}
	if n != 1 {
		return &Error{Op: "discover workload", Kind: ErrBadRequest, Msg: "give exactly one of workload (metadata), tag, stack, server group or server ids"}
	}
	return nil
}

// Discover finds the servers of a workload now; it is meant to be run on
// every backup so that servers added to or removed from the workload are
// caught. Servers come sorted by name, then id.
func (c *Client) Discover(ctx context.Context, sel Selector) ([]servers.Server, error) {
	if err := sel.validate(); err != nil {
		return nil, err
	}
	op := "discover workload by " + sel.String()
	var include, exclude *regexp.Regexp
	var err error
	if sel.Include != "" {
		if include, err = regexp.Compile(sel.Include); err != nil {
			return nil, &Error{Op: op, Kind: ErrBadRequest, Msg: fmt.Sprintf("include pattern %q: %v", sel.Include, err)}
		}
	}
	if sel.Exclude != "" {
		if exclude, err = regexp.Compile(sel.Exclude); err != nil {
			return nil, &Error{Op: op, Kind: ErrBadRequest, Msg: fmt.Sprintf("exclude pattern %q: %v", sel.Exclude, err)}
		}
	}
	if sel.AllProjects && !c.IsAdmin() {
		return nil, &Error{Op: op, Kind: ErrForbidden, Msg: "all projects needs the admin role"}
	}
	var found []servers.Server
	switch {
	case sel.Workload != "":
		all, err := c.listServers(ctx, servers.ListOpts{AllTenants: sel.AllProjects})
		if err != nil {
			return nil, classify(op, err)
		}
		for _, s := range all {
			if s.Metadata[WorkloadKey] == sel.Workload {
				found = append(found, s)
			}
		}
	case sel.Tag != "":
		found, err = c.listServers(ctx, servers.ListOpts{AllTenants: sel.AllProjects, Tags: sel.Tag})
		if err != nil {
			return nil, classify(op, err)
		}
	case sel.Stack != "":
		ids, err := c.stackServerIDs(ctx, sel.Stack)
		if err != nil {
			return nil, classify(op, err)
		}
		if found, err = c.getServers(ctx, ids); err != nil {
			return nil, classify(op, err)
		}
	case sel.ServerGroup != "":
		g, err := c.findServerGroup(ctx, sel.ServerGroup, sel.AllProjects)
		if err != nil {
			return nil, classify(op, err)
		}
		if found, err = c.getServers(ctx, g.Members); err != nil {
			return nil, classify(op, err)
		}
	default:
		if found, err = c.getServers(ctx, sel.ServerIDs); err != nil {
			return nil, classify(op, err)
		}
	}
	out := found[:0]
	for _, s := range found {
		if include != nil && !include.MatchString(s.Name) || exclude != nil && exclude.MatchString(s.Name) {
			continue
		}
		if err := c.checkServerProject(op, &s, sel); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].ID < out[j].ID
	})
	c.log.Debug("discovered workload", "selector", sel.String(), "servers", len(out))
	return out, nil
}

// WorkloadNames lists the workloads of this client's project: the
// distinct values of the raksha.workload metadata of its servers, sorted.
// Only the project's own servers are listed (never all projects), so an
// admin client scoped to a tenant's project names only that tenant's
// workloads.
func (c *Client) WorkloadNames(ctx context.Context) ([]string, error) {
	all, err := c.listServers(ctx, servers.ListOpts{})
	if err != nil {
		return nil, classify("list workloads", err)
	}
	seen := map[string]bool{}
	var out []string
	for _, s := range all {
		if w := s.Metadata[WorkloadKey]; w != "" && (s.TenantID == "" || s.TenantID == c.projectID) && !seen[w] {
			seen[w] = true
			out = append(out, w)
		}
	}
	sort.Strings(out)
	return out, nil
}

// checkServerProject refuses a server that is not in the client's project
// (Nova's tenant_id): an admin's Nova shows any project's server by id, so
// a workload naming another project's server by id, stack or server group
// would otherwise back it up into this project's workload. Only a selector
// with AllProjects (admin only, checked before) spans projects.
func (c *Client) checkServerProject(op string, s *servers.Server, sel Selector) error {
	if sel.AllProjects || s.TenantID == c.projectID {
		return nil
	}
	owner := s.TenantID
	if owner == "" {
		owner = "(not given by Nova)"
	}
	return &Error{Op: op, Kind: ErrForbidden, Msg: fmt.Sprintf("server %s (%s) belongs to project %s, not to the workload's project %s",
		s.Name, s.ID, owner, c.projectID)}
}

// DiscoverWorkload discovers the servers of a workload and captures each.
func (c *Client) DiscoverWorkload(ctx context.Context, name string, sel Selector) (*Workload, error) {
	list, err := c.Discover(ctx, sel)
	if err != nil {
		return nil, err
	}
	w := &Workload{Name: name, Selector: sel, ProjectID: c.projectID, DiscoveredAt: time.Now().UTC()}
	for i := range list {
		m, err := c.captureServer(ctx, &list[i])
		if err != nil {
			return nil, fmt.Errorf("discover workload %s: %w", name, err)
		}
		w.Servers = append(w.Servers, *m)
	}
	if err := c.fillServerGroups(ctx, w.Servers); err != nil {
		return nil, fmt.Errorf("discover workload %s: %w", name, err)
	}
	return w, nil
}

// fillServerGroups sets the server groups of servers captured from a list:
// Nova answers server_groups only when it shows one server, never in a list
// (seen on Zed), so the groups' members are read once instead.
func (c *Client) fillServerGroups(ctx context.Context, ms []ServerMeta) error {
	if len(ms) == 0 {
		return nil
	}
	pages, err := servergroups.List(c.compute, servergroups.ListOpts{}).AllPages(ctx)
	if err != nil {
		return classify("list server groups", err)
	}
	gs, err := servergroups.ExtractServerGroups(pages)
	if err != nil {
		return classify("list server groups", err)
	}
	for i := range ms {
		if ms[i].ServerGroups != nil {
			continue
		}
		for _, g := range gs {
			if slices.Contains(g.Members, ms[i].ID) {
				ms[i].ServerGroups = append(ms[i].ServerGroups, g.ID)
			}
		}
	}
	return nil
}

func (c *Client) listServers(ctx context.Context, opts servers.ListOpts) ([]servers.Server, error) {
	pages, err := servers.List(c.compute, opts).AllPages(ctx)
	if err != nil {
		return nil, err
	}
	return servers.ExtractServers(pages)
}

// getServers shows each server; a missing one is an ErrNotFound naming it.
func (c *Client) getServers(ctx context.Context, ids []string) ([]servers.Server, error) {
	var out []servers.Server
	for _, id := range ids {
		s, err := servers.Get(ctx, c.compute, id).Extract()
		if err != nil {
			return nil, classify("show server "+id, err)
		}
		out = append(out, *s)
	}
	return out, nil
}

// stackServerIDs lists the servers of a stack, nested stacks included.
func (c *Client) stackServerIDs(ctx context.Context, nameOrID string) ([]string, error) {
	if c.orchestration == nil {
		return nil, &Error{Op: "find stack " + nameOrID, Kind: ErrNotFound, Err: errNoHeat, Msg: errNoHeat.Error()}
	}
	st, err := stacks.Find(ctx, c.orchestration, nameOrID).Extract()
	if err != nil {
		return nil, classify("find stack "+nameOrID, err)
	}
	pages, err := stackresources.List(c.orchestration, st.Name, st.ID, stackresources.ListOpts{Depth: 10}).AllPages(ctx)
	if err != nil {
		return nil, classify("list resources of stack "+st.Name, err)
	}
	res, err := stackresources.ExtractResources(pages)
	if err != nil {
		return nil, classify("list resources of stack "+st.Name, err)
	}
	var ids []string
	seen := map[string]bool{}
	for _, r := range res {
		if r.Type == "OS::Nova::Server" && r.PhysicalID != "" && !seen[r.PhysicalID] {
			seen[r.PhysicalID] = true
			ids = append(ids, r.PhysicalID)
		}
	}
	return ids, nil
}

// findServerGroup gets a server group by id, or by name among the listed ones.
func (c *Client) findServerGroup(ctx context.Context, nameOrID string, all bool) (*servergroups.ServerGroup, error) {
	g, err := servergroups.Get(ctx, c.compute, nameOrID).Extract()
	if err == nil {
		return g, nil
	}
	if !errors.Is(classify("", err), ErrNotFound) {
		return nil, classify("show server group "+nameOrID, err)
	}
	pages, err := servergroups.List(c.compute, servergroups.ListOpts{AllProjects: all}).AllPages(ctx)
	if err != nil {
		return nil, classify("list server groups", err)
	}
	gs, err := servergroups.ExtractServerGroups(pages)
	if err != nil {
		return nil, classify("list server groups", err)
	}
	var match []servergroups.ServerGroup
	for _, g := range gs {
		if g.Name == nameOrID {
			match = append(match, g)
		}
	}
	switch len(match) {
	case 0:
		return nil, &Error{Op: "find server group " + nameOrID, Kind: ErrNotFound, Msg: "no server group with this name or id"}
	case 1:
		return &match[0], nil
	}
	return nil, &Error{Op: "find server group " + nameOrID, Kind: ErrConflict, Msg: fmt.Sprintf("%d server groups have this name; give the id", len(match))}
}
