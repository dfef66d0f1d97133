// Package vmtest boots lab guests for tests (package vm), with the rules
// every real-QEMU test follows:
//
//   - Without QEMU and the guest's packages installed, Require skips the test
//     loudly naming `make test-deps`, except under CI (CI set to anything but
//     "", "0" or "false"), where it fails it.
//   - At most MaxGuests (3, or RAKSHA_TEST_MAX_GUESTS) guests run at once on
//     the machine, across all test processes (TCG is CPU-heavy): Boot waits
//     for a free slot (an flock'd file in the temporary directory).
//   - Every guest is stopped when its test ends (and killed by the kernel if
//     the test process dies).
package vmtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raksha-backup/raksha/internal/lab/vm"
)

// Packages are the Debian packages the lab guests need on the host.
func Packages() []string {
	return []string{"qemu-system-x86", "qemu-utils", "qemu-guest-agent", "busybox-static", "e2fsprogs"}
}

// programs are what the packages provide that the tests use.
func programs() []string {
	return []string{"qemu-system-x86_64", "qemu-img", "mkfs.ext4", "debugfs", "busybox", "/usr/sbin/qemu-ga"}
}

// DefaultMaxGuests is the machine-wide number of guests tests run at once.
const DefaultMaxGuests = 3

// DefaultDiskSize is the size of the data disks Boot creates.
const DefaultDiskSize = 64 << 20

func underCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "0" && v != "false"
}

// Require skips t (fails it under CI) when a program the lab guests need is
// missing.
func Require(t testing.TB) {
	t.Helper()
	var missing []string
	for _, p := range programs() {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("lab guests need %s (Debian packages %s): run `make test-deps` or apt-get install them",
		strings.Join(missing, ", "), strings.Join(Packages(), " "))
	if underCI() {
		t.Fatal("CI: " + msg)
	}
	t.Skip("SKIP: " + msg)
}

// Image returns the lab guest image, building it if its cache is stale
// (scripts/build-guest.sh). It calls Require first.
func Image(t testing.TB) vm.Image {
	t.Helper()
	Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := vm.BuildImage(ctx, vm.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest image %s ready in %v", img.Key, img.BuildDuration.Round(time.Millisecond))
	return *img
}

// LabDir returns a new lab directory with a short path (unix socket paths
// are limited to 107 bytes), removed when the test ends.
func LabDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "rk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// Spec describes a guest for Boot.
type Spec struct {
	// LabDir, Host and Instance place the guest (Host "host1" when empty).
	LabDir, Host, Instance string
	// Labels are the data disks to create, by filesystem label (the guest
	// mounts each at /data/<label>); DiskSize their size (DefaultDiskSize
	// when zero).
	Labels   []string
	DiskSize int64
	// Configure, when set, adjusts the configuration before Start.
	Configure func(*vm.Config)
}

// Boot creates the data disks (in <LabDir>/disks/), waits for a guest slot,
// starts the guest and registers its stop for the end of the test.
func Boot(t testing.TB, img vm.Image, s Spec) *vm.VM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	v, stop, err := Start(ctx, img, s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("stop guest %s: %v", v.Instance, err)
		}
	})
	t.Logf("guest %s booted in %v (pid %d, %s, %d disks)", v.Instance, v.BootDuration.Round(time.Millisecond), v.PID, v.Accel, len(v.Disks))
	return v
}

