package libvirt_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/host"
	"github.com/raksha-backup/raksha/internal/host/hosttest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
	"github.com/raksha-backup/raksha/internal/repo"
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
			bms := bitmaps(t, c, d)
			for n, ours := range bms {
				if len(ours) > 1 {
					t.Errorf("node %s keeps %d of Raksha's bitmaps: %v", n, len(ours), ours)
				}
			}
			if len(bms) != 2 {
				t.Errorf("%d nodes keep a base bitmap, want the 2 disks': %v", len(bms), bms)
			}
		},
	})
}

// TestDriverReleasesStaleCheckpoints: when a disk's base backup recorded
// an older checkpoint than the VM's other disks (its bitmap of that
// checkpoint is still in its image), the disk is read in full and the
// commit releases that checkpoint's bitmap too, on the disks that still
// have it; no disk is left with more than one of Raksha's bitmaps.
func TestDriverReleasesStaleCheckpoints(t *testing.T) {
	c := libvirttest.Conn(t)
	img := vmtest.Image(t)
	const size = 64 << 20
	paths := hosttest.BlankDisks(t, 2, size)
	dom := libvirttest.Boot(t, c, img, libvirttest.Spec{Images: paths, NoWriter: true})
	d := libvirt.NewDriver(c, libvirt.DriverOptions{LockDir: t.TempDir(), WorkDir: t.TempDir()})
	ctx := context.Background()
	refs := []string{"target=vda", "target=vdb"}
	job := func(id string, bases ...*repo.Checkpoint) map[string]repo.Checkpoint {
		t.Helper()
		return commitJob(t, d, dom.UUID, id, refs, bases, size)
	}
	x := job("20261207-000001-stale1")
	rx := x["target=vda"]
	y := job("20261207-000002-stale2", &rx, &rx)
	ry := y["target=vda"]
	if y["target=vdb"].Mode != "incremental" {
		t.Fatalf("second job on vdb: %+v", y["target=vdb"])
	}
	// vdb keeps a bitmap of checkpoint X, as after a detach during the
	// release of X; its base backup recorded X.
	node := formatNode(t, c, dom, paths[1])
	if _, err := c.Libvirt().QEMUDomainMonitorCommand(dom.Dom, fmt.Sprintf(`{"execute":"block-dirty-bitmap-add","arguments":{"node":%q,"name":%q,"persistent":true}}`, node, rx.Name), 0); err != nil {
		t.Fatal(err)
	}
	if got := bitmaps(t, c, dom)[node]; len(got) != 2 {
		t.Fatalf("vdb's bitmaps before: %v, want X and Y", got)
	}
	z := job("20261207-000003-stale3", &ry, &rx)
	if z["target=vda"].Mode != "incremental" || z["target=vdb"].Mode != "full" || !strings.Contains(z["target=vdb"].Reason, rx.Name) {
		t.Errorf("third job: vda %+v, vdb %+v; want vda incremental, vdb full naming %s", z["target=vda"], z["target=vdb"], rx.Name)
	}
	for n, bms := range bitmaps(t, c, dom) {
		if len(bms) != 1 || bms[0] != z["target=vda"].Name {
			t.Errorf("node %s after the commit: bitmaps %v, want only %s", n, bms, z["target=vda"].Name)
		}
	}
	if names, err := c.CheckpointNames(ctx, dom.Dom); err != nil || len(names) > 0 {
		t.Errorf("checkpoint metadata left: %v %v", names, err)
	}
}

type blockNode struct {
	Name    string `json:"node-name"`
	File    string `json:"file"`
	Drv     string `json:"drv"`
	Bitmaps []struct {
		Name string `json:"name"`
	} `json:"dirty-bitmaps"`
}

func blockNodes(t *testing.T, c *libvirt.Conn, dom *libvirttest.Domain) []blockNode {
	t.Helper()
	out, err := c.Libvirt().QEMUDomainMonitorCommand(dom.Dom, `{"execute":"query-named-block-nodes","arguments":{"flat":true}}`, 0)
	if err != nil {
		t.Fatal(err)
	}
	var reply struct {
		Return []blockNode `json:"return"`
	}
	if err := json.Unmarshal([]byte(out), &reply); err != nil {
		t.Fatal(err)
	}
	return reply.Return
}

// formatNode is the qcow2 node of the image file path.
func formatNode(t *testing.T, c *libvirt.Conn, dom *libvirttest.Domain, path string) string {
	t.Helper()
	for _, n := range blockNodes(t, c, dom) {
		if n.Drv == "qcow2" && n.File == path {
			return n.Name
		}
	}
	t.Fatalf("no qcow2 node of %s", path)
	return ""
}

// bitmaps lists Raksha's bitmaps per node that has any.
func bitmaps(t *testing.T, c *libvirt.Conn, dom *libvirttest.Domain) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, n := range blockNodes(t, c, dom) {
		for _, b := range n.Bitmaps {
			if strings.HasPrefix(b.Name, libvirt.CheckpointPrefix) {
				out[n.Name] = append(out[n.Name], b.Name)
			}
		}
	}
	return out
}

