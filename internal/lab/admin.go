package lab

import (
	"errors"
	"fmt"
	"sort"
	"time"
)

// Quota is a project's limits, as Nova and Cinder enforce them. A zero field
// keeps the default (10 instances, 20 cores, 51200 MiB RAM, 10 volumes,
// 1000 GiB, 10 snapshots).
type Quota struct {
	Instances, Cores, RAM, Volumes, Gigabytes, Snapshots int
}

func defaultQuota() quota {
	return quota{Instances: 10, Cores: 20, RAM: 51200, Volumes: 10, Gigabytes: 1000, Snapshots: 10}
}

// Names of what every lab has from its first start.
const (
	// AdminProject and AdminUser are the cloud admin's project and user.
	AdminProject = "admin"
	AdminUser    = "admin"
	// GuestImage is the Glance image of the lab guest.
	GuestImage = "raksha-lab-guest"
	// Network and Network2 are shared tenant networks (10.20.0.0/24 and
	// 10.30.0.0/24); a restore can remap from one to the other.
	Network  = "lab-net"
	Network2 = "lab-net-2"
	// Flavor has one vCPU, 256 MiB RAM, a 1 GiB root disk and a 1 GiB
	// ephemeral disk; FlavorNoEphemeral has no ephemeral disk;
	// FlavorBigRoot is Flavor with a 2 GiB root disk and a 64 MiB swap
	// disk (a resize target).
	Flavor            = "m1.lab"
	FlavorNoEphemeral = "m1.lab.noeph"
	FlavorBigRoot     = "m1.lab.bigroot"
	// VolumeType is the lab's default volume type (qcow2 files).
	VolumeType = "lab-qcow2"
)

// seedDefaults creates what a fresh lab needs; l.mu must be held.
func (l *Lab) seedDefaults() {
	st := l.st
	now := time.Now()
	if len(st.Flavors) == 0 {
		st.Flavors["1"] = &flavor{ID: "1", Name: Flavor, VCPUs: 1, RAM: 256, Disk: 1, Ephemeral: 1, IsPublic: true,
			ExtraSpecs: map[string]string{"hw:cpu_policy": "shared", "hw_rng:allowed": "True"}}
		st.Flavors["2"] = &flavor{ID: "2", Name: FlavorNoEphemeral, VCPUs: 1, RAM: 256, Disk: 1, IsPublic: true,
			ExtraSpecs: map[string]string{"hw:cpu_policy": "shared"}}
		st.Flavors["3"] = &flavor{ID: "3", Name: "m1.lab.large", VCPUs: 2, RAM: 512, Disk: 1, Ephemeral: 2, IsPublic: true,
			ExtraSpecs: map[string]string{"hw:cpu_policy": "shared", "hw:mem_page_size": "small"}}
	}
	if st.Flavors["4"] == nil {
		st.Flavors["4"] = &flavor{ID: "4", Name: FlavorBigRoot, VCPUs: 1, RAM: 256, Disk: 2, Ephemeral: 1, Swap: 64, IsPublic: true,
			ExtraSpecs: map[string]string{"hw:cpu_policy": "shared"}}
	}
	if len(st.VolumeTypes) == 0 {
		id := newID()
		st.VolumeTypes[id] = &volumeType{ID: id, Name: VolumeType, Description: "qcow2 files of the lab", IsPublic: true,
			ExtraSpecs: map[string]string{"volume_backend_name": "lab-qcow2"}}
		id = newID()
		st.VolumeTypes[id] = &volumeType{ID: id, Name: "__DEFAULT__", Description: "Default Volume Type", IsPublic: true, ExtraSpecs: map[string]string{}}
	}
	if l.rbd != nil {
		found := false
		for _, t := range st.VolumeTypes {
			found = found || t.Name == VolumeTypeRBD
		}
		if !found {
			id := newID()
			st.VolumeTypes[id] = &volumeType{ID: id, Name: VolumeTypeRBD, Description: "RBD images in the lab's Ceph cluster", IsPublic: true,
				ExtraSpecs: map[string]string{"volume_backend_name": "lab-rbd"}}
		}
	}
	if len(st.Networks) == 0 {
		for i, name := range []string{Network, Network2} {
			n := &network{ID: newID(), Name: name, Shared: true, MTU: 1450, Created: now}
			st.Networks[n.ID] = n
			base := fmt.Sprintf("10.%d.0", 20+10*i)
			s := &subnet{ID: newID(), Name: name + "-subnet", NetworkID: n.ID, CIDR: base + ".0/24", GatewayIP: base + ".1", IPVersion: 4, NextIP: 9, Created: now}
			st.Subnets[s.ID] = s
		}
	}
	// Labs made before Neutron's timestamps were kept get them now.
	for _, n := range st.Networks {
		setIfZero(&n.Created, now)
	}
	for _, s := range st.Subnets {
		setIfZero(&s.Created, now)
	}
	for _, g := range st.SecGroups {
		setIfZero(&g.Created, now)
	}
	for _, r := range st.SecGroupRules {
		setIfZero(&r.Created, now)
	}
	if _, err := l.ensureProjectLocked(AdminProject); err != nil {
		l.log.Error("seed lab", "err", err)
	}
	for _, p := range st.Projects {
		if p.Name == AdminProject {
			for _, n := range st.Networks {
				if n.ProjectID == "" {
					n.ProjectID = p.ID
				}
			}
			for _, s := range st.Subnets {
				if s.ProjectID == "" {
					s.ProjectID = p.ID
				}
			}
			if len(st.Images) == 0 {
				id := newID()
				st.Images[id] = &image{ID: id, Name: GuestImage, Owner: p.ID, Visibility: "public", DiskFormat: "raw", MinDisk: 1, MinRAM: 256, Created: now}
			}
		}
	}
}