// Start is Boot without a testing.TB, for booting several guests from
// goroutines: it returns the guest and the function that stops it and frees
// its slot (call it exactly once).
func Start(ctx context.Context, img vm.Image, s Spec) (*vm.VM, func() error, error) {
	if s.Host == "" {
		s.Host = "host1"
	}
	if s.DiskSize == 0 {
		s.DiskSize = DefaultDiskSize
	}
	cfg := vm.Config{LabDir: s.LabDir, Host: s.Host, Instance: s.Instance, Image: img}
	ddir := filepath.Join(s.LabDir, "disks")
	if err := os.MkdirAll(ddir, 0o755); err != nil {
		return nil, nil, err
	}
	for _, l := range s.Labels {
		p := filepath.Join(ddir, s.Instance+"-"+l+".qcow2")
		if err := vm.CreateDisk(ctx, p, l, s.DiskSize); err != nil {
			return nil, nil, err
		}
		cfg.Disks = append(cfg.Disks, vm.Disk{Path: p, Serial: l})
	}
	if s.Configure != nil {
		s.Configure(&cfg)
	}
	return StartConfig(ctx, cfg)
}

// StartConfig starts a guest from a full configuration within the
// machine-wide guest slots; it returns the guest and the function that stops
// it and frees its slot (call it exactly once).
func StartConfig(ctx context.Context, cfg vm.Config) (*vm.VM, func() error, error) {
	release, err := AcquireSlot(ctx)
	if err != nil {
		return nil, nil, err
	}
	v, err := vm.Start(ctx, cfg)
	if err != nil {
		release()
		return nil, nil, err
	}
	stop := func() error {
		defer release()
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		return v.Stop(sctx)
	}
	return v, stop, nil
}

// MaxGuests is the number of machine-wide guest slots:
// RAKSHA_TEST_MAX_GUESTS, else DefaultMaxGuests.
func MaxGuests() int {
	if v, err := strconv.Atoi(os.Getenv("RAKSHA_TEST_MAX_GUESTS")); err == nil && v > 0 {
		return v
	}
	return DefaultMaxGuests
}

// AcquireSlots takes n of the machine-wide guest slots at once, all or
// none (n is capped at MaxGuests): a test that will run several guests
// together takes their slots before it starts any, so that two test
// processes, each holding some slots and waiting for more, cannot wait for
// each other for ever. It waits until ctx ends.
func AcquireSlots(ctx context.Context, n int) (release func(), err error) {
	max := MaxGuests()
	n = min(n, max)
	dir := filepath.Join(os.TempDir(), "raksha-vm-slots")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, fmt.Errorf("guest slots: %w", err)
	}
	releaseAll := func(held []*os.File) {
		for _, f := range held {
			unix.Flock(int(f.Fd()), unix.LOCK_UN)
			f.Close()
		}
	}
	for {
		var held []*os.File
		for i := 0; i < max && len(held) < n; i++ {
			f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("slot%d.lock", i)), os.O_RDWR|os.O_CREATE, 0o666)
			if err != nil {
				releaseAll(held)
				return nil, fmt.Errorf("guest slots: %w", err)
			}
			if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
				f.Close()
				if !errors.Is(err, unix.EWOULDBLOCK) {
					releaseAll(held)
					return nil, fmt.Errorf("guest slots: %w", err)
				}
				continue
			}
			held = append(held, f)
		}
		if len(held) == n {
			return func() { releaseAll(held) }, nil
		}
		releaseAll(held) // none held while waiting
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("guest slots: %d of %d not free together: %w", n, max, ctx.Err())
		case <-time.After(200*time.Millisecond + time.Duration(rand.IntN(200))*time.Millisecond):
		}
	}
}

// AcquireSlot takes one of the machine-wide guest slots (shared by every
// test process, QEMU and libvirt guests alike), waiting for one until ctx
// ends.
func AcquireSlot(ctx context.Context) (release func(), err error) {
	max := MaxGuests()
	dir := filepath.Join(os.TempDir(), "raksha-vm-slots")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, fmt.Errorf("guest slot: %w", err)
	}
	for {
		for i := 0; i < max; i++ {
			f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("slot%d.lock", i)), os.O_RDWR|os.O_CREATE, 0o666)
			if err != nil {
				return nil, fmt.Errorf("guest slot: %w", err)
			}
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if err == nil {
				return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
			}
			f.Close()
			if !errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("guest slot: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("guest slot: none of %d free: %w", max, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}
