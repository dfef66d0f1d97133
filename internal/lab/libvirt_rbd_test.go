package lab

import (
	"context"
	"encoding/base64"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	lv "github.com/digitalocean/go-libvirt"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab/guestapp"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
	"github.com/raksha-backup/raksha/internal/testenv/cephlab"
)

// TestCephKeyFromCephConf reads the cephx key the way a Ceph client finds
// it: a keyring named in [global] (relative to the ceph.conf, $name
// expanded), a key in [client.<user>] winning over it, a keyfile; a
// ceph.conf that names none, a keyring without the user and a key that is
// not base64 are errors naming what is missing.
func TestCephKeyFromCephConf(t *testing.T) {
	dir := t.TempDir()
	raw := []byte("0123456789abcdefghijklmnopqrstuv")
	enc := base64.StdEncoding.EncodeToString(raw)
	conf := filepath.Join(dir, "ceph.conf")
	write := func(name, s string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ceph.client.admin.keyring", "[client.other]\n\tkey = AAAA\n[client.admin]\n\tkey = "+enc+"\n\tcaps mon = \"allow *\"\n")
	write("ceph.conf", "[global]\nmon host = v2:127.0.0.1:3300\nkeyring = $cluster.$name.keyring\n")
	if k, err := cephKey(conf, "admin"); err != nil || string(k) != string(raw) {
		t.Errorf("key from the keyring of [global]: %q, %v", k, err)
	}
	if _, err := cephKey(conf, "nobody"); err == nil || !strings.Contains(err.Error(), "client.nobody") {
		t.Errorf("a user the keyring lacks: %v", err)
	}
	write("ceph.conf", "[global]\nkeyring = missing.keyring\n[client.admin]\nkey = "+enc+"\n")
	if k, err := cephKey(conf, "admin"); err != nil || string(k) != string(raw) {
		t.Errorf("key of [client.admin] over a keyring of [global]: %q, %v", k, err)
	}
	write("admin.key", enc+"\n")
	write("ceph.conf", "[client]\nkeyfile = "+filepath.Join(dir, "admin.key")+"\n")
	if k, err := cephKey(conf, "admin"); err != nil || string(k) != string(raw) {
		t.Errorf("key from a keyfile: %q, %v", k, err)
	}
	write("ceph.conf", "[global]\nmon host = v2:127.0.0.1:3300\n")
	if _, err := cephKey(conf, "admin"); err == nil || !strings.Contains(err.Error(), "names no key, keyfile or keyring") {
		t.Errorf("a ceph.conf without a key: %v", err)
	}
	write("ceph.conf", "[global]\nkey = not base64!\n")
	if _, err := cephKey(conf, "admin"); err == nil || !strings.Contains(err.Error(), "illegal base64") {
		t.Errorf("a key that is not base64: %v", err)
	}
}

