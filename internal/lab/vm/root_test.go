package vm_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/lab/guestapp"
	"github.com/raksha-backup/raksha/internal/lab/vm"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
)

// TestRootDiskBoot boots the guest as Nova boots an AMI-style image: kernel
// and initramfs given, "root=/dev/vda" on the command line, the root disk a
// qcow2 overlay on a copy of the raw root.img as the first virtio disk, and a
// data disk beside it. It checks through the agent that / is /dev/vda as
// ext4, that /data/root is the same device and the data disk is at
// /data/data, that the writer writes on both, and that a freeze stalls the
// writer on the root disk too and thaws; then, the guest stopped, that the
// overlay holds intact records. A second boot of the same overlay with
// root=LABEL=root finds the root disk by its label and mounts the data disk
// at the same place again.
func TestRootDiskBoot(t *testing.T) {
	img := vmtest.Image(t)
	if img.Root == "" {
		t.Fatal("the image has no root.img")
	}
	lab := vmtest.LabDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	disks := filepath.Join(lab, "disks")
	base := filepath.Join(disks, "root-base.img")
	overlay := filepath.Join(disks, "rooted-root.qcow2")
	data := filepath.Join(disks, "rooted-data.qcow2")
	if err := os.MkdirAll(disks, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreateDisk(ctx, data, "data", vmtest.DefaultDiskSize); err != nil {
		t.Fatal(err)
	}
	qemuImg(ctx, t, "convert", "-f", "raw", "-O", "raw", img.Root, base) // a sparse copy
	qemuImg(ctx, t, "create", "-f", "qcow2", "-b", base, "-F", "raw", overlay, "1G")

	cfg := vm.Config{LabDir: lab, Host: "host1", Instance: "rooted", Image: img,
		Disks:       []vm.Disk{{Path: overlay, Serial: "root"}, {Path: data, Serial: "data"}},
		ExtraAppend: "root=/dev/vda"}
	v, stop := startOnce(ctx, t, cfg)
	t.Logf("booted from the root disk in %v (%s)", v.BootDuration.Round(time.Millisecond), v.Accel)

	c, err := v.Agent(ctx, guest.Options{Owner: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkRootMounts(ctx, t, c)
	if out := guestRun(ctx, t, c, "cat", "/etc/raksha-rootfs"); !strings.HasPrefix(out, "raksha lab guest root file system") {
		t.Errorf("/etc/raksha-rootfs: %q", out)
	}
	fs, err := c.GetFSInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		t.Logf("fsinfo: %s on %s (%s)", f.Name, f.Mountpoint, f.Type)
	}

	// The writer writes on the root disk (/raksha-writer there) and the data disk.
	time.Sleep(2 * time.Second)
	if out := guestRun(ctx, t, c, "ls", "/raksha-writer"); !strings.Contains(out, guestapp.FileSuffix) {
		t.Errorf("no record file in /raksha-writer on the root file system: %q", out)
	}
	before := guestCheck(ctx, t, c)
	for _, l := range []string{"root", "data"} {
		if r := before[l]; r == nil || r.Good < 5 || !r.OK() {
			t.Fatalf("in-guest check of /data/%s before the freeze: %v", l, r)
		}
	}

	// Freeze and thaw: with a real root file system guest-fsfreeze freezes /
	// too (the hook logs to /run, a tmpfs). The writer stalls on both disks.
	const hold = 1500 * time.Millisecond
	h, err := c.Freeze(ctx, guest.FreezeOptions{Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("freeze: %v\nserial console:\n%s", err, serialTail(v))
	}
	if st, err := c.FsfreezeStatus(ctx); err != nil || st != guest.Frozen {
		t.Errorf("status while frozen: %q, %v", st, err)
	}
	time.Sleep(hold)
	rep, err := h.Thaw(ctx)
	if err != nil {
		t.Fatalf("thaw: %v\nserial console:\n%s", err, serialTail(v))
	}
	if st, err := c.FsfreezeStatus(ctx); err != nil || st != guest.Thawed {
		t.Errorf("status after thaw: %q, %v", st, err)
	}
	t.Logf("freeze: %d filesystems frozen, %d thawed, window %v", h.Filesystems, rep.Thawed, rep.Window.Round(time.Millisecond))
	if h.Filesystems < 2 || rep.GuardThawed {
		t.Errorf("freeze froze %d filesystems (want / and /data/data at least), guard thawed: %v", h.Filesystems, rep.GuardThawed)
	}
	time.Sleep(500 * time.Millisecond)
	after := guestCheck(ctx, t, c)
	for _, l := range []string{"root", "data"} {
		r := after[l]
		if r == nil || !r.OK() || r.LastGoodSeq <= before[l].LastGoodSeq {
			t.Fatalf("in-guest check of /data/%s after the thaw: %v", l, r)
		}
		if r.MaxGap < hold*2/3 {
			t.Errorf("/data/%s: longest stall of the writer %v, want about %v: the freeze did not stall it", l, r.MaxGap, hold)
		}
	}
	hooks := guestRun(ctx, t, c, "cat", "/run/raksha/hook.log")
	if !strings.Contains(hooks, "HOOK freeze end exit=0") || !strings.Contains(hooks, "HOOK thaw end exit=0") {
		t.Errorf("hook log:\n%s", hooks)
	}
	c.Close()

	serial, _ := v.Serial()
	var boot []string
	for _, l := range strings.Split(serial, "\n") {
		if strings.HasPrefix(l, "INIT: ") || strings.HasPrefix(l, "HOOK ") {
			boot = append(boot, l)
		}
	}
	t.Logf("serial console (init and hook lines):\n%s", strings.Join(boot, "\n"))
	for _, w := range []string{"INIT: switching to root /dev/vda (root=/dev/vda)", "INIT: running on root /dev/vda",
		"INIT: bound / at /data/root", "INIT: /dev/vda: mounted already", "INIT: mounted /dev/vdb at /data/data",
		"INIT: guestapp writer writing", "RAKSHA-READY"} {
		if !strings.Contains(serial, w) {
			t.Errorf("serial console lacks %q:\n%s", w, serial)
		}
	}
	for _, w := range []string{"insmod", "FAILED", "staying in the initramfs"} {
		if strings.Contains(serial, w) {
			t.Errorf("serial console has %q:\n%s", w, serial)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// The root disk as QEMU left it, read through the overlay's backing
	// chain: every record intact (the last one may be cut by the power-off).
	for _, d := range []struct{ path, label string }{{overlay, "root"}, {data, "data"}} {
		reps, err := guestapp.CheckImage(ctx, d.path, guestapp.CheckOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(reps) != 1 {
			t.Fatalf("%s: %d record files, want 1", d.path, len(reps))
		}
		r := reps[0]
		t.Logf("host-side check of %s: %s", filepath.Base(d.path), r)
		if len(r.Missing) > 0 || (!r.OK() && !r.TornTail) || r.Good < after[d.label].Good || r.Label != d.label {
			t.Errorf("%s: %s (%+v)", d.path, r, r)
		}
	}

	// Boot the same overlay again, the root named by its label: the root file
	// system keeps /data/data from the first boot, which must not make the
	// data disk move to /data/data-vdb.
	cfg.ExtraAppend = "root=LABEL=root"
	v2, stop2 := startOnce(ctx, t, cfg)
	t.Logf("second boot from the root disk (root=LABEL=root) in %v", v2.BootDuration.Round(time.Millisecond))
	c2, err := v2.Agent(ctx, guest.Options{Owner: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	checkRootMounts(ctx, t, c2)
	time.Sleep(time.Second)
	for l, r := range guestCheck(ctx, t, c2) {
		if len(r.Missing) > 0 || (!r.OK() && !r.TornTail) {
			t.Errorf("/data/%s after the second boot: %v", l, r)
		}
	}
	out := guestRun(ctx, t, c2, "ls", "/raksha-writer")
	if n := strings.Count(out, guestapp.FileSuffix); n != 2 {
		t.Errorf("/raksha-writer after the second boot: %d record files, want 2: %q", n, out)
	}
	if serial, _ := v2.Serial(); !strings.Contains(serial, "INIT: switching to root /dev/vda (root=LABEL=root)") {
		t.Errorf("serial console of the second boot:\n%s", serial)
	}
	c2.Close()
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
}

// TestRootDiskFallback boots with root= naming a disk that is not there:
// /init says so on the console and goes on as without root= (the data disk
// at /data/<label>, the writer, the agent).
func TestRootDiskFallback(t *testing.T) {
	img := vmtest.Image(t)
	v := vmtest.Boot(t, img, vmtest.Spec{LabDir: vmtest.LabDir(t), Instance: "noroot", Labels: []string{"data"},
		Configure: func(c *vm.Config) { c.ExtraAppend = "root=/dev/vdz" }})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := v.Agent(ctx, guest.Options{Owner: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mounts := guestRun(ctx, t, c, "cat", "/proc/mounts")
	if !hasMount(mounts, "/dev/vda", "/data/data") || hasMount(mounts, "", "/data/root") || hasMount(mounts, "/dev/vda", "/") {
		t.Errorf("mounts after the fallback:\n%s", mounts)
	}
	if res, err := c.Run(ctx, guest.ExecRequest{Path: "test", Args: []string{"-e", "/etc/raksha-rootfs"}}); err != nil || res.ExitCode == 0 {
		t.Errorf("the guest runs from the root disk after all (/etc/raksha-rootfs exists): %+v, %v", res, err)
	}
	serial, _ := v.Serial()
	for _, w := range []string{"INIT: root=/dev/vdz: /dev/vdz does not exist; staying in the initramfs",
		"INIT: mounted /dev/vda at /data/data", "RAKSHA-READY"} {
		if !strings.Contains(serial, w) {
			t.Errorf("serial console lacks %q:\n%s", w, serial)
		}
	}
	time.Sleep(time.Second)
	if r := guestCheck(ctx, t, c)["data"]; r == nil || !r.OK() || r.Good < 5 {
		t.Errorf("in-guest check of /data/data: %v", r)
	}
}

// startOnce starts cfg within the guest slots; the returned stop may be
// called once, and is called when the test ends if it was not.
func startOnce(ctx context.Context, t *testing.T, cfg vm.Config) (*vm.VM, func() error) {
	t.Helper()
	v, stop, err := vmtest.StartConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	once := func() error {
		if stopped {
			return nil
		}
		stopped = true
		return stop()
	}
	t.Cleanup(func() {
		if err := once(); err != nil {
			t.Errorf("stop guest %s: %v", v.Instance, err)
		}
	})
	return v, once
}

// checkRootMounts checks the guest's mounts: / is /dev/vda as ext4 read-write,
// /data/root the same device, the data disk /dev/vdb at /data/data.
func checkRootMounts(ctx context.Context, t *testing.T, c *guest.Client) {
	t.Helper()
	mounts := guestRun(ctx, t, c, "cat", "/proc/mounts")
	t.Logf("guest /proc/mounts:\n%s", mounts)
	var root []string
	for _, l := range strings.Split(mounts, "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[1] == "/" {
			root = f
		}
	}
	if root == nil || root[0] != "/dev/vda" || root[2] != "ext4" || !strings.HasPrefix(root[3], "rw") {
		t.Errorf("/ is %v, want /dev/vda ext4 rw", root)
	}
	if !hasMount(mounts, "/dev/vda", "/data/root") {
		t.Errorf("/data/root is not a mount of /dev/vda")
	}
	if !hasMount(mounts, "/dev/vdb", "/data/data") {
		t.Errorf("the data disk /dev/vdb is not mounted at /data/data")
	}
	if n := strings.Count(mounts, "/dev/vda "); n != 2 {
		t.Errorf("/dev/vda mounted %d times, want 2 (/ and /data/root)", n)
	}
	// The bind mount is the same file system: the marker is seen through it.
	if out := guestRun(ctx, t, c, "cat", "/data/root/etc/raksha-rootfs"); out == "" {
		t.Error("/data/root/etc/raksha-rootfs is empty")
	}
}

// hasMount reports whether mounts (/proc/mounts) has dev (any when empty)
// mounted at dir.
func hasMount(mounts, dev, dir string) bool {
	for _, l := range strings.Split(mounts, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[1] == dir && (dev == "" || f[0] == dev) {
			return true
		}
	}
	return false
}

// guestRun runs a program in the guest and returns its output; a non-zero
// exit fails the test.
func guestRun(ctx context.Context, t *testing.T, c *guest.Client, path string, args ...string) string {
	t.Helper()
	res, err := c.Run(ctx, guest.ExecRequest{Path: path, Args: args, Capture: true})
	if err != nil {
		t.Fatalf("%s %v in the guest: %v", path, args, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("%s %v in the guest: exit %d\n%s%s", path, args, res.ExitCode, res.Stdout, res.Stderr)
	}
	return string(res.Stdout)
}

// guestCheck runs `guestapp check -json` on every /data/<label> in the guest
// and returns the reports by label (the writer's current record file; the
// latest when a disk holds several).
func guestCheck(ctx context.Context, t *testing.T, c *guest.Client) map[string]*guestapp.Report {
	t.Helper()
	mounts := guestRun(ctx, t, c, "cat", "/proc/mounts")
	args := []string{"check", "-json"}
	for _, l := range strings.Split(mounts, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && filepath.Dir(f[1]) == "/data" {
			args = append(args, f[1])
		}
	}
	res, err := c.Run(ctx, guest.ExecRequest{Path: "guestapp", Args: args, Capture: true})
	if err != nil {
		t.Fatal(err)
	}
	var reps []*guestapp.Report
	if err := json.Unmarshal(res.Stdout, &reps); err != nil {
		t.Fatalf("guestapp %v: exit %d, %v\n%s%s", args, res.ExitCode, err, res.Stdout, res.Stderr)
	}
	byLabel := map[string]*guestapp.Report{}
	for _, r := range reps {
		if old := byLabel[r.Label]; old == nil || r.FirstTime.After(old.FirstTime) {
			byLabel[r.Label] = r
		}
	}
	return byLabel
}

func qemuImg(ctx context.Context, t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v: %s", args, err, out)
	}
}

func serialTail(v *vm.VM) string {
	s, _ := v.Serial()
	if len(s) > 3000 {
		s = s[len(s)-3000:]
	}
	return s
}
