package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"github.com/raksha-backup/raksha/internal/cloud"
)

// CloudDiscoverer discovers workloads through the OpenStack adapter.
type CloudDiscoverer struct {
	Client *cloud.Client
}

var unsafe = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// safeName turns a server or volume name into a backup path component.
func safeName(s, fallback string) string {
	n := strings.Trim(unsafe.ReplaceAllString(s, "_"), "._-")
	if n == "" {
		n = fallback
	}
	if len(n) > 128 {
		n = n[:128]
	}
	return n
}

// ProjectID implements ProjectResolver: the id of project (a name or an
// id; "" the cloud user's own), as Keystone scopes a token to it.
func (d *CloudDiscoverer) ProjectID(ctx context.Context, project string) (string, error) {
	c := d.Client
	if project == "" || project == c.ProjectID() || project == c.ProjectName() {
		return c.ProjectID(), nil
	}
	pc, err := c.ForProject(ctx, project)
	if err != nil {
		return "", err
	}
	return pc.ProjectID(), nil
}

// Discover implements Discoverer: the servers the selector finds, each disk
// with its locator, and the captured metadata as the backup's source.
func (d *CloudDiscoverer) Discover(ctx context.Context, sel Selector, project string) ([]VM, json.RawMessage, error) {
	c := d.Client
	if project != "" && project != c.ProjectID() && project != c.ProjectName() {
		pc, err := c.ForProject(ctx, project)
		if err != nil {
			return nil, nil, err
		}
		c = pc
	}
	w, err := c.DiscoverWorkload(ctx, sel.String(), sel)
	if err != nil {
		return nil, nil, err
	}
	var vms []VM
	names := map[string]bool{}
	for _, s := range w.Servers {
		if s.Host == "" || s.InstanceName == "" {
			return nil, nil, fmt.Errorf("server %s (%s): no host or instance name (Raksha's cloud user needs the admin role)", s.Name, s.ID)
		}
		vm := VM{ID: s.ID, Name: safeName(s.Name, s.ID), Host: s.Host, Instance: s.InstanceName}
		if names[vm.Name] {
			vm.Name = safeName(s.Name+"-"+s.ID[:min(8, len(s.ID))], s.ID)
		}
		names[vm.Name] = true
		for _, v := range s.Volumes {
			if v.Locator.IsZero() {
				return nil, nil, fmt.Errorf("server %s volume %s: no locator", s.Name, v.ID)
			}
			vm.Disks = append(vm.Disks, newDisk("vol-"+v.ID, v.Locator, v.ID, int64(v.SizeGB)<<30))
		}
		if s.Root != nil && !s.Root.Locator.IsZero() {
			vm.Disks = append(vm.Disks, newDisk(RootDiskName, s.Root.Locator, "", int64(s.Root.SizeGB)<<30))
		}
		if s.Swap != nil && !s.Swap.Locator.IsZero() {
			vm.Disks = append(vm.Disks, newDisk(SwapDiskName, s.Swap.Locator, "", int64(s.Swap.SizeMB)<<20))
		}
		for _, e := range s.Ephemeral {
			if e.Locator.IsZero() {
				continue
			}
			vm.Disks = append(vm.Disks, newDisk(fmt.Sprintf("disk%d", e.Index), e.Locator, "", int64(e.SizeGB)<<30))
		}
		vms = append(vms, vm)
	}
	meta, err := json.Marshal(w)
	if err != nil {
		return nil, nil, fmt.Errorf("encode workload metadata: %w", err)
	}
	return vms, meta, nil
}

func newDisk(name string, l cloud.Locator, volume string, size int64) Disk {
	return Disk{Name: safeName(name, "disk"), Locator: Locator(l.String()), VolumeID: volume, Size: size}
}