// TestLibvirtComputeRBDVolume attaches a Cinder volume kept in RBD (the
// throwaway Ceph cluster) to a lab server on libvirt the way Nova's
// libvirt driver does: a network disk of protocol rbd on the cluster's
// monitor, raw, cache none, discard unmap, cephx with the key in a private
// libvirt secret of usage ceph, the volume id cut to 20 characters as its
// serial, live and in the definition; the key is on no command line. The
// guest mounts it and its writer writes there (the records are in the RBD
// image); a Cinder snapshot of it is an RBD snapshot; a push-mode copy of
// it is a point-in-time copy; after a stop and a start it is attached and
// mounted again; a detach through Nova's API unmounts and removes it live
// and from the definition; StopAll removes the secret.
func TestLibvirtComputeRBDVolume(t *testing.T) {
	cl := cephlab.Require(t)
	conn := libvirttest.Conn(t)
	img := vmtest.Image(t)
	release, err := vmtest.AcquireSlot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	dir := vmtest.LabDir(t)
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	comp := NewLibvirtCompute(LibvirtOptions{Conn: conn, Image: img, Description: libvirttest.Owner(), LockDir: t.TempDir(), WriterInterval: 200 * time.Millisecond, Log: logger})
	stopped := false
	defer func() {
		if !stopped {
			comp.StopAll(context.Background())
		}
	}()
	l, c, id, name, vol := novaServerWithVolume(t, Options{Dir: dir, Compute: comp, FormatDisks: true, Hosts: []string{"h1"}, Log: logger,
		RBD: &RBDConfig{CephConf: cl.CephConf}, FirstInstance: libvirttest.FirstInstance()}, "lv-rbd-1")
	defer l.Close()
	t.Cleanup(func() { libvirttest.Remove(t, conn, name) })
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	spec := "rbd/volume-" + vol
	rbdCmd := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, "rbd", append([]string{"--conf", cl.CephConf}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("rbd %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	dom, err := conn.Domain(ctx, id)
	if err != nil {
		t.Fatal(err)
	}

	// The disk, live and in the definition, as Nova writes it.
	var secretUUID string
	for _, flags := range []lv.DomainXMLFlags{0, lv.DomainXMLInactive} {
		x, err := conn.Libvirt().DomainGetXMLDesc(dom, flags)
		if err != nil {
			t.Fatal(err)
		}
		disks, err := libvirt.ParseDisks(x)
		if err != nil {
			t.Fatal(err)
		}
		d, err := libvirt.ResolveDisk(disks, "vol-"+vol)
		if err != nil || d.Type != "network" || d.Protocol != "rbd" || d.Name != spec || d.Format != "raw" || d.Serial != vol[:20] || d.Bus != "virtio" {
			t.Fatalf("the RBD volume in the domain XML (flags %d): %+v, %v; want a raw network disk rbd %s with serial %s", flags, d, err, spec, vol[:20])
		}
		disk := x[strings.LastIndex(x[:strings.Index(x, spec)], "<disk "):]
		disk = disk[:strings.Index(disk, "</disk>")]
		for _, want := range []string{"type='network'", "cache='none'", "discard='unmap'", "<auth username='admin'>", "<secret type='ceph' uuid='",
			"<host name='127.0.0.1' port='" + strconv.Itoa(cl.MonPort) + "'/>"} {
			if !strings.Contains(disk, want) {
				t.Errorf("the RBD disk (flags %d) lacks %s:\n%s", flags, want, disk)
			}
		}
		u := disk[strings.Index(disk, "<secret type='ceph' uuid='")+len("<secret type='ceph' uuid='"):]
		u = u[:strings.IndexByte(u, '\'')]
		if secretUUID != "" && u != secretUUID {
			t.Errorf("the live disk names secret %s, the definition %s", secretUUID, u)
		}
		secretUUID = u
	}
	sec := lookupSecret(t, conn, secretUUID)
	if sec == nil || lv.SecretUsageType(sec.UsageType) != lv.SecretUsageTypeCeph {
		t.Fatalf("secret %s: %+v; want one of usage ceph", secretUUID, sec)
	}
	if v, err := conn.Libvirt().SecretGetValue(*sec, 0); err == nil {
		t.Errorf("the secret's value can be read through the API (%d bytes): it is not private", len(v))
	}
	key, err := cephKey(cl.CephConf, "admin")
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(key)
	if pid, err := os.ReadFile("/run/libvirt/qemu/" + name + ".pid"); err != nil {
		t.Error(err)
	} else if cmdline, err := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/cmdline"); err != nil {
		t.Error(err)
	} else if strings.Contains(string(cmdline), b64) {
		t.Errorf("QEMU's command line holds the Ceph key")
	}

	// The guest mounted it, and its writer's records are in the image.
	ag, err := libvirt.OpenAgent(ctx, conn, id, libvirt.AgentOptions{LockDir: comp.opts.LockDir, Guest: guest.Options{Owner: "lab test"}})
	if err != nil {
		t.Fatal(err)
	}
	checkGuestMounts(t, ag)
	res, err := ag.Run(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", "sync; awk '$2 == \"/data/appdata\" { print $1 }' /proc/mounts"}, Capture: true})
	ag.Close()
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("guest: %v %+v", err, res)
	}
	dev := strings.TrimSpace(string(res.Stdout))
	if !strings.HasPrefix(dev, "/dev/vd") {
		t.Fatalf("/data/appdata is on %q, want a virtio disk", dev)
	}
	snapRecords := func(what, src string) int64 {
		t.Helper()
		raw := filepath.Join(t.TempDir(), "export.raw")
		rbdCmd("export", "--no-progress", src, raw)
		defer os.Remove(raw)
		reps, err := guestapp.CheckImage(ctx, raw, guestapp.CheckOptions{})
		if err != nil || len(reps) == 0 || !reps[0].OK() || reps[0].Good == 0 {
			t.Fatalf("records in %s: %+v, %v", what, reps, err)
		}
		return reps[0].Good
	}

	// A Cinder snapshot of the in-use volume is an RBD snapshot; a
	// push-mode copy of the RBD disk holds the records too.
	var snap struct{ Snapshot struct{ ID string } }
	if st := c.do("POST", "/volume/v3/{project}/snapshots", obj{"snapshot": obj{"volume_id": vol, "force": true}}, &snap); st != 202 {
		t.Fatalf("snapshot: %d", st)
	}
	l.Wait()
	if out := rbdCmd("snap", "ls", spec); !strings.Contains(out, "snapshot-"+snap.Snapshot.ID) {
		t.Fatalf("rbd snap ls after a Cinder snapshot of the in-use volume: %s", out)
	}
	t.Logf("the Cinder snapshot (an RBD snapshot) holds %d good records", snapRecords("the RBD snapshot", spec+"@snapshot-"+snap.Snapshot.ID))
	cp := filepath.Join(t.TempDir(), "copy.qcow2")
	if err := comp.CopyDisk(ctx, InstanceRef{"h1", name}, VolumeNode(vol), cp); err != nil {
		t.Fatalf("push-mode copy of the RBD disk: %v", err)
	}
	if reps, err := guestapp.CheckImage(ctx, cp, guestapp.CheckOptions{}); err != nil || len(reps) == 0 || !reps[0].OK() || reps[0].Good == 0 {
		t.Errorf("records in the push-mode copy of the RBD disk: %+v, %v", reps, err)
	}

	// Stop and start: the domain is defined again and the volume attached
	// and mounted again.
	for _, action := range []string{"os-stop", "os-start"} {
		if st := c.do("POST", "/compute/v2.1/servers/"+id+"/action", obj{action: nil}, nil); st != 202 {
			t.Fatalf("%s: %d", action, st)
		}
		l.Wait()
	}
	if dom, err = conn.Domain(ctx, id); err != nil {
		t.Fatal(err)
	}
	ag, err = libvirt.OpenAgent(ctx, conn, id, libvirt.AgentOptions{LockDir: comp.opts.LockDir, Guest: guest.Options{Owner: "lab test"}})
	if err != nil {
		t.Fatal(err)
	}
	checkGuestMounts(t, ag)
	ag.Close()

	// Detach through Nova: unmounted in the guest, gone live and from the
	// definition; the image holds the records written until then.
	if st := c.do("DELETE", "/compute/v2.1/servers/"+id+"/os-volume_attachments/"+vol, nil, nil); st != 202 {
		t.Fatalf("detach: %d", st)
	}
	l.Wait()
	if s := c.volumeStatus(vol); s != "available" {
		t.Fatalf("volume %s after detach", s)
	}
	for _, flags := range []lv.DomainXMLFlags{0, lv.DomainXMLInactive} {
		x, err := conn.Libvirt().DomainGetXMLDesc(dom, flags)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(x, spec) {
			t.Errorf("the RBD disk is still in the domain XML (flags %d) after the detach", flags)
		}
	}
	ag, err = libvirt.OpenAgent(ctx, conn, id, libvirt.AgentOptions{LockDir: comp.opts.LockDir, Guest: guest.Options{Owner: "lab test"}})
	if err != nil {
		t.Fatal(err)
	}
	res, err = ag.Run(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", "cat /proc/mounts"}, Capture: true})
	ag.Close()
	if err != nil || strings.Contains(string(res.Stdout), "/data/appdata") {
		t.Errorf("guest mounts after the detach (%v):\n%s", err, res.Stdout)
	}
	t.Logf("the detached RBD image holds %d good records", snapRecords("the detached image", spec))

	comp.StopAll(ctx)
	stopped = true
	if s := lookupSecret(t, conn, secretUUID); s != nil {
		t.Errorf("secret %s still defined after StopAll", secretUUID)
	}
}

// lookupSecret returns the libvirt secret with the UUID, or nil if there
// is none.
func lookupSecret(t *testing.T, conn *libvirt.Conn, uuid string) *lv.Secret {
	t.Helper()
	secrets, _, err := conn.Libvirt().ConnectListAllSecrets(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		if libvirt.UUIDString(s.UUID) == uuid {
			return &s
		}
	}
	return nil
}
