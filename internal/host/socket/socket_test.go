package socket_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/disk/qemu"
	"github.com/raksha-backup/raksha/internal/freezerec"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/guest/agenttest"
	"github.com/raksha-backup/raksha/internal/host"
	"github.com/raksha-backup/raksha/internal/host/hosttest"
	"github.com/raksha-backup/raksha/internal/host/socket"
	"github.com/raksha-backup/raksha/internal/lab/vm"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
)

// TestSharedSuite runs the host drivers' shared suite on the socket
// layout: a real QEMU guest with two blank qcow2 disks, its QMP and agent
// sockets in its instance directory.
func TestSharedSuite(t *testing.T) {
	img := vmtest.Image(t)
	dir := vmtest.LabDir(t)
	const size = 64 << 20
	paths := hosttest.BlankDisks(t, 2, size)
	v := vmtest.Boot(t, img, vmtest.Spec{LabDir: dir, Instance: "hosttest-1", Configure: func(c *vm.Config) {
		c.NoWriter = true
		for _, p := range paths {
			c.Disks = append(c.Disks, vm.Disk{Path: p})
		}
	}})
	hostDir := filepath.Dir(filepath.Dir(v.Dir))
	work := t.TempDir()
	newDriver := func(t *testing.T) host.Driver {
		d := socket.New(socket.Options{HostDir: hostDir, WorkDir: work})
		t.Cleanup(func() { d.Close() })
		return d
	}
	var refs []string
	for _, d := range v.Disks {
		refs = append(refs, d.NodeName)
	}
	ctx := context.Background()
	lab, err := qemu.DialMonitor(ctx, v.LabQMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	hosttest.Run(t, hosttest.Harness{
		Driver: newDriver(t), NewDriver: newDriver, Instance: v.Instance,
		Refs: refs, Devices: []string{"/dev/vda", "/dev/vdb"}, DiskSize: size,
		Clean: func(t *testing.T) {
			t.Helper()
			clean(t, lab, refs, work)
		},
	})
}

// clean fails the test if a fleecing node, a block job, an export or a
// fleecing file is left, or a disk has other than one of Raksha's bitmaps
// (its base).
func clean(t *testing.T, mon *qemu.Monitor, refs []string, work string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var nodes []struct {
		Name    string `json:"node-name"`
		Bitmaps []struct {
			Name string `json:"name"`
		} `json:"dirty-bitmaps"`
	}
	if err := mon.Run(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		t.Fatal(err)
	}
	based := 0
	for _, n := range nodes {
		if strings.HasPrefix(n.Name, "fleece") {
			t.Errorf("node %s left", n.Name)
		}
		var ours []string
		for _, b := range n.Bitmaps {
			if strings.HasPrefix(b.Name, qemu.BitmapPrefix) {
				ours = append(ours, b.Name)
			}
		}
		if len(ours) > 1 {
			t.Errorf("node %s keeps %d of Raksha's bitmaps: %v", n.Name, len(ours), ours)
		}
		if len(ours) == 1 {
			based++
		}
	}
	if based != len(refs) {
		t.Errorf("%d nodes keep a base bitmap, want the %d disks'", based, len(refs))
	}
	var jobs, exports []json.RawMessage
	if err := mon.Run(ctx, "query-block-jobs", nil, &jobs); err != nil {
		t.Fatal(err)
	}
	if err := mon.Run(ctx, "query-block-exports", nil, &exports); err != nil {
		t.Fatal(err)
	}
	if len(jobs) > 0 || len(exports) > 0 {
		t.Errorf("left: jobs %s, exports %s", jobs, exports)
	}
	if m, _ := filepath.Glob(filepath.Join(work, "*", "fleece-*")); len(m) > 0 {
		t.Errorf("fleecing files left: %v", m)
	}
}

// TestAgentRecordsFreezes: with Options.Freezes the driver's agents record
// every freeze for the watchdog (route: the instance's agent socket) and
// remove the record after the thaw.
func TestAgentRecordsFreezes(t *testing.T) {
	hostDir, err := os.MkdirTemp("", "rks")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(hostDir) })
	inst := filepath.Join(hostDir, "instances", "vm1")
	if err := os.MkdirAll(inst, 0o755); err != nil {
		t.Fatal(err)
	}
	agenttest.NewFake(t, filepath.Join(inst, guest.AgentSocketName))
	recs, err := freezerec.Open(filepath.Join(hostDir, "freezes"))
	if err != nil {
		t.Fatal(err)
	}
	d := socket.New(socket.Options{HostDir: hostDir, WorkDir: t.TempDir(), Freezes: recs})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.Agent(ctx, "vm1", guest.Options{Owner: "raksha freeze wf-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h, err := c.Freeze(ctx, guest.FreezeOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := recs.Read("socket-vm1")
	if err != nil {
		t.Fatal(err)
	}
	want := freezerec.Route{Kind: freezerec.Socket, Instance: "vm1", Socket: filepath.Join(inst, guest.AgentSocketName)}
	if rec.Route != want || rec.ID != h.ID || rec.Owner != "raksha freeze wf-1" {
		t.Fatalf("record %+v; want route %+v, freeze %s", rec, want, h.ID)
	}
	if _, err := h.Thaw(ctx); err != nil {
		t.Fatal(err)
	}
	if keys, err := recs.Keys(); err != nil || len(keys) != 0 {
		t.Fatalf("records after the thaw: %v, %v", keys, err)
	}
}