func setIfZero(t *time.Time, v time.Time) {
	if t.IsZero() {
		*t = v
	}
}

// EnsureProject creates the project if it does not exist (with a default
// security group, as Neutron creates one) and returns its id.
func (l *Lab) EnsureProject(name string) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	id, err := l.ensureProjectLocked(name)
	if err != nil {
		return "", err
	}
	return id, l.saveLocked()
}

func (l *Lab) ensureProjectLocked(name string) (string, error) {
	if name == "" {
		return "", errors.New("ensure project: empty name")
	}
	for _, p := range l.st.Projects {
		if p.Name == name {
			return p.ID, nil
		}
	}
	p := &project{ID: hexID(), Name: name, Quota: defaultQuota()}
	l.st.Projects[p.ID] = p
	now := time.Now()
	sg := &secGroup{ID: newID(), Name: "default", Description: "Default security group", ProjectID: p.ID, Created: now}
	l.st.SecGroups[sg.ID] = sg
	for _, et := range []string{"IPv4", "IPv6"} {
		in := &secRule{ID: newID(), GroupID: sg.ID, Direction: "ingress", EtherType: et, RemoteGroupID: sg.ID, ProjectID: p.ID, Created: now}
		out := &secRule{ID: newID(), GroupID: sg.ID, Direction: "egress", EtherType: et, ProjectID: p.ID, Created: now}
		l.st.SecGroupRules[in.ID], l.st.SecGroupRules[out.ID] = in, out
	}
	return p.ID, nil
}

// hexID is a Keystone-style id: 32 hex digits.
func hexID() string {
	id := newID()
	out := make([]byte, 0, 32)
	for i := 0; i < len(id); i++ {
		if id[i] != '-' {
			out = append(out, id[i])
		}
	}
	return string(out)
}

