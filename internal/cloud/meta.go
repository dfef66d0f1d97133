package cloud

import (
	"fmt"
	"strings"
	"time"
)

// Workload is one discovery run: the servers a selector found, each with the
// metadata to restore it. It is serialisable (JSON) and holds no secret.
type Workload struct {
	Name         string       `json:"name"`
	Selector     Selector     `json:"selector"`
	ProjectID    string       `json:"project_id"`
	DiscoveredAt time.Time    `json:"discovered_at"`
	Servers      []ServerMeta `json:"servers"`
}

// ServerMeta is everything captured about one server: what a restore needs
// to recreate it, and where its disks can be read.
type ServerMeta struct {
	ID               string            `json:"id"`
	Name             string            `json:"name"`
	ProjectID        string            `json:"project_id"`
	UserID           string            `json:"user_id,omitempty"`
	Status           string            `json:"status"`
	Metadata         map[string]string `json:"metadata,omitempty"`
	Tags             []string          `json:"tags,omitempty"`
	Description      string            `json:"description,omitempty"`
	AvailabilityZone string            `json:"availability_zone,omitempty"`
	KeyName          string            `json:"key_name,omitempty"`
	ConfigDrive      bool              `json:"config_drive,omitempty"`
	// UserData is base64 as Nova returns it; only an admin sees it.
	UserData     string   `json:"user_data,omitempty"`
	ServerGroups []string `json:"server_groups,omitempty"`

	Flavor FlavorMeta `json:"flavor"`
	// Image is nil for a server booted from a volume.
	Image          *ImageMeta          `json:"image,omitempty"`
	Ports          []PortMeta          `json:"ports,omitempty"`
	SecurityGroups []SecurityGroupMeta `json:"security_groups,omitempty"`
	Volumes        []VolumeMeta        `json:"volumes,omitempty"`
	Ephemeral      []EphemeralMeta     `json:"ephemeral,omitempty"`
	// Root is the root disk of a server booted from an image, when the
	// compute hosts run libvirt (Config.HostDriver): Nova's
	// <instances_path>/<uuid>/disk; nil otherwise.
	Root *RootDiskMeta `json:"root_disk,omitempty"`
	// Swap is the flavor's swap disk (Nova's <instances_path>/<uuid>/
	// disk.swap) when the compute hosts run libvirt; nil otherwise.
	Swap           *SwapDiskMeta `json:"swap_disk,omitempty"`
	BootFromVolume bool          `json:"boot_from_volume"`

	// Host and InstanceName (admin view): the compute host whose
	// raksha-host-<host> queue runs host work, and the hypervisor's name for
	// the guest. Empty when the caller is not an admin.
	Host               string `json:"host,omitempty"`
	InstanceName       string `json:"instance_name,omitempty"`
	HypervisorHostname string `json:"hypervisor_hostname,omitempty"`
}

// FlavorMeta is a flavor's full spec; restores look it up by name.
type FlavorMeta struct {
	ID         string            `json:"id,omitempty"`
	Name       string            `json:"name"`
	VCPUs      int               `json:"vcpus"`
	RAM        int               `json:"ram_mib"`
	Disk       int               `json:"disk_gib"`
	Ephemeral  int               `json:"ephemeral_gib"`
	Swap       int               `json:"swap_mib"`
	ExtraSpecs map[string]string `json:"extra_specs,omitempty"`
}

// ImageMeta names the image a server was booted from.
type ImageMeta struct {
	ID         string `json:"id"`
	Name       string `json:"name,omitempty"`
	DiskFormat string `json:"disk_format,omitempty"`
	MinDisk    int    `json:"min_disk,omitempty"`
	MinRAM     int    `json:"min_ram,omitempty"`
}

// PortMeta is one network interface of a server.
type PortMeta struct {
	ID             string    `json:"id"`
	NetworkID      string    `json:"network_id"`
	NetworkName    string    `json:"network_name,omitempty"`
	MAC            string    `json:"mac_address"`
	FixedIPs       []FixedIP `json:"fixed_ips,omitempty"`
	SecurityGroups []string  `json:"security_groups,omitempty"` // ids
}

// FixedIP is an address of a port on a subnet.
type FixedIP struct {
	SubnetID   string `json:"subnet_id"`
	SubnetCIDR string `json:"subnet_cidr,omitempty"`
	IPAddress  string `json:"ip_address"`
}

// SecurityGroupMeta is a security group with its rules.
type SecurityGroupMeta struct {
	ID          string     `json:"id"`
	Name        string     `json:"name"`
	Description string     `json:"description,omitempty"`
	Rules       []RuleMeta `json:"rules,omitempty"`
}

// RuleMeta is one security group rule.
type RuleMeta struct {
	Direction      string `json:"direction"`
	EtherType      string `json:"ethertype"`
	Protocol       string `json:"protocol,omitempty"`
	PortRangeMin   int    `json:"port_range_min,omitempty"`
	PortRangeMax   int    `json:"port_range_max,omitempty"`
	RemoteIPPrefix string `json:"remote_ip_prefix,omitempty"`
	RemoteGroupID  string `json:"remote_group_id,omitempty"`
}

