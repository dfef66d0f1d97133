package cloud

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/attachments"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/flavors"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/volumeattach"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/extensions/security/groups"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/networks"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/ports"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/subnets"
)

// Capture reads everything about one server that a restore needs.
func (c *Client) Capture(ctx context.Context, serverID string) (*ServerMeta, error) {
	s, err := servers.Get(ctx, c.compute, serverID).Extract()
	if err != nil {
		return nil, classify("capture server "+serverID, err)
	}
	if s.ID != serverID {
		return nil, &Error{Op: "capture server " + serverID, Kind: ErrFailed, Msg: fmt.Sprintf("Nova answered with server %q", s.ID)}
	}
	return c.captureServer(ctx, s)
}

// captureServer fills a ServerMeta from a server already shown.
func (c *Client) captureServer(ctx context.Context, s *servers.Server) (*ServerMeta, error) {
	op := fmt.Sprintf("capture server %s (%s)", s.Name, s.ID)
	m := &ServerMeta{
		ID: s.ID, Name: s.Name, ProjectID: s.TenantID, UserID: s.UserID, Status: s.Status,
		Metadata: s.Metadata, AvailabilityZone: s.AvailabilityZone, KeyName: s.KeyName, ConfigDrive: s.ConfigDrive,
		Host: s.Host, InstanceName: s.InstanceName, HypervisorHostname: s.HypervisorHostname,
	}
	if s.Tags != nil {
		m.Tags = append([]string(nil), *s.Tags...)
	}
	if s.ServerGroups != nil {
		m.ServerGroups = append([]string(nil), *s.ServerGroups...)
	}
	if s.Userdata != nil {
		m.UserData = *s.Userdata
	}
	var err error
	if m.Flavor, err = c.captureFlavor(ctx, s.Flavor); err != nil {
		return nil, classify(op, err)
	}
	if id, _ := s.Image["id"].(string); id != "" {
		m.Image = &ImageMeta{ID: id}
		if im, err := images.Get(ctx, c.image, id).Extract(); err == nil {
			m.Image.Name, m.Image.DiskFormat, m.Image.MinDisk, m.Image.MinRAM = im.Name, im.DiskFormat, im.MinDiskGigabytes, im.MinRAMMegabytes
		} else {
			// The image may have been deleted since; the id is still useful.
			c.log.Debug("capture: image not readable", "server", s.ID, "image", id, "err", err)
		}
	} else {
		m.BootFromVolume = true
	}
	if err := c.capturePorts(ctx, m); err != nil {
		return nil, classify(op, err)
	}
	if err := c.captureVolumes(ctx, m, s); err != nil {
		return nil, classify(op, err)
	}
	for i := 0; i < min(m.Flavor.Ephemeral, 1); i++ {
		e := EphemeralMeta{Index: i, SizeGB: m.Flavor.Ephemeral}
		if m.Host != "" && m.InstanceName != "" {
			e.Locator = Locator{Scheme: "qemu", Host: m.Host, Instance: m.InstanceName, Node: QEMUEphemeralNode(i), Serial: QEMUEphemeralNode(i)}
			if c.cfg.HostDriver == "libvirt" {
				e.Locator = Locator{Scheme: "libvirt", Host: m.Host, Instance: m.ID, Node: fmt.Sprintf("disk.eph%d", i)}
			}
		}
		m.Ephemeral = append(m.Ephemeral, e)
	}
	if !m.BootFromVolume && c.cfg.HostDriver == "libvirt" && m.Host != "" && m.InstanceName != "" {
		size := m.Flavor.Disk
		if size == 0 && m.Image != nil {
			size = m.Image.MinDisk
		}
		m.Root = &RootDiskMeta{SizeGB: size, Locator: Locator{Scheme: "libvirt", Host: m.Host, Instance: m.ID, Node: RootDiskNode}}
	}
	if m.Flavor.Swap > 0 && c.cfg.HostDriver == "libvirt" && m.Host != "" && m.InstanceName != "" {
		m.Swap = &SwapDiskMeta{SizeMB: m.Flavor.Swap, Locator: Locator{Scheme: "libvirt", Host: m.Host, Instance: m.ID, Node: SwapDiskNode}}
	}
	return m, nil
}

