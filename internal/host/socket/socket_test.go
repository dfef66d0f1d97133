package socket_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/disk/qemu"
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