// VolumeMeta is one attached Cinder volume.
type VolumeMeta struct {
	ID                  string            `json:"id"`
	Name                string            `json:"name,omitempty"`
	SizeGB              int               `json:"size_gib"`
	Type                string            `json:"type,omitempty"`
	Bootable            bool              `json:"bootable"`
	Encrypted           bool              `json:"encrypted"`
	Device              string            `json:"device,omitempty"`
	Metadata            map[string]string `json:"metadata,omitempty"`
	Status              string            `json:"status"`
	AvailabilityZone    string            `json:"availability_zone,omitempty"`
	BootIndex           int               `json:"boot_index"` // 0 for the root volume, -1 otherwise
	DeleteOnTermination bool              `json:"delete_on_termination"`
	// Locator says where Raksha reads the disk (empty without the admin
	// view, which names the host).
	Locator Locator `json:"locator,omitzero"`
}

// RootDiskMeta is the root disk of an image-booted server: the flavor's
// root size (the image's minimum when the flavor says 0) and where the host
// worker reads it.
type RootDiskMeta struct {
	SizeGB  int     `json:"size_gib"`
	Locator Locator `json:"locator,omitzero"`
}

// SwapDiskMeta is the swap disk of a server whose flavor has one.
type SwapDiskMeta struct {
	SizeMB  int     `json:"size_mib"`
	Locator Locator `json:"locator,omitzero"`
}

// SwapDiskNode is a swap disk's reference in a libvirt locator.
const SwapDiskNode = "disk.swap"

// RootDiskNode is a root disk's reference in a libvirt locator: the file
// name Nova gives it in the instance directory.
const RootDiskNode = "disk"

// EphemeralMeta is an ephemeral disk of the flavor.
type EphemeralMeta struct {
	Index   int     `json:"index"`
	SizeGB  int     `json:"size_gib"`
	Locator Locator `json:"locator,omitzero"`
}

// Locator is DESIGN.md's disk locator: "qemu" (host, instance, drive node;
// read by the host worker of that compute host on raksha-host-<host>),
// "libvirt" (host, domain UUID or name in Instance, the disk's reference in
// the domain XML in Node; read by that host's worker through libvirt) or
// "rbd" (pool, image, snapshot; read by any data worker with Ceph access).
type Locator struct {
	Scheme   string `json:"scheme"`
	Host     string `json:"host,omitempty"`
	Instance string `json:"instance,omitempty"`
	Node     string `json:"node,omitempty"`
	// Serial is the virtio serial of the drive (a volume's id cut to 20
	// characters, as Nova sets it), for hosts that find drives by serial.
	Serial   string `json:"serial,omitempty"`
	Pool     string `json:"pool,omitempty"`
	Image    string `json:"image,omitempty"`
	Snapshot string `json:"snapshot,omitempty"`
}

// IsZero reports an empty locator.
func (l Locator) IsZero() bool { return l.Scheme == "" }

// String renders qemu:HOST/INSTANCE/NODE or rbd:POOL/IMAGE[@SNAPSHOT].
func (l Locator) String() string {
	switch l.Scheme {
	case "qemu", "libvirt":
		return l.Scheme + ":" + l.Host + "/" + l.Instance + "/" + l.Node
	case "rbd":
		s := "rbd:" + l.Pool + "/" + l.Image
		if l.Snapshot != "" {
			s += "@" + l.Snapshot
		}
		return s
	}
	return ""
}

// ParseLocator reads the String form of a locator.
func ParseLocator(s string) (Locator, error) {
	scheme, rest, ok := strings.Cut(s, ":")
	switch {
	case ok && (scheme == "qemu" || scheme == "libvirt"):
		parts := strings.Split(rest, "/")
		if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
			return Locator{}, fmt.Errorf("locator %q: want %s:HOST/INSTANCE/DISK", s, scheme)
		}
		return Locator{Scheme: scheme, Host: parts[0], Instance: parts[1], Node: parts[2]}, nil
	case ok && scheme == "rbd":
		img, snap, _ := strings.Cut(rest, "@")
		pool, image, ok := strings.Cut(img, "/")
		if !ok || pool == "" || image == "" {
			return Locator{}, fmt.Errorf("locator %q: want rbd:POOL/IMAGE[@SNAPSHOT]", s)
		}
		return Locator{Scheme: "rbd", Pool: pool, Image: image, Snapshot: snap}, nil
	}
	return Locator{}, fmt.Errorf("locator %q: want qemu:HOST/INSTANCE/NODE or rbd:POOL/IMAGE[@SNAPSHOT]", s)
}

// QEMUVolumeNode is the QEMU block node name of a Cinder volume's drive on a
// QEMU host that Raksha's host worker reads directly (the lab cloud names
// nodes so): "vol-" and the first 20 hex digits of the volume id.
func QEMUVolumeNode(volumeID string) string {
	h := strings.ReplaceAll(volumeID, "-", "")
	if len(h) > 20 {
		h = h[:20]
	}
	return "vol-" + h
}

// QEMUEphemeralNode is the node name of the n-th ephemeral disk.
func QEMUEphemeralNode(n int) string { return fmt.Sprintf("eph%d", n) }

func volumeSerial(id string) string {
	if len(id) > 20 {
		return id[:20]
	}
	return id
}
