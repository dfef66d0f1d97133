package libvirt

import (
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
)

// DomainDisk is one disk of a domain as its live XML describes it: what
// Raksha backs up is found here, not from names.
type DomainDisk struct {
	// Target is the guest device name (vda, sdb, …); Bus its bus.
	Target, Bus string
	// Device is "disk", "cdrom", "floppy" or "lun".
	Device string
	// Type is the source type: "file", "block", "network", "volume".
	Type string
	// Format is the driver's image format ("qcow2", "raw").
	Format string
	// File is the image file (type file), Dev the block device (type
	// block); Protocol and Name the network source (e.g. "rbd",
	// "volumes/volume-ID").
	File, Dev, Protocol, Name string
	// Serial is the disk's serial (Nova sets a Cinder volume's id there).
	Serial string
	// ReadOnly is set for read-only disks (a config drive is one).
	ReadOnly bool
	// Backing is the image's backing chain from the top's backing file
	// down (Nova's _base image of an image-booted root disk).
	Backing []string
}

// Source names the disk's source for messages: its file, device or
// protocol:name.
func (d DomainDisk) Source() string {
	switch {
	case d.File != "":
		return d.File
	case d.Dev != "":
		return d.Dev
	case d.Protocol != "":
		return d.Protocol + ":" + d.Name
	}
	return "(no source)"
}

// Bitmaps reports whether the disk can carry persistent dirty bitmaps and
// so libvirt checkpoints: qcow2 images only.
func (d DomainDisk) Bitmaps() bool { return d.Format == "qcow2" }

type xmlSource struct {
	File     string `xml:"file,attr"`
	Dev      string `xml:"dev,attr"`
	Protocol string `xml:"protocol,attr"`
	Name     string `xml:"name,attr"`
}

type xmlBacking struct {
	Type    string      `xml:"type,attr"`
	Source  xmlSource   `xml:"source"`
	Backing *xmlBacking `xml:"backingStore"`
}

type xmlDisk struct {
	Type   string `xml:"type,attr"`
	Device string `xml:"device,attr"`
	Driver struct {
		Type string `xml:"type,attr"`
	} `xml:"driver"`
	Source xmlSource `xml:"source"`
	Target struct {
		Dev string `xml:"dev,attr"`
		Bus string `xml:"bus,attr"`
	} `xml:"target"`
	Serial   string      `xml:"serial"`
	ReadOnly *struct{}   `xml:"readonly"`
	Backing  *xmlBacking `xml:"backingStore"`
}

type xmlDomain struct {
	Name    string `xml:"name"`
	UUID    string `xml:"uuid"`
	Devices struct {
		Disks []xmlDisk `xml:"disk"`
	} `xml:"devices"`
}

// maxDomainXML bounds a domain XML this package parses.
const maxDomainXML = 4 << 20

// ParseDisks returns the disks of a domain XML in document order.
func ParseDisks(domainXML string) ([]DomainDisk, error) {
	if len(domainXML) > maxDomainXML {
		return nil, fmt.Errorf("domain XML of %d bytes: more than %d", len(domainXML), maxDomainXML)
	}
	var d xmlDomain
	if err := xml.Unmarshal([]byte(domainXML), &d); err != nil {
		return nil, fmt.Errorf("parse domain XML: %w", err)
	}
	var out []DomainDisk
	for i, x := range d.Devices.Disks {
		if x.Target.Dev == "" {
			return nil, fmt.Errorf("parse domain XML: disk %d has no target", i)
		}
		dd := DomainDisk{Target: x.Target.Dev, Bus: x.Target.Bus, Device: x.Device, Type: x.Type,
			Format: x.Driver.Type, File: x.Source.File, Dev: x.Source.Dev, Protocol: x.Source.Protocol,
			Name: x.Source.Name, Serial: strings.TrimSpace(x.Serial), ReadOnly: x.ReadOnly != nil}
		if dd.Device == "" {
			dd.Device = "disk"
		}
		for b, n := x.Backing, 0; b != nil && n < 64; b, n = b.Backing, n+1 {
			switch {
			case b.Source.File != "":
				dd.Backing = append(dd.Backing, b.Source.File)
			case b.Source.Dev != "":
				dd.Backing = append(dd.Backing, b.Source.Dev)
			case b.Source.Name != "":
				dd.Backing = append(dd.Backing, b.Source.Protocol+":"+b.Source.Name)
			}
		}
		out = append(out, dd)
	}
	return out, nil
}

// ResolveDisk finds the disk a libvirt: locator names in a domain's disks,
// the way Nova lays them out:
//
//   - "vol-<volume id>": the Cinder volume (its serial is the volume id,
//     or its source, a file, device or network name, holds it);
//   - "disk", "disk.eph0", "disk.swap", "disk.config", …: the file of that
//     name in the instance directory (an image-booted server's root disk is
//     "disk");
//   - "target=<dev>": the disk whose guest device is dev (vda, sdb).
//
// Exactly one disk must match.
func ResolveDisk(disks []DomainDisk, ref string) (DomainDisk, error) {
	var match func(d DomainDisk) bool
	switch {
	case strings.HasPrefix(ref, "vol-"):
		id := strings.TrimPrefix(ref, "vol-")
		if len(id) < 8 {
			return DomainDisk{}, fmt.Errorf("disk %q: volume id too short", ref)
		}
		match = func(d DomainDisk) bool {
			return d.Serial == id || (len(d.Serial) >= 20 && strings.HasPrefix(id, d.Serial)) ||
				strings.Contains(d.File, id) || strings.Contains(d.Dev, id) || strings.Contains(d.Name, id)
		}
	case strings.HasPrefix(ref, "target="):
		t := strings.TrimPrefix(ref, "target=")
		match = func(d DomainDisk) bool { return d.Target == t }
	case ref == "disk" || strings.HasPrefix(ref, "disk."):
		match = func(d DomainDisk) bool { return d.File != "" && baseName(d.File) == ref }
	default:
		return DomainDisk{}, fmt.Errorf("disk %q: want vol-<volume id>, disk, disk.<name> or target=<dev>", ref)
	}
	var found []DomainDisk
	for _, d := range disks {
		if d.Device != "cdrom" && d.Device != "floppy" && match(d) {
			found = append(found, d)
		}
	}
	switch len(found) {
	case 0:
		var have []string
		for _, d := range disks {
			have = append(have, d.Target+"="+d.Source())
		}
		return DomainDisk{}, fmt.Errorf("disk %q: %w (the domain has %s)", ref, ErrNoDisk, strings.Join(have, ", "))
	case 1:
		return found[0], nil
	}
	return DomainDisk{}, fmt.Errorf("disk %q matches %d disks of the domain", ref, len(found))
}

// ErrNoDisk: the domain has no disk that a locator names (detached, or
// the server was resized or rebuilt without it).
var ErrNoDisk = errors.New("no such disk in the domain")

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
