package lab

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/lab/guestapp"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
)

// TestRealGuestThroughNovaAPI boots a real lab server through the Nova API,
// attaches a volume, sees the guest mount both disks and its agent answer,
// and snapshots the in-use volume through QEMU.
func TestRealGuestThroughNovaAPI(t *testing.T) {
	img := vmtest.Image(t) // skips (fails under CI) naming make test-deps
	dir := vmtest.LabDir(t)
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	comp := NewQEMUCompute(QEMUOptions{LabDir: dir, Image: img, WriterInterval: 200 * time.Millisecond, Log: logger,
		StartVM: vmtest.StartConfig})
	start := time.Now()
	l, c, id, name, vol := novaServerWithVolume(t, Options{Dir: dir, Compute: comp, FormatDisks: true, Hosts: []string{"h1"}, Log: logger}, "real-1")
	defer l.Close()
	defer comp.StopAll(context.Background())
	t.Logf("server ACTIVE with its volume attached (boot, disks mounted, writers running) in %v", time.Since(start).Round(time.Millisecond))
	ref := InstanceRef{"h1", name}
	sock := filepath.Join(InstanceDir(dir, ref), "qga.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ag, err := guest.Dial(ctx, sock, guest.Options{Owner: "lab test"})
	if err != nil {
		t.Fatal(err)
	}
	checkGuestMounts(t, ag)
	ag.Close()
	t.Logf("snapshot holds %d good records of the in-guest writer", checkVolumeSnapshot(t, l, c, dir, vol))
	c.do("DELETE", "/compute/v2.1/servers/"+id+"/os-volume_attachments/"+vol, nil, nil)
	l.Wait()
	if s := c.volumeStatus(vol); s != "available" {
		t.Fatalf("volume %s after detach", s)
	}
}

// novaServerWithVolume starts a lab with opts, boots a server of flavor 1
// (an ephemeral disk) from the guest image through the Nova API as the
// admin, attaches a new volume "appdata" and returns the lab, the client,
// the server's id and instance name and the volume's id.
func novaServerWithVolume(t *testing.T, opts Options, name string) (*Lab, *client, string, string, string) {
	t.Helper()
	l, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.EnsureUser(AdminUser, testAdminPassword, AdminProject, "admin"); err != nil {
		t.Fatal(err)
	}
	c := login(t, l, AdminUser, testAdminPassword, AdminProject)
	c.headers["OpenStack-API-Version"] = "compute 2.79"
	var images struct{ Images []struct{ ID string } }
	c.do("GET", "/image/v2/images?name="+GuestImage, nil, &images)
	vol := c.createVolume("appdata", 1)
	var created struct{ Server struct{ ID string } }
	if st := c.do("POST", "/compute/v2.1/servers", obj{"server": obj{"name": name, "flavorRef": "1", "imageRef": images.Images[0].ID, "networks": "none"}}, &created); st != 202 {
		t.Fatalf("create server: %d", st)
	}
	l.Wait()
	id := created.Server.ID
	var show struct{ Server map[string]any }
	c.do("GET", "/compute/v2.1/servers/"+id, nil, &show)
	if show.Server["status"] != "ACTIVE" {
		t.Fatalf("server: %v %v", show.Server["status"], show.Server["fault"])
	}
	if st := c.do("POST", "/compute/v2.1/servers/"+id+"/os-volume_attachments", obj{"volumeAttachment": obj{"volumeId": vol}}, nil); st != 200 {
		t.Fatalf("attach: %d", st)
	}
	l.Wait()
	if s := c.volumeStatus(vol); s != "in-use" {
		t.Fatalf("volume %s after attach", s)
	}
	return l, c, id, show.Server["OS-EXT-SRV-ATTR:instance_name"].(string), vol
}

// checkGuestMounts checks through the guest's agent that the ephemeral
// disk and the volume are mounted and the writer writes on both.
func checkGuestMounts(t *testing.T, ag *guest.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := ag.Run(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", "cat /proc/mounts; ls /data/*/raksha-writer"}, Capture: true})
	if err != nil {
		t.Fatal(err)
	}
	out := string(res.Stdout)
	if !strings.Contains(out, "/data/ephemeral0") || !strings.Contains(out, "/data/appdata") || strings.Count(out, ".rec") < 2 {
		t.Fatalf("guest mounts and writer files:\n%s", out)
	}
}

// checkVolumeSnapshot snapshots the in-use volume through Cinder's API and
// returns the good records of the in-guest writer the snapshot holds (at
// least one).
func checkVolumeSnapshot(t *testing.T, l *Lab, c *client, dir, vol string) int64 {
	t.Helper()
	var snap struct{ Snapshot struct{ ID string } }
	if st := c.do("POST", "/volume/v3/{project}/snapshots", obj{"snapshot": obj{"volume_id": vol, "force": true}}, &snap); st != 202 {
		t.Fatalf("snapshot: %d", st)
	}
	l.Wait()
	var sn struct{ Snapshot struct{ Status string } }
	c.do("GET", "/volume/v3/{project}/snapshots/"+snap.Snapshot.ID, nil, &sn)
	if sn.Snapshot.Status != "available" {
		t.Fatalf("snapshot of the in-use volume: %s", sn.Snapshot.Status)
	}
	snapPath := filepath.Join(dir, "snapshots", "snapshot-"+snap.Snapshot.ID+".qcow2")
	if fi, err := os.Stat(snapPath); err != nil || fi.Size() == 0 {
		t.Fatalf("snapshot file: %v", err)
	}
	reports, err := guestapp.CheckImage(context.Background(), snapPath, guestapp.CheckOptions{})
	if err != nil || len(reports) == 0 || reports[0].Good == 0 {
		t.Fatalf("records in the snapshot: %+v %v", reports, err)
	}
	return reports[0].Good
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