// EnsureUser creates or updates a user with the password and gives it role
// ("admin", "member" or "reader") on the named project, which must exist.
// A new user's default project is that project. The password is kept only
// as a salted hash.
func (l *Lab) EnsureUser(name, password, projectName, role string) (string, error) {
	if role != "admin" && role != "member" && role != "reader" {
		return "", fmt.Errorf("ensure user %s: role %q: want admin, member or reader", name, role)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var p *project
	for _, cand := range l.st.Projects {
		if cand.Name == projectName {
			p = cand
		}
	}
	if p == nil {
		return "", fmt.Errorf("ensure user %s: no project %q", name, projectName)
	}
	var u *user
	for _, cand := range l.st.Users {
		if cand.Name == name {
			u = cand
		}
	}
	if u == nil {
		u = &user{ID: hexID(), Name: name, Roles: map[string]string{}, DefaultProject: p.ID}
		l.st.Users[u.ID] = u
	}
	u.Salt = hexID()
	u.PasswordHash = hashPassword(u.Salt, password)
	u.Roles[p.ID] = role
	return u.ID, l.saveLocked()
}

// SetDefaultProject sets a user's default project (by name; "" clears it),
// as PATCH /v3/users/{id} with default_project_id does. A user without one
// gets an unscoped token when it asks for no scope.
func (l *Lab) SetDefaultProject(userName, projectName string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var u *user
	for _, cand := range l.st.Users {
		if cand.Name == userName {
			u = cand
		}
	}
	if u == nil {
		return fmt.Errorf("set default project of %s: no such user", userName)
	}
	if projectName == "" {
		u.DefaultProject = ""
		return l.saveLocked()
	}
	for _, p := range l.st.Projects {
		if p.Name == projectName {
			u.DefaultProject = p.ID
			return l.saveLocked()
		}
	}
	return fmt.Errorf("set default project of %s: no project %q", userName, projectName)
}

// SetQuota sets a project's quota; zero fields keep their current value.
func (l *Lab) SetQuota(projectName string, q Quota) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.st.Projects {
		if p.Name != projectName {
			continue
		}
		set := func(dst *int, v int) {
			if v > 0 {
				*dst = v
			}
		}
		set(&p.Quota.Instances, q.Instances)
		set(&p.Quota.Cores, q.Cores)
		set(&p.Quota.RAM, q.RAM)
		set(&p.Quota.Volumes, q.Volumes)
		set(&p.Quota.Gigabytes, q.Gigabytes)
		set(&p.Quota.Snapshots, q.Snapshots)
		return l.saveLocked()
	}
	return fmt.Errorf("set quota: no project %q", projectName)
}

// StackResource is one resource of a lab Heat stack. PhysicalID is the id of
// what it made (a server id for OS::Nova::Server, the nested stack's id for a
// nested stack resource).
type StackResource struct {
	Name       string
	Type       string
	PhysicalID string
}

// CreateStack records a Heat stack (CREATE_COMPLETE) in a project, nested in
// parent when parentID is not empty. The lab does not run Heat templates: a
// stack is a record of resources made by other means.
func (l *Lab) CreateStack(projectID, name, parentID string, resources []StackResource) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.st.Projects[projectID] == nil {
		return "", fmt.Errorf("create stack %s: no project %s", name, projectID)
	}
	if parentID != "" && l.st.Stacks[parentID] == nil {
		return "", fmt.Errorf("create stack %s: no parent stack %s", name, parentID)
	}
	s := &stack{ID: newID(), Name: name, ProjectID: projectID, Status: "CREATE_COMPLETE", ParentID: parentID, Created: time.Now()}
	for _, r := range resources {
		s.Resources = append(s.Resources, stackResource(r))
	}
	l.st.Stacks[s.ID] = s
	return s.ID, l.saveLocked()
}

// ServerInfo is the lab's own view of a server, for `raksha lab status`.
type ServerInfo struct {
	ID, Name, Project, Status string
	InstanceRef
	Volumes []string
}

// Servers lists every server of every project, sorted by project and name.
func (l *Lab) Servers() []ServerInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []ServerInfo
	for _, s := range l.st.Servers {
		si := ServerInfo{ID: s.ID, Name: s.Name, Status: novaStatus(s), InstanceRef: InstanceRef{s.Host, s.InstanceName}}
		if p := l.st.Projects[s.ProjectID]; p != nil {
			si.Project = p.Name
		}
		for _, a := range s.Attachments {
			si.Volumes = append(si.Volumes, a.VolumeID)
		}
		out = append(out, si)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Project != out[j].Project {
			return out[i].Project < out[j].Project
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// ReadServers lists the servers recorded in a lab directory's state without
// starting the lab (for `raksha lab status`), like Servers.
func ReadServers(dir string) ([]ServerInfo, error) {
	st, err := loadState(dir)
	if err != nil {
		return nil, err
	}
	l := &Lab{st: st, dir: dir}
	return l.Servers(), nil
}
