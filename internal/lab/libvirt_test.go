package lab

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	lv "github.com/digitalocean/go-libvirt"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
)

// TestLibvirtComputeThroughNovaAPI runs the lab's Nova on libvirt domains
// as Nova's libvirt driver lays them out: a server boots as the persistent
// domain instance-%08x whose UUID is the server id, with its ephemeral disk
// and then a volume attached (serial = volume id) and mounted, the writer
// writing; its agent answers through libvirt; a snapshot of the in-use
// volume holds the writer's records; the server boots from its root disk
// (a qcow2 overlay on the image's base file) with records written there
// too; stop and start, a hard reboot and a resize redefine the domain as
// Nova does; a checkpoint left on the domain makes the undefine of
// Nova's delete fail, as it does on Nova; without one the delete undefines
// the domain.
func TestLibvirtComputeThroughNovaAPI(t *testing.T) {
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
	l, c, id, name, vol := novaServerWithVolume(t, Options{Dir: dir, Compute: comp, FormatDisks: true, Hosts: []string{"h1"}, Log: logger,
		FirstInstance: libvirttest.FirstInstance()}, "lv-1")
	defer l.Close()
	defer comp.StopAll(context.Background())
	t.Cleanup(func() { libvirttest.Remove(t, conn, name) })
	// Four boots under TCG: about 12 s each on an idle machine, near a
	// minute each when the machine is loaded several times over.
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dom, err := conn.Domain(ctx, id)
	if err != nil || dom.Name != name || !strings.HasPrefix(name, "instance-") {
		t.Fatalf("domain of server %s: %+v, %v; want %s", id, dom, err, name)
	}
	disks, err := conn.Disks(ctx, dom)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := libvirt.ResolveDisk(disks, "vol-"+vol); err != nil || d.Format != "qcow2" {
		t.Fatalf("the volume in the domain XML: %+v, %v (disks %+v)", d, err, disks)
	}
	root, err := libvirt.ResolveDisk(disks, "disk")
	if err != nil || root.Target != "vda" || root.Format != "qcow2" || len(root.Backing) != 1 ||
		filepath.Base(root.File) != RootFile || filepath.Base(filepath.Dir(root.File)) != id || filepath.Base(filepath.Dir(root.Backing[0])) != "_base" {
		t.Fatalf("the root disk in the domain XML: %+v, %v; want vda, instances/<server id>/disk, a qcow2 overlay on instances/_base/<image id>", root, err)
	}
	ag, err := libvirt.OpenAgent(ctx, conn, id, libvirt.AgentOptions{LockDir: comp.opts.LockDir, Guest: guest.Options{Owner: "lab test"}})
	if err != nil {
		t.Fatal(err)
	}
	checkGuestMounts(t, ag)
	checkRootMount(t, ag)
	ag.Close()
	t.Logf("snapshot (push-mode libvirt backup) holds %d good records", checkVolumeSnapshot(t, l, c, dir, vol))

	// Stop, start: the domain is defined again with the same UUID and its disks.
	for _, action := range []string{"os-stop", "os-start"} {
		if st := c.do("POST", "/compute/v2.1/servers/"+id+"/action", obj{action: nil}, nil); st != 202 {
			t.Fatalf("%s: %d", action, st)
		}
		l.Wait()
	}
	status := func(want string) {
		t.Helper()
		var show struct{ Server map[string]any }
		c.do("GET", "/compute/v2.1/servers/"+id, nil, &show)
		if show.Server["status"] != want {
			t.Fatalf("server status %v (fault %v), want %s", show.Server["status"], show.Server["fault"], want)
		}
	}
	status("ACTIVE")
	if dom, err = conn.Domain(ctx, id); err != nil {
		t.Fatal(err)
	}
	if up, err := conn.Running(ctx, dom); err != nil || !up {
		t.Fatalf("domain after start: running %v, %v", up, err)
	}

	// A hard reboot defines the domain anew; the root disk keeps what the
	// guest wrote (the writer's files of the first boot are still there).
	if st := c.do("POST", "/compute/v2.1/servers/"+id+"/action", obj{"reboot": obj{"type": "HARD"}}, nil); st != 202 {
		t.Fatalf("reboot: %d", st)
	}
	l.Wait()
	status("ACTIVE")
	ag, err = libvirt.OpenAgent(ctx, conn, id, libvirt.AgentOptions{LockDir: comp.opts.LockDir, Guest: guest.Options{Owner: "lab test"}})
	if err != nil {
		t.Fatal(err)
	}
	if n := checkRootMount(t, ag); n < 2 {
		t.Errorf("root disk after a stop, a start and a hard reboot: %d record files, want those of every boot", n)
	}
	ag.Close()

	// A resize to a bigger root disk: VERIFY_RESIZE with the disk grown,
	// then ACTIVE on confirmation; a flavor with a smaller disk is refused.
	if st := c.do("POST", "/compute/v2.1/servers/"+id+"/action", obj{"resize": obj{"flavorRef": "2"}}, nil); st != 400 {
		t.Fatalf("resize to a flavor without the ephemeral disk: %d, want 400", st)
	}
	if st := c.do("POST", "/compute/v2.1/servers/"+id+"/action", obj{"resize": obj{"flavorRef": "4"}}, nil); st != 202 {
		t.Fatalf("resize: %d", st)
	}
	l.Wait()
	status("VERIFY_RESIZE")
	if dom, err = conn.Domain(ctx, id); err != nil {
		t.Fatal(err)
	}
	if size, err := conn.Capacity(ctx, dom, "vda"); err != nil || size != 2<<30 {
		t.Fatalf("root disk after the resize: %d bytes, %v; want 2 GiB", size, err)
	}
	// The new flavor has a swap disk: Nova's disk.swap, formatted as swap.
	if disks, err = conn.Disks(ctx, dom); err != nil {
		t.Fatal(err)
	}
	swap, err := libvirt.ResolveDisk(disks, "disk.swap")
	if err != nil || swap.Format != "qcow2" {
		t.Fatalf("the swap disk after the resize: %+v, %v (disks %+v)", swap, err, disks)
	}
	if sig := swapSignature(t, swap.File); sig != "SWAPSPACE2" {
		t.Errorf("swap disk signature %q, want SWAPSPACE2", sig)
	}
	if st := c.do("POST", "/compute/v2.1/servers/"+id+"/action", obj{"confirmResize": nil}, nil); st != 202 {
		t.Fatalf("confirmResize: %d", st)
	}
	status("ACTIVE")

	// Checkpoint metadata on the domain blocks the undefine of a delete.
	if _, err := conn.Libvirt().DomainCheckpointCreateXML(dom, "<domaincheckpoint><name>left-behind</name></domaincheckpoint>", 0); err != nil {
		t.Fatal(err)
	}
	err = comp.Remove(ctx, InstanceRef{"h1", name})
	if err == nil || !strings.Contains(err.Error(), "checkpoint") {
		t.Fatalf("remove with checkpoint metadata: %v, want libvirt's refusal naming checkpoints", err)
	}
	cp, err := conn.Libvirt().DomainCheckpointLookupByName(dom, "left-behind", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Libvirt().DomainCheckpointDelete(cp, lv.DomainCheckpointDeleteMetadataOnly); err != nil {
		t.Fatal(err)
	}
	if err := comp.Start(ctx, Instance{InstanceRef: InstanceRef{"h1", name}, ID: id, Dir: InstanceDir(dir, InstanceRef{"h1", name})}); err != nil {
		t.Fatal(err)
	}
	c.do("DELETE", "/compute/v2.1/servers/"+id, nil, nil)
	l.Wait()
	if _, err := conn.Domain(ctx, id); err == nil {
		t.Fatal("the domain is still defined after the delete")
	}
}

// checkRootMount checks that the guest runs on its root disk (/ on vda)
// bound at /data/root with the record writer writing there, and returns
// the number of record files on it.
func checkRootMount(t *testing.T, ag *guest.Client) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := ag.Run(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", "cat /proc/mounts; ls /data/root/raksha-writer"}, Capture: true})
	if err != nil {
		t.Fatal(err)
	}
	out := string(res.Stdout)
	if !strings.Contains(out, "/dev/vda / ext4") || !strings.Contains(out, "/dev/vda /data/root ext4") || !strings.Contains(out, ".rec") {
		t.Fatalf("guest root disk and its writer files:\n%s%s", out, res.Stderr)
	}
	// The /data/<label> directories of earlier boots stay on the root
	// disk; each disk is still mounted at its own label's directory.
	if strings.Contains(out, "-vd") {
		t.Fatalf("a disk mounted beside its label's directory:\n%s", out)
	}
	return strings.Count(out, ".rec")
}

// swapSignature reads the swap signature (the 10 bytes before the first
// 4 KiB page's end) of a qcow2 image through qemu-img.
func swapSignature(t *testing.T, img string) string {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "swap.raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", img, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v: %s", img, err, out)
	}
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 10)
	if _, err := f.ReadAt(b, 4096-10); err != nil {
		t.Fatal(err)
	}
	return string(b)
}