// TestDriverReadsBlockDiskInFull: a volume attached as a block device (an
// iSCSI or FC Cinder volume: <disk type='block'>, raw) keeps no dirty
// bitmaps; the driver reads it through the job's export in full, saying
// why, and the export is the device's content.
func TestDriverReadsBlockDiskInFull(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("a loop device needs root, and CI runs as root")
		}
		t.Skip("SKIPPED: a loop device needs root (CI runs as root)")
	}
	c := libvirttest.Conn(t)
	img := vmtest.Image(t)
	paths := hosttest.BlankDisks(t, 1, 64<<20)
	backing := filepath.Join(t.TempDir(), "lun.raw")
	data := make([]byte, 16<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(backing, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	dom := libvirttest.Boot(t, c, img, libvirttest.Spec{Images: paths, Blocks: []string{loop}, NoWriter: true})
	d := libvirt.NewDriver(c, libvirt.DriverOptions{LockDir: t.TempDir(), WorkDir: t.TempDir()})
	ctx := context.Background()
	req := host.Request{Instance: dom.UUID, BackupID: "20261207-000001-block1", Disks: []host.Disk{{Ref: "target=vda"}, {Ref: "target=vdb"}}}
	if _, err := d.Begin(ctx, req); err != nil {
		t.Fatal(err)
	}
	e, err := d.Open(ctx, req, "target=vdb")
	if err != nil {
		t.Fatal(err)
	}
	if e.Known || e.Record.Mode != "full" || !strings.Contains(e.Record.Reason, "no persistent dirty bitmaps") || !strings.Contains(e.Record.Reason, loop) {
		t.Errorf("block disk: known %v, record %+v; want a full read naming the device and why", e.Known, e.Record)
	}
	got := make([]byte, len(data))
	if _, err := e.Source.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) || e.Source.Size() != int64(len(data)) {
		t.Errorf("the export of the block disk (%d bytes) is not the device's content (%d bytes)", e.Source.Size(), len(data))
	}
	if err := d.End(ctx, req, host.Commit); err != nil {
		t.Fatal(err)
	}
	if names, err := c.CheckpointNames(ctx, dom.Dom); err != nil || len(names) > 0 {
		t.Errorf("checkpoint metadata left: %v %v", names, err)
	}
	if active, err := c.JobActive(ctx, dom.Dom); err != nil || active {
		t.Errorf("job left: %v %v", active, err)
	}
}

// TestDriverReleasesBrokenBitmaps: after QEMU is killed, the disks' bitmaps
// of the base checkpoint are inconsistent (not stored cleanly); the next
// job reads the disks in full, and its commit removes those broken
// bitmaps, so that a crash does not leave dead bitmaps in the images for
// ever.
func TestDriverReleasesBrokenBitmaps(t *testing.T) {
	c := libvirttest.Conn(t)
	img := vmtest.Image(t)
	const size = 64 << 20
	paths := hosttest.BlankDisks(t, 2, size)
	dom := libvirttest.Boot(t, c, img, libvirttest.Spec{Images: paths, NoWriter: true})
	d := libvirt.NewDriver(c, libvirt.DriverOptions{LockDir: t.TempDir(), WorkDir: t.TempDir()})
	ctx := context.Background()
	refs := []string{"target=vda", "target=vdb"}
	job := func(id string, base *repo.Checkpoint) map[string]repo.Checkpoint {
		t.Helper()
		return commitJob(t, d, dom.UUID, id, refs, []*repo.Checkpoint{base, base}, size)
	}
	x := job("20261207-000001-broken1", nil)["target=vda"]
	// A clean stop stores the bitmaps in the images; the next start marks
	// them in use, and a kill leaves them so: inconsistent.
	if err := c.Libvirt().DomainDestroy(dom.Dom); err != nil {
		t.Fatal(err)
	}
	if err := c.Libvirt().DomainCreate(dom.Dom); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := libvirttest.WaitAgent(wctx, c, dom); err != nil {
		t.Fatal(err)
	}
	killQEMU(t, c, dom)
	t.Logf("bitmaps after the restart: %v", bitmaps(t, c, dom))
	y := job("20261207-000002-broken2", &x)
	for _, r := range refs {
		if y[r].Mode != "full" || !strings.Contains(y[r].Reason, "does not validate") {
			t.Errorf("after the kill, %s: %+v; want a full read because the base does not validate", r, y[r])
		}
	}
	for n, bms := range bitmaps(t, c, dom) {
		if len(bms) != 1 || bms[0] != y["target=vda"].Name {
			t.Errorf("node %s after the commit: bitmaps %v, want only %s", n, bms, y["target=vda"].Name)
		}
	}
	if names, err := c.CheckpointNames(ctx, dom.Dom); err != nil || len(names) > 0 {
		t.Errorf("checkpoint metadata left: %v %v", names, err)
	}
}

// commitJob runs one job of the domain's disks refs (bases[i], when set,
// the base of refs[i], of size bytes) to its commit and returns what each
// disk's manifest would record.
func commitJob(t *testing.T, d host.Driver, instance, id string, refs []string, bases []*repo.Checkpoint, size int64) map[string]repo.Checkpoint {
	t.Helper()
	ctx := context.Background()
	req := host.Request{Instance: instance, BackupID: id}
	for i, r := range refs {
		dk := host.Disk{Ref: r}
		if i < len(bases) && bases[i] != nil {
			dk.Base, dk.BaseSize = bases[i], size
		}
		req.Disks = append(req.Disks, dk)
	}
	if _, err := d.Begin(ctx, req); err != nil {
		t.Fatal(err)
	}
	recs := map[string]repo.Checkpoint{}
	for _, r := range refs {
		e, err := d.Open(ctx, req, r)
		if err != nil {
			t.Fatal(err)
		}
		recs[r] = e.Record
	}
	if err := d.End(ctx, req, host.Commit); err != nil {
		t.Fatal(err)
	}
	return recs
}
