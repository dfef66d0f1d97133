package vm_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/lab/guestapp"
	"github.com/raksha-backup/raksha/internal/lab/vm"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
)

func TestStartRejectsBadConfig(t *testing.T) {
	ctx := context.Background()
	if _, err := vm.Start(ctx, vm.Config{}); err == nil {
		t.Error("empty config: no error")
	}
	long := filepath.Join(t.TempDir(), strings.Repeat("x", 100))
	_, err := vm.Start(ctx, vm.Config{LabDir: long, Host: "h", Instance: "i", Image: vm.Image{Kernel: "k", Initrd: "i"}})
	if err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("long socket path: err = %v", err)
	}
	_, err = vm.Start(ctx, vm.Config{LabDir: t.TempDir(), Host: "h", Instance: "i", Image: vm.Image{Kernel: "k", Initrd: "i"},
		Disks: []vm.Disk{{Path: "/nonexistent.qcow2"}}})
	if err == nil || !strings.Contains(err.Error(), "disk 0") {
		t.Errorf("missing disk: err = %v", err)
	}
}

// TestGuestLifecycle boots a guest with two data disks, checks that /init
// mounted both by label and the writer writes on both, stops it with QMP
// quit, and checks the record files on the stopped disks from the host.
func TestGuestLifecycle(t *testing.T) {
	img := vmtest.Image(t)
	lab := vmtest.LabDir(t)
	v := vmtest.Boot(t, img, vmtest.Spec{LabDir: lab, Instance: "life", Labels: []string{"alpha", "beta"}})

	want := filepath.Join(lab, "hosts", "host1", "instances", "life")
	if v.Dir != want || v.QMPSocket != filepath.Join(want, "qmp.sock") || v.AgentSocket != filepath.Join(want, "qga.sock") {
		t.Fatalf("layout: dir %s, qmp %s, qga %s", v.Dir, v.QMPSocket, v.AgentSocket)
	}
	if v.Disks[1].NodeName != "disk1" || v.Disks[1].DeviceID != "vdisk1" {
		t.Fatalf("disk names %+v", v.Disks[1])
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := v.Agent(ctx, guest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fs, err := c.GetFSInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mounted := map[string]bool{}
	for _, f := range fs {
		mounted[f.Mountpoint] = true
	}
	if !mounted["/data/alpha"] || !mounted["/data/beta"] {
		t.Fatalf("fsinfo %+v: want /data/alpha and /data/beta", fs)
	}
	// Let the writer write a while, and see it in the guest.
	time.Sleep(2 * time.Second)
	res, err := c.Run(ctx, guest.ExecRequest{Path: "guestapp", Args: []string{"check", "/data/alpha", "/data/beta"}, Capture: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || strings.Count(string(res.Stdout), "OK ") != 2 {
		t.Fatalf("in-guest check: exit %d\n%s%s", res.ExitCode, res.Stdout, res.Stderr)
	}
	t.Logf("in-guest check:\n%s", res.Stdout)
	c.Close()

	serial, _ := v.Serial()
	for _, w := range []string{"mounted /dev/vda at /data/alpha", "mounted /dev/vdb at /data/beta", "RAKSHA-READY", "record writer started"} {
		if !strings.Contains(serial, w) {
			t.Errorf("serial console lacks %q:\n%s", w, serial)
		}
	}

	start := time.Now()
	if err := v.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stop := time.Since(start)
	t.Logf("stop (QMP quit) took %v", stop.Round(time.Millisecond))
	if stop > vm.DefaultStopTimeout {
		t.Errorf("stop took %v: QMP quit did not work, QEMU was killed", stop)
	}
	select {
	case <-v.Done():
	default:
		t.Fatal("QEMU still running after Stop")
	}
	if _, err := os.Stat(v.QMPSocket); !os.IsNotExist(err) {
		t.Errorf("QMP socket left behind: %v", err)
	}
	if err := v.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}

	// The disks as QEMU left them: every record intact up to the end (the
	// last one may be cut by the power-off).
	for _, d := range v.Disks {
		reps, err := guestapp.CheckImage(ctx, d.Path, guestapp.CheckOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r := reps[0]
		t.Logf("host-side check of %s: %s", filepath.Base(d.Path), r)
		if len(r.Missing) > 0 || (!r.OK() && !r.TornTail) || r.Good < 5 || r.Label != d.Serial {
			t.Errorf("%s: %s (%+v)", d.Path, r, r)
		}
	}
}

// TestStartAgain restarts a stopped guest on the same disks: the writer
// starts a new record file and leaves the old one as it was.
func TestStartAgain(t *testing.T) {
	img := vmtest.Image(t)
	lab := vmtest.LabDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v, stop, err := vmtest.Start(ctx, img, vmtest.Spec{LabDir: lab, Instance: "again", Labels: []string{"data"},
		Configure: func(c *vm.Config) { c.WriterInterval = 20 * time.Millisecond }})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	cfg := vm.Config{LabDir: lab, Host: "host1", Instance: "again", Image: img, Disks: []vm.Disk{{Path: v.Disks[0].Path}}}
	v2, stop2, err := vmtest.StartConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer stop2()
	t.Logf("second boot on the same disk: %v", v2.BootDuration.Round(time.Millisecond))
	c, err := v2.Agent(ctx, guest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(time.Second)
	res, err := c.Run(ctx, guest.ExecRequest{Path: "guestapp", Args: []string{"check", "/data/data"}, Capture: true})
	if err != nil {
		t.Fatal(err)
	}
	out := string(res.Stdout)
	t.Logf("in-guest check after restart (exit %d):\n%s%s", res.ExitCode, out, res.Stderr)
	if strings.Count(out, "\n") < 2 || strings.Contains(out, "DAMAGED") && !strings.Contains(out, "torn tail only") {
		serial, _ := v2.Serial()
		t.Fatalf("serial console:\n%s\n"+"want two record files, the old one intact up to a torn tail at most:\n%s", serial, out)
	}
}

// TestAccelAuto boots with AccelAuto: KVM when a boot within the deadline
// proves it works, TCG otherwise. Where KVM is broken (nested, as on the CI
// machines) it takes up to KVMBootTimeout longer; there the fallback is what
// it proves (about 8 s in all).
func TestAccelAuto(t *testing.T) {
	img := vmtest.Image(t)
	v := vmtest.Boot(t, img, vmtest.Spec{LabDir: vmtest.LabDir(t), Instance: "auto", Labels: []string{"data"},
		Configure: func(c *vm.Config) { c.Accel = vm.AccelAuto; c.KVMBootTimeout = 20 * time.Second }})
	if v.Accel != vm.AccelKVM && v.Accel != vm.AccelTCG {
		t.Fatalf("AccelAuto booted with %q, want kvm or tcg", v.Accel)
	}
	t.Logf("AccelAuto booted with %s in %v", v.Accel, v.BootDuration.Round(time.Millisecond))
}
