package lab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/raksha-backup/raksha/internal/lab/vm"
)

// RBDConfig makes the lab keep Cinder volumes as RBD images in a Ceph
// cluster (in tests the throwaway one of internal/testenv/cephlab), as a
// Ceph-backed cloud does: volumes of type VolumeTypeRBD — then the default
// type — are images "volume-<id>" in Pool, Cinder snapshots are RBD
// snapshots "snapshot-<id>" of them, the QEMU guests attach them with QEMU's
// rbd block driver (Debian: qemu-block-extra), and os-initialize_connection
// answers driver_volume_type "rbd" as Cinder's RBD driver does. The lab
// drives Ceph through the rbd command (Debian: ceph-common), so it builds
// without the ceph build tag.
type RBDConfig struct {
	// CephConf is the cluster's ceph.conf; it names the monitors and the
	// keyring (QEMU reads the keyring from it too).
	CephConf string
	// Pool holds the volumes; default "rbd".
	Pool string
	// User is the cephx client id without "client."; default "admin".
	User string
}

// VolumeTypeRBD is the volume type of RBD volumes (labs started with
// Options.RBD only; there it is the default type).
const VolumeTypeRBD = "lab-rbd"

// ErrNoRBD means the rbd command is not installed (Debian: ceph-common).
var ErrNoRBD = errors.New("rbd not found (install the Debian package ceph-common, or run make test-deps)")

// RBDDisk is an RBD image a QEMU guest attaches with the rbd block driver.
type RBDDisk struct {
	Pool     string `json:"pool"`
	Image    string `json:"image"`
	CephConf string `json:"ceph_conf"`
	User     string `json:"user"`
}

// rbdStore runs the rbd command against the lab's cluster.
type rbdStore struct {
	cfg RBDConfig
	// monHosts and monPorts are the monitors named in ceph.conf, for the
	// connection info (Cinder's RBD driver lists them).
	monHosts, monPorts []string
}

func newRBDStore(cfg RBDConfig) (*rbdStore, error) {
	if cfg.CephConf == "" {
		return nil, errors.New("lab RBD: no ceph.conf")
	}
	if cfg.Pool == "" {
		cfg.Pool = "rbd"
	}
	if cfg.User == "" {
		cfg.User = "admin"
	}
	conf, err := filepath.Abs(cfg.CephConf)
	if err != nil {
		return nil, fmt.Errorf("lab RBD: %w", err)
	}
	cfg.CephConf = conf
	s := &rbdStore{cfg: cfg}
	if s.monHosts, s.monPorts, err = monitors(conf); err != nil {
		return nil, fmt.Errorf("lab RBD: %w", err)
	}
	return s, nil
}

var monAddr = regexp.MustCompile(`(\d+\.\d+\.\d+\.\d+|\[[0-9a-fA-F:]+\]):(\d+)`)

// monitors reads the addresses of "mon host" in a ceph.conf.
func monitors(conf string) (hosts, ports []string, err error) {
	f, err := os.Open(conf)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok || strings.ReplaceAll(strings.TrimSpace(k), "_", " ") != "mon host" {
			continue
		}
		for _, m := range monAddr.FindAllStringSubmatch(v, -1) {
			hosts, ports = append(hosts, strings.Trim(m[1], "[]")), append(ports, m[2])
		}
	}
	if len(hosts) == 0 {
		return nil, nil, fmt.Errorf("%s names no mon host", conf)
	}
	return hosts, ports, sc.Err()
}

// spec is POOL/IMAGE of a volume's image.
func (s *rbdStore) spec(volumeID string) string { return s.cfg.Pool + "/volume-" + volumeID }

// disk describes an image to QEMU; without a store (a lab restarted
// without Options.RBD) QEMU's defaults apply, and it fails to connect.
func (s *rbdStore) disk(spec string) *RBDDisk {
	pool, image, _ := strings.Cut(spec, "/")
	if s == nil {
		return &RBDDisk{Pool: pool, Image: image}
	}
	return &RBDDisk{Pool: pool, Image: image, CephConf: s.cfg.CephConf, User: s.cfg.User}
}