// captureFlavor reads the embedded flavor (microversion >= 2.47) or, for
// older microversions, the flavor and its extra specs by id.
func (c *Client) captureFlavor(ctx context.Context, f map[string]any) (FlavorMeta, error) {
	num := func(k string) int {
		switch v := f[k].(type) {
		case float64:
			return int(v)
		}
		return 0
	}
	if name, ok := f["original_name"].(string); ok {
		fm := FlavorMeta{Name: name, VCPUs: num("vcpus"), RAM: num("ram"), Disk: num("disk"), Ephemeral: num("ephemeral"), Swap: num("swap")}
		if es, ok := f["extra_specs"].(map[string]any); ok {
			fm.ExtraSpecs = map[string]string{}
			for k, v := range es {
				fm.ExtraSpecs[k] = fmt.Sprint(v)
			}
		}
		return fm, nil
	}
	id, _ := f["id"].(string)
	fl, err := flavors.Get(ctx, c.compute, id).Extract()
	if err != nil {
		return FlavorMeta{}, classify("show flavor "+id, err)
	}
	fm := FlavorMeta{ID: fl.ID, Name: fl.Name, VCPUs: fl.VCPUs, RAM: fl.RAM, Disk: fl.Disk, Ephemeral: fl.Ephemeral, Swap: fl.Swap}
	specs, err := flavors.ListExtraSpecs(ctx, c.compute, id).Extract()
	if err != nil {
		return FlavorMeta{}, classify("list extra specs of flavor "+id, err)
	}
	fm.ExtraSpecs = specs
	return fm, nil
}

func (c *Client) capturePorts(ctx context.Context, m *ServerMeta) error {
	pages, err := ports.List(c.network, ports.ListOpts{DeviceID: m.ID}).AllPages(ctx)
	if err != nil {
		return classify("list ports", err)
	}
	ps, err := ports.ExtractPorts(pages)
	if err != nil {
		return classify("list ports", err)
	}
	netNames := map[string]string{}
	cidrs := map[string]string{}
	sgIDs := map[string]bool{}
	for _, p := range ps {
		pm := PortMeta{ID: p.ID, NetworkID: p.NetworkID, MAC: p.MACAddress, SecurityGroups: p.SecurityGroups}
		if _, ok := netNames[p.NetworkID]; !ok {
			if n, err := networks.Get(ctx, c.network, p.NetworkID).Extract(); err == nil {
				netNames[p.NetworkID] = n.Name
			} else {
				netNames[p.NetworkID] = ""
			}
		}
		pm.NetworkName = netNames[p.NetworkID]
		for _, ip := range p.FixedIPs {
			if _, ok := cidrs[ip.SubnetID]; !ok {
				if sn, err := subnets.Get(ctx, c.network, ip.SubnetID).Extract(); err == nil {
					cidrs[ip.SubnetID] = sn.CIDR
				}
			}
			pm.FixedIPs = append(pm.FixedIPs, FixedIP{SubnetID: ip.SubnetID, SubnetCIDR: cidrs[ip.SubnetID], IPAddress: ip.IPAddress})
		}
		for _, id := range p.SecurityGroups {
			sgIDs[id] = true
		}
		m.Ports = append(m.Ports, pm)
	}
	ids := make([]string, 0, len(sgIDs))
	for id := range sgIDs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		g, err := groups.Get(ctx, c.network, id).Extract()
		if err != nil {
			return classify("show security group "+id, err)
		}
		gm := SecurityGroupMeta{ID: g.ID, Name: g.Name, Description: g.Description}
		for _, r := range g.Rules {
			gm.Rules = append(gm.Rules, RuleMeta{
				Direction: r.Direction, EtherType: r.EtherType, Protocol: r.Protocol,
				PortRangeMin: r.PortRangeMin, PortRangeMax: r.PortRangeMax,
				RemoteIPPrefix: r.RemoteIPPrefix, RemoteGroupID: r.RemoteGroupID,
			})
		}
		m.SecurityGroups = append(m.SecurityGroups, gm)
	}
	return nil
}

