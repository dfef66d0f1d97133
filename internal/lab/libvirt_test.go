package lab

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	lv "github.com/digitalocean/go-libvirt"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab/guestapp"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
)

// TestLibvirtComputeThroughNovaAPI runs the lab's Nova on libvirt domains
// as Nova's libvirt driver lays them out: a server boots as the persistent
// domain instance-%08x whose UUID is the server id, with its ephemeral disk
// and then a volume attached (serial = volume id) and mounted, the writer
// writing; its agent answers through libvirt; a snapshot of the in-use
// volume holds the writer's records; stop and start redefine the domain
// (Nova's start); a checkpoint left on the domain makes the undefine of
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
	l, err := Start(context.Background(), Options{Dir: dir, Compute: comp, FormatDisks: true, Hosts: []string{"h1"}, Log: logger,
		FirstInstance: libvirttest.FirstInstance()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	defer comp.StopAll(context.Background())
	if _, err := l.EnsureUser(AdminUser, testAdminPassword, AdminProject, "admin"); err != nil {
		t.Fatal(err)
	}
	c := login(t, l, AdminUser, testAdminPassword, AdminProject)
	c.headers["OpenStack-API-Version"] = "compute 2.79"
	var images struct{ Images []struct{ ID string } }
	c.do("GET", "/image/v2/images?name="+GuestImage, nil, &images)
	vol := c.createVolume("appdata", 1)
	var created struct{ Server struct{ ID string } }
	if st := c.do("POST", "/compute/v2.1/servers", obj{"server": obj{"name": "lv-1", "flavorRef": "1", "imageRef": images.Images[0].ID, "networks": "none"}}, &created); st != 202 {
		t.Fatalf("create server: %d", st)
	}
	l.Wait()
	id := created.Server.ID
	var show struct{ Server map[string]any }
	c.do("GET", "/compute/v2.1/servers/"+id, nil, &show)
	if show.Server["status"] != "ACTIVE" {
		t.Fatalf("server: %v %v", show.Server["status"], show.Server["fault"])
	}
	name := show.Server["OS-EXT-SRV-ATTR:instance_name"].(string)
	t.Cleanup(func() { libvirttest.Remove(t, conn, name) })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dom, err := conn.Domain(ctx, id)
	if err != nil || dom.Name != name || !strings.HasPrefix(name, "instance-") {
		t.Fatalf("domain of server %s: %+v, %v; want %s", id, dom, err, name)
	}
	if st := c.do("POST", "/compute/v2.1/servers/"+id+"/os-volume_attachments", obj{"volumeAttachment": obj{"volumeId": vol}}, nil); st != 200 {
		t.Fatalf("attach: %d", st)
	}
	l.Wait()
	if s := c.volumeStatus(vol); s != "in-use" {
		t.Fatalf("volume %s after attach", s)
	}
	disks, err := conn.Disks(ctx, dom)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := libvirt.ResolveDisk(disks, "vol-"+vol); err != nil || d.Format != "qcow2" {
		t.Fatalf("the volume in the domain XML: %+v, %v (disks %+v)", d, err, disks)
	}
	ag, err := libvirt.OpenAgent(ctx, conn, id, libvirt.AgentOptions{LockDir: comp.opts.LockDir, Guest: guest.Options{Owner: "lab test"}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := ag.Run(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", "cat /proc/mounts; ls /data/*/raksha-writer"}, Capture: true})
	ag.Close()
	if err != nil || !strings.Contains(string(res.Stdout), "/data/ephemeral0") || !strings.Contains(string(res.Stdout), "/data/appdata") || strings.Count(string(res.Stdout), ".rec") < 2 {
		t.Fatalf("guest mounts and writer files: %v\n%s", err, res.Stdout)
	}

	var snap struct{ Snapshot struct{ ID string } }
	if st := c.do("POST", "/volume/v3/{project}/snapshots", obj{"snapshot": obj{"volume_id": vol, "force": true}}, &snap); st != 202 {
		t.Fatalf("snapshot: %d", st)
	}
	l.Wait()
	snapPath := filepath.Join(dir, "snapshots", "snapshot-"+snap.Snapshot.ID+".qcow2")
	if fi, err := os.Stat(snapPath); err != nil || fi.Size() == 0 {
		t.Fatalf("snapshot file: %v", err)
	}
	reports, err := guestapp.CheckImage(context.Background(), snapPath, guestapp.CheckOptions{})
	if err != nil || len(reports) == 0 || reports[0].Good == 0 {
		t.Fatalf("records in the snapshot: %+v %v", reports, err)
	}
	t.Logf("snapshot (push-mode libvirt backup) holds %d good records", reports[0].Good)

	// Stop, start: the domain is defined again with the same UUID and its disks.
	for _, action := range []string{"os-stop", "os-start"} {
		if st := c.do("POST", "/compute/v2.1/servers/"+id+"/action", obj{action: nil}, nil); st != 202 {
			t.Fatalf("%s: %d", action, st)
		}
		l.Wait()
	}
	c.do("GET", "/compute/v2.1/servers/"+id, nil, &show)
	if show.Server["status"] != "ACTIVE" {
		t.Fatalf("server after stop and start: %v %v", show.Server["status"], show.Server["fault"])
	}
	if dom, err = conn.Domain(ctx, id); err != nil {
		t.Fatal(err)
	}
	if up, err := conn.Running(ctx, dom); err != nil || !up {
		t.Fatalf("domain after start: running %v, %v", up, err)
	}

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