// run runs rbd with the cluster's options and returns its output.
func (s *rbdStore) run(ctx context.Context, args ...string) ([]byte, error) {
	bin, err := exec.LookPath("rbd")
	if err != nil {
		return nil, ErrNoRBD
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, append([]string{"--conf", s.cfg.CephConf, "--id", s.cfg.User}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("rbd %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

func mib(sizeGB int) string { return strconv.Itoa(sizeGB << 10) }

// create makes a volume's image at dst (POOL/IMAGE): a copy of src when
// given (an RBD image or snapshot spec, or a disk image file), else blank,
// or with format an empty ext4 file system labelled label. It is grown to
// sizeGB GiB.
func (s *rbdStore) create(ctx context.Context, dst string, src diskRef, sizeGB int, format bool, label, tmpDir string) error {
	raw := filepath.Join(tmpDir, strings.ReplaceAll(dst, "/", "_")+".raw.tmp")
	defer os.Remove(raw)
	var err error
	switch {
	case src.rbd != "":
		_, err = s.run(ctx, "cp", "--no-progress", src.rbd, dst)
	case src.path != "":
		if err = os.MkdirAll(tmpDir, 0o755); err == nil {
			if err = qemuImg(ctx, "convert", "-q", "-O", "raw", src.path, raw); err == nil {
				_, err = s.run(ctx, "import", "--no-progress", raw, dst)
			}
		}
	case format:
		if err = mkfsRaw(ctx, raw, label, int64(sizeGB)<<30); err == nil {
			_, err = s.run(ctx, "import", "--no-progress", raw, dst)
		}
	default:
		_, err = s.run(ctx, "create", "--size", mib(sizeGB), dst)
		return wrapCreate(dst, err)
	}
	if err != nil {
		return wrapCreate(dst, err)
	}
	size, err := s.size(ctx, dst)
	if err == nil && size < int64(sizeGB)<<30 {
		_, err = s.run(ctx, "resize", "--no-progress", "--size", mib(sizeGB), dst)
	}
	return wrapCreate(dst, err)
}

func wrapCreate(dst string, err error) error {
	if err != nil {
		return fmt.Errorf("create RBD image %s: %w", dst, err)
	}
	return nil
}

// size is the size of an image or snapshot in bytes.
func (s *rbdStore) size(ctx context.Context, spec string) (int64, error) {
	out, err := s.run(ctx, "info", "--format", "json", spec)
	if err != nil {
		return 0, err
	}
	var info struct {
		Size int64 `json:"size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("rbd info %s: %w", spec, err)
	}
	return info.Size, nil
}

// export writes an image or snapshot to a raw file.
func (s *rbdStore) export(ctx context.Context, spec, raw string) error {
	_, err := s.run(ctx, "export", "--no-progress", spec, raw)
	return err
}

// remove deletes an image. As with Cinder's RBD driver, an image that
// still has snapshots (a backup tool's included) is not deleted.
func (s *rbdStore) remove(ctx context.Context, spec string) error {
	if _, err := s.run(ctx, "rm", "--no-progress", spec); err != nil {
		if strings.Contains(err.Error(), "No such file") || strings.Contains(err.Error(), "does not exist") {
			return nil
		}
		return fmt.Errorf("delete RBD image %s: %w", spec, err)
	}
	return nil
}

// snapCreate and snapRemove take and drop POOL/IMAGE@SNAP.
func (s *rbdStore) snapCreate(ctx context.Context, spec string) error {
	if _, err := s.run(ctx, "snap", "create", "--no-progress", spec); err != nil {
		return fmt.Errorf("RBD snapshot %s: %w", spec, err)
	}
	return nil
}

func (s *rbdStore) snapRemove(ctx context.Context, spec string) error {
	if _, err := s.run(ctx, "snap", "rm", "--no-progress", spec); err != nil {
		if strings.Contains(err.Error(), "No such file") || strings.Contains(err.Error(), "does not exist") {
			return nil
		}
		return fmt.Errorf("delete RBD snapshot %s: %w", spec, err)
	}
	return nil
}

// connectionData is what Cinder's RBD driver answers to
// os-initialize_connection for an image.
func (s *rbdStore) connectionData(spec, volumeID string) map[string]any {
	if s == nil {
		return map[string]any{"name": spec, "volume_id": volumeID, "access_mode": "rw", "encrypted": false}
	}
	return map[string]any{
		"name": spec, "hosts": s.monHosts, "ports": s.monPorts, "cluster_name": "ceph",
		"auth_enabled": true, "auth_username": s.cfg.User, "secret_type": "ceph", "secret_uuid": nil,
		"volume_id": volumeID, "discard": true, "keyring": nil, "qos_specs": nil,
		"access_mode": "rw", "encrypted": false,
	}
}

// mkfsRaw writes a sparse raw file of size bytes holding an empty ext4 file
// system labelled label.
func mkfsRaw(ctx context.Context, raw, label string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(raw), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(raw, nil, 0o600); err != nil {
		return err
	}
	if err := os.Truncate(raw, size); err != nil {
		return err
	}
	return vm.MkfsExt4(ctx, raw, label)
}

// diskRef is where a volume's bytes are: a disk image file (absolute) or an
// RBD image or snapshot (POOL/IMAGE[@SNAP]).
type diskRef struct {
	path string
	rbd  string
}

// volumeRef and snapshotRef locate a volume's or snapshot's bytes.
func (l *Lab) volumeRef(v *volume) diskRef {
	if v.RBD != "" {
		return diskRef{rbd: v.RBD}
	}
	return diskRef{path: l.abs(v.Path)}
}

func (l *Lab) snapshotRef(s *snapshot) diskRef {
	if s.RBD != "" {
		return diskRef{rbd: s.RBD}
	}
	return diskRef{path: l.abs(s.Path)}
}

// isRBDTypeLocked reports whether volumes of the type live in RBD.
func (l *Lab) isRBDTypeLocked(typeID string) bool {
	t := l.st.VolumeTypes[typeID]
	return t != nil && t.Name == VolumeTypeRBD
}

// placeVolumeLocked decides where a new volume's bytes go: an RBD image
// for the RBD type, else a qcow2 file; l.mu must be held.
func (l *Lab) placeVolumeLocked(v *volume) error {
	if l.isRBDTypeLocked(v.TypeID) {
		if l.rbd == nil {
			return errBadRequest("Invalid volume type %s: this lab has no Ceph cluster (lab.Options.RBD)", VolumeTypeRBD)
		}
		v.RBD = l.rbd.spec(v.ID)
		return nil
	}
	v.Path = filepath.Join("volumes", "volume-"+v.ID+".qcow2")
	return nil
}

// makeVolume writes a new volume's bytes at dst: a copy of src when given,
// else blank (with format, an empty ext4 file system labelled label).
func (l *Lab) makeVolume(ctx context.Context, dst, src diskRef, sizeGB int, format bool, label string) error {
	if dst.rbd != "" {
		if l.rbd == nil {
			return fmt.Errorf("create volume %s: this lab has no Ceph cluster", dst.rbd)
		}
		return l.rbd.create(ctx, dst.rbd, src, sizeGB, format, label, l.abs("tmp"))
	}
	switch {
	case src.rbd != "":
		if l.rbd == nil {
			return fmt.Errorf("create volume from %s: this lab has no Ceph cluster", src.rbd)
		}
		raw := dst.path + ".raw.tmp"
		defer os.Remove(raw)
		if err := os.MkdirAll(filepath.Dir(raw), 0o755); err != nil {
			return err
		}
		if err := l.rbd.export(ctx, src.rbd, raw); err != nil {
			return fmt.Errorf("create volume from %s: %w", src.rbd, err)
		}
		return copyQcow2(ctx, raw, dst.path, sizeGB)
	case src.path != "":
		return copyQcow2(ctx, src.path, dst.path, sizeGB)
	}
	return newDisk(ctx, dst.path, sizeGB, format, label)
}

// removeVolume deletes a volume's bytes.
func (l *Lab) removeVolume(ctx context.Context, d diskRef) error {
	if d.rbd != "" {
		if l.rbd == nil {
			return fmt.Errorf("delete volume %s: this lab has no Ceph cluster", d.rbd)
		}
		return l.rbd.remove(ctx, d.rbd)
	}
	if err := os.Remove(d.path); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// volumeDisk describes a volume's drive to the compute backend.
func (l *Lab) volumeDisk(v *volume) Disk {
	d := Disk{Node: VolumeNode(v.ID), Serial: volumeSerial(v.ID)}
	if v.RBD != "" {
		d.RBD = l.rbd.disk(v.RBD)
	} else {
		d.Path = l.abs(v.Path)
	}
	return d
}

// snapRBD takes (create) or drops an RBD snapshot POOL/IMAGE@SNAP.
func (l *Lab) snapRBD(ctx context.Context, spec string, create bool) error {
	if l.rbd == nil {
		return fmt.Errorf("RBD snapshot %s: this lab has no Ceph cluster", spec)
	}
	if create {
		return l.rbd.snapCreate(ctx, spec)
	}
	return l.rbd.snapRemove(ctx, spec)
}
