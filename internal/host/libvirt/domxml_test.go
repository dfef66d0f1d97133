package libvirt

import (
	"errors"
	"strings"
	"testing"
)

// novaXML is the disk part of a domain as Nova's libvirt driver defines an
// image-booted server with an ephemeral disk, swap, a config drive and two
// Cinder volumes (RBD and a file-backed one).
const novaXML = `<domain type='qemu'><name>instance-0000000a</name><uuid>5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f</uuid><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
  <source file='/var/lib/nova/instances/5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f/disk'/>
  <backingStore type='file'><format type='raw'/><source file='/var/lib/nova/instances/_base/8d7c'/><backingStore/></backingStore>
  <target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/var/lib/nova/instances/5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f/disk.eph0'/><target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/var/lib/nova/instances/5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f/disk.swap'/><target dev='vdc' bus='virtio'/></disk>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/var/lib/nova/instances/5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f/disk.config'/><target dev='sda' bus='sata'/><readonly/></disk>
<disk type='network' device='disk'><driver name='qemu' type='raw' cache='writeback' discard='unmap'/>
  <source protocol='rbd' name='volumes/volume-0a1b2c3d-1111-2222-3333-444455556666'><host name='127.0.0.1' port='6789'/></source>
  <target dev='vdd' bus='virtio'/><serial>0a1b2c3d-1111-2222-3333-444455556666</serial></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/var/lib/nova/mnt/abc/volume-9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff'/><target dev='vde' bus='virtio'/><serial>9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff</serial></disk>
</devices></domain>`

func TestParseDisksNova(t *testing.T) {
	ds, err := ParseDisks(novaXML)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 6 {
		t.Fatalf("%d disks, want 6: %+v", len(ds), ds)
	}
	root := ds[0]
	if root.Target != "vda" || root.Format != "qcow2" || !root.Bitmaps() || len(root.Backing) != 1 || !strings.HasSuffix(root.Backing[0], "_base/8d7c") {
		t.Fatalf("root disk %+v", root)
	}
	if rbd := ds[4]; rbd.Type != "network" || rbd.Protocol != "rbd" || rbd.Name != "volumes/volume-0a1b2c3d-1111-2222-3333-444455556666" || rbd.Bitmaps() {
		t.Fatalf("rbd volume %+v", rbd)
	}
	if cd := ds[3]; cd.Device != "cdrom" || !cd.ReadOnly {
		t.Fatalf("config drive %+v", cd)
	}
	for ref, want := range map[string]string{
		"disk": "vda", "disk.eph0": "vdb", "disk.swap": "vdc", "target=vde": "vde",
		"vol-0a1b2c3d-1111-2222-3333-444455556666": "vdd", "vol-9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff": "vde",
	} {
		d, err := ResolveDisk(ds, ref)
		if err != nil || d.Target != want {
			t.Errorf("ResolveDisk(%q) = %s, %v; want %s", ref, d.Target, err, want)
		}
	}
	// A config drive is a cdrom: never a disk to back up.
	if _, err := ResolveDisk(ds, "disk.config"); !errors.Is(err, ErrNoDisk) {
		t.Errorf("disk.config: err = %v, want ErrNoDisk", err)
	}
	if _, err := ResolveDisk(ds, "vol-77777777-0000-0000-0000-000000000000"); !errors.Is(err, ErrNoDisk) || !strings.Contains(err.Error(), "vda=") {
		t.Errorf("unknown volume: err = %v, want ErrNoDisk listing the disks", err)
	}
	for _, bad := range []string{"", "sda", "vol-1", "../disk"} {
		if _, err := ResolveDisk(ds, bad); err == nil {
			t.Errorf("ResolveDisk(%q) accepted", bad)
		}
	}
}

func TestParseDisksRefusesBadXML(t *testing.T) {
	for _, x := range []string{"<domain><devices><disk><source file='a'/></disk></devices></domain>", "<domain", strings.Repeat("x", maxDomainXML+1)} {
		if _, err := ParseDisks(x); err == nil {
			t.Errorf("ParseDisks(%.40q) accepted", x)
		}
	}
}

// FuzzParseDisks: a domain XML (libvirt's, but the disks' sources come from
// the guest's world) never panics the parser or the resolver.
func FuzzParseDisks(f *testing.F) {
	f.Add(novaXML, "disk")
	f.Add("<domain><devices><disk device='disk'><target dev='vda'/><serial>x</serial></disk></devices></domain>", "vol-xxxxxxxxxxxx")
	f.Fuzz(func(t *testing.T, x, ref string) {
		ds, err := ParseDisks(x)
		if err != nil {
			return
		}
		_, _ = ResolveDisk(ds, ref)
	})
}

func TestSocketPathFitsAUnixSocket(t *testing.T) {
	short := "/var/lib/raksha/libvirt/5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
	if p := socketPath(short); p != short+"/nbd.sock" {
		t.Errorf("short work dir: %s", p)
	}
	long := "/tmp/" + strings.Repeat("d", 80) + "/work/libvirt/5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
	p := socketPath(long)
	if len(p) > maxSocketPath || p != socketPath(long+"/") || p == socketPath(long+"x") {
		t.Errorf("long work dir: %s (%d bytes); must fit, be stable and differ per directory", p, len(p))
	}
}