func (c *Client) captureVolumes(ctx context.Context, m *ServerMeta, s *servers.Server) error {
	pages, err := volumeattach.List(c.compute, s.ID).AllPages(ctx)
	if err != nil {
		return classify("list volume attachments", err)
	}
	atts, err := volumeattach.ExtractVolumeAttachments(pages)
	if err != nil {
		return classify("list volume attachments", err)
	}
	rootDev := "/dev/vda"
	if s.RootDeviceName != nil && *s.RootDeviceName != "" {
		rootDev = *s.RootDeviceName
	}
	for _, a := range atts {
		v, err := volumes.Get(ctx, c.volume, a.VolumeID).Extract()
		if err != nil {
			return classify("show volume "+a.VolumeID, err)
		}
		if v.ID != a.VolumeID {
			return &Error{Op: "show volume " + a.VolumeID, Kind: ErrFailed, Msg: fmt.Sprintf("Cinder answered with volume %q", v.ID)}
		}
		// Cinder shows an admin the owner (os-vol-tenant-attr:tenant_id):
		// a volume of another project attached to the server is not this
		// workload's to back up.
		if v.TenantID != "" && m.ProjectID != "" && v.TenantID != m.ProjectID {
			return &Error{Op: "capture server " + s.ID, Kind: ErrForbidden, Msg: fmt.Sprintf("volume %s (%s) attached to server %s belongs to project %s, not to the server's project %s",
				v.Name, v.ID, s.Name, v.TenantID, m.ProjectID)}
		}
		vm := VolumeMeta{
			ID: v.ID, Name: v.Name, SizeGB: v.Size, Type: v.VolumeType, Bootable: v.Bootable == "true",
			Encrypted: v.Encrypted, Device: a.Device, Metadata: v.Metadata, Status: v.Status,
			AvailabilityZone: v.AvailabilityZone, BootIndex: -1,
		}
		if a.DeleteOnTermination != nil {
			vm.DeleteOnTermination = *a.DeleteOnTermination
		}
		if m.BootFromVolume && a.Device == rootDev {
			vm.BootIndex = 0
		}
		if m.Host != "" && m.InstanceName != "" {
			vm.Locator = Locator{Scheme: "qemu", Host: m.Host, Instance: m.InstanceName, Node: QEMUVolumeNode(v.ID), Serial: volumeSerial(v.ID)}
			if c.cfg.HostDriver == "libvirt" {
				vm.Locator = Locator{Scheme: "libvirt", Host: m.Host, Instance: m.ID, Node: "vol-" + v.ID}
			}
		}
		for _, va := range v.Attachments {
			if va.ServerID != s.ID || va.AttachmentID == "" || c.cfg.RBDVolumes == "host" {
				continue
			}
			if l, ok := c.rbdLocator(ctx, va.AttachmentID); ok {
				vm.Locator = l
			}
		}
		m.Volumes = append(m.Volumes, vm)
	}
	return nil
}

// rbdLocator reads a volume attachment's connection info (Cinder's
// attachment show, microversion 3.27 on; a read, unlike
// os-initialize_connection, which makes exports on some backends) and
// returns the rbd: locator of a volume Cinder keeps in RBD, so that a data
// worker reads it from Ceph with snapshot diffs instead of the host worker
// through QEMU. ok is false for any other connection type, or when the
// attachment cannot be read (an older Cinder, an attachment made before
// the attachments API): then the volume keeps its qemu: locator.
func (c *Client) rbdLocator(ctx context.Context, attachmentID string) (l Locator, ok bool) {
	a, err := attachments.Get(ctx, c.volume, attachmentID).Extract()
	if err != nil {
		// Not silent: an RBD volume read through qemu: works, but without
		// RBD snapshot diffs and only on its compute host.
		c.log.Warn("capture: volume attachment not readable; the volume is read through its QEMU host (qemu: locator)",
			"attachment", attachmentID, "err", err)
		return Locator{}, false
	}
	info := a.ConnectionInfo
	// Cinder stores the driver's data keys beside driver_volume_type;
	// accept the nested form of os-initialize_connection too.
	if data, ok := info["data"].(map[string]any); ok {
		if t, _ := info["driver_volume_type"].(string); t != "" {
			data["driver_volume_type"] = t
		}
		info = data
	}
	if t, _ := info["driver_volume_type"].(string); t != "rbd" {
		return Locator{}, false
	}
	name, _ := info["name"].(string)
	pool, image, found := strings.Cut(name, "/")
	if !found || pool == "" || image == "" {
		c.log.Warn("capture: rbd attachment without POOL/IMAGE name", "attachment", attachmentID, "name", name)
		return Locator{}, false
	}
	return Locator{Scheme: "rbd", Pool: pool, Image: image}, true
}
