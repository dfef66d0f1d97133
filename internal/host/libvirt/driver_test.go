package libvirt_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raksha-backup/raksha/internal/host"
	"github.com/raksha-backup/raksha/internal/host/hosttest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
)

// TestDriverSharedSuite runs the host drivers' shared suite on libvirt: a
// real domain with two blank qcow2 disks, reached only through libvirtd.
func TestDriverSharedSuite(t *testing.T) {
	c := libvirttest.Conn(t)
	img := vmtest.Image(t)
	const size = 64 << 20
	paths := hosttest.BlankDisks(t, 2, size)
	d := libvirttest.Boot(t, c, img, libvirttest.Spec{Images: paths, NoWriter: true})
	work, locks := t.TempDir(), t.TempDir()
	newDriver := func(t *testing.T) host.Driver {
		return libvirt.NewDriver(c, libvirt.DriverOptions{LockDir: locks, WorkDir: work})
	}
	hosttest.Run(t, hosttest.Harness{
		Driver: newDriver(t), NewDriver: newDriver, Instance: d.UUID,
		Refs: []string{"target=vda", "target=vdb"}, Devices: []string{"/dev/vda", "/dev/vdb"}, DiskSize: size,
		Clean: func(t *testing.T) {
			t.Helper()
			ctx := context.Background()
			if names, err := c.CheckpointNames(ctx, d.Dom); err != nil || len(names) > 0 {
				t.Errorf("checkpoint metadata left: %v %v", names, err)
			}
			if active, err := c.JobActive(ctx, d.Dom); err != nil || active {
				t.Errorf("job left: %v %v", active, err)
			}
			if m, _ := filepath.Glob(filepath.Join(work, "libvirt", "*", "*.scratch")); len(m) > 0 {
				t.Errorf("scratch files left: %v", m)
			}
			// One of Raksha's bitmaps per disk: the base.
			out, err := c.Libvirt().QEMUDomainMonitorCommand(d.Dom, `{"execute":"query-named-block-nodes","arguments":{"flat":true}}`, 0)
			if err != nil {
				t.Fatal(err)
			}
			var reply struct {
				Return []struct {
					Name    string `json:"node-name"`
					File    string `json:"file"`
					Bitmaps []struct {
						Name string `json:"name"`
					} `json:"dirty-bitmaps"`
				} `json:"return"`
			}
			if err := json.Unmarshal([]byte(out), &reply); err != nil {
				t.Fatal(err)
			}
			based := 0
			for _, n := range reply.Return {
				var ours []string
				for _, b := range n.Bitmaps {
					if strings.HasPrefix(b.Name, libvirt.CheckpointPrefix) {
						ours = append(ours, b.Name)
					}
				}
				if len(ours) > 1 {
					t.Errorf("node %s (%s) keeps %d of Raksha's bitmaps: %v", n.Name, n.File, len(ours), ours)
				}
				if len(ours) == 1 {
					based++
				}
			}
			if based != 2 {
				t.Errorf("%d nodes keep a base bitmap, want the 2 disks'", based)
			}
		},
	})
}
