package lab

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
)

// InstanceRef names one lab server the way a compute host knows it: the lab
// host it runs on and its libvirt-style instance name (instance-0000000a).
type InstanceRef struct {
	Host string `json:"host"`
	Name string `json:"instance_name"`
}

func (r InstanceRef) String() string { return r.Host + "/" + r.Name }

// Disk is one drive of a lab server: a qcow2 file or an RBD image.
type Disk struct {
	// Node is the QEMU block node name of the drive (see VolumeNode and
	// EphemeralNode); Raksha's qemu: locators name it.
	Node string `json:"node"`
	// Path is the qcow2 file; empty for an RBD drive.
	Path string `json:"path,omitempty"`
	// RBD is the image of a volume kept in RBD, which QEMU opens with its
	// rbd block driver; nil for a qcow2 drive.
	RBD *RBDDisk `json:"rbd,omitempty"`
	// Serial is the virtio serial the guest sees: the volume id cut to 20
	// characters, as Nova sets it, or the node name for ephemeral disks.
	Serial string `json:"serial"`
}

// Instance is everything a compute backend needs to run a lab server.
type Instance struct {
	InstanceRef
	// ID is the server's id (a libvirt domain's UUID, as in Nova).
	ID string `json:"id"`
	// Dir is the instance directory: <labdir>/hosts/<host>/instances/<name>,
	// where the QEMU backend publishes qmp.sock and qga.sock (DESIGN.md,
	// Sockets), or <labdir>/hosts/<host>/instances/<server id> for a
	// backend that says ByServerID (libvirt: Nova's <instances_path>/<uuid>).
	Dir      string `json:"dir"`
	VCPUs    int    `json:"vcpus"`
	MemoryMB int    `json:"memory_mb"`
	// Root is the root disk of a server booted from an image; nil for one
	// booted from a volume.
	Root *RootDisk `json:"root,omitempty"`
	// SwapMB is the flavor's swap disk. A backend that boots servers from
	// their root disk (the libvirt one) keeps it where Nova's libvirt
	// driver does: <Dir>/disk.swap, a qcow2 overlay on a raw base
	// formatted as swap (instances/_base/swap_<MB>), created on the first
	// start (or a resize that gives the server one) and attached at boot.
	SwapMB int `json:"swap_mib,omitempty"`
	// Disks in attach order: ephemeral disks first, then volumes.
	Disks []Disk `json:"disks"`
}

// RootDisk is the root disk of an image-booted server. A backend that
// boots servers from their root disk (the libvirt one) keeps it where
// Nova's libvirt driver does: <Dir>/disk, a qcow2 overlay on the image's
// raw base file in the host's instances/_base directory, created on the
// first start and kept across stops, starts and hard reboots. The QEMU
// backend boots its guests from kernel and initramfs and ignores it.
type RootDisk struct {
	// ImageID names the Glance image the base file holds.
	ImageID string `json:"image_id"`
	// SizeGB is the overlay's virtual size (the flavor's root disk); the
	// base file's size when zero.
	SizeGB int `json:"size_gib"`
}

// RootFile and SwapFile are the root and swap disks' file names in the
// instance directory.
const (
	RootFile = "disk"
	SwapFile = "disk.swap"
)

// Compute runs the lab's servers. The lab's real backend runs each server as
// a QEMU process of the lab guest; the Nova API only ever talks to this
// interface, so that its tests can run without booting guests.
type Compute interface {
	// Start boots the instance with its disks and returns once it runs.
	Start(ctx context.Context, inst Instance) error
	// Stop shuts the instance down; stopping a stopped instance is no error.
	Stop(ctx context.Context, ref InstanceRef) error
	// Running tells whether the instance's process is up.
	Running(ctx context.Context, ref InstanceRef) (bool, error)
	// Attach hot-plugs a disk into the running instance.
	Attach(ctx context.Context, ref InstanceRef, d Disk) error
	// Detach hot-unplugs the disk with the given node name.
	Detach(ctx context.Context, ref InstanceRef, node string) error
	// CopyDisk writes a point-in-time copy of an attached disk as a new
	// qcow2 file at target (QEMU: a sync=full backup job, whose
	// copy-before-write keeps the content as of the job's start).
	CopyDisk(ctx context.Context, ref InstanceRef, node, target string) error
}

// Remover is a Compute whose servers have a definition to remove when they
// are deleted (libvirt domains: Nova's delete undefines the domain).
type Remover interface {
	// Remove stops the instance and removes its definition.
	Remove(ctx context.Context, ref InstanceRef) error
}

// Resizer is a Compute that can give a server a new flavor the way Nova's
// libvirt driver does on one host: the guest stopped, its root disk grown
// to the new flavor's size, the domain defined anew with the flavor's CPUs
// and memory, started again when it ran before.
type Resizer interface {
	// Resize applies inst (its new flavor) to the server.
	Resize(ctx context.Context, inst Instance, start bool) error
}

// VolumeNode is the QEMU node name the lab gives the drive of a Cinder
// volume: "vol-" and the first 20 hex digits of its id (QEMU node names are
// limited to 31 characters).
func VolumeNode(volumeID string) string {
	h := strings.ReplaceAll(volumeID, "-", "")
	if len(h) > 20 {
		h = h[:20]
	}
	return "vol-" + h
}

// EphemeralNode is the QEMU node name of a server's n-th ephemeral disk.
func EphemeralNode(n int) string { return fmt.Sprintf("eph%d", n) }

// volumeSerial is the virtio serial Nova gives a volume: its id, cut to the
// 20 characters virtio-blk allows.
func volumeSerial(volumeID string) string {
	if len(volumeID) > 20 {
		return volumeID[:20]
	}
	return volumeID
}

// InstanceDir is where a lab server's sockets and ephemeral disks live.
func InstanceDir(labDir string, ref InstanceRef) string {
	return filepath.Join(labDir, "hosts", ref.Host, "instances", ref.Name)
}
