// Package libvirttest boots lab guests as libvirt domains, the way Nova's
// libvirt driver runs them (TCG, the guest agent on the
// org.qemu.guest_agent.0 channel that libvirtd owns, qcow2 disks on
// virtio), for the tests of the libvirt host driver:
//
//   - Require starts the system libvirtd when none answers
//     (scripts/libvirtd-up.sh; there is no systemd here) and skips the test
//     loudly naming what is missing, except under CI, where it fails it.
//   - Boot defines and starts a domain in a machine-wide guest slot (shared
//     with vmtest's QEMU guests) and, when the test ends, destroys and
//     undefines it (with any checkpoint metadata), removing only what the
//     test made.
package libvirttest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	lv "github.com/digitalocean/go-libvirt"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/lab/vm"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
)

// Packages are the Debian packages the libvirt tests need beyond vmtest's.
func Packages() []string {
	return []string{"libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients"}
}

func underCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "0" && v != "false"
}

func need(t testing.TB, msg string) {
	t.Helper()
	if underCI() {
		t.Fatal("CI: " + msg)
	}
	t.Skip("SKIP: " + msg)
}

// Require makes sure the system libvirtd answers, starting it with
// scripts/libvirtd-up.sh when it does not, and that the lab guests can run
// (vmtest.Require); it skips the test loudly (fails it under CI) otherwise.
func Require(t testing.TB) {
	t.Helper()
	vmtest.Require(t)
	var missing []string
	for _, p := range []string{"libvirtd", "virtlogd", "virsh"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		need(t, fmt.Sprintf("libvirt tests need %s (Debian packages %s): run `make test-deps`", strings.Join(missing, ", "), strings.Join(Packages(), " ")))
	}
	if os.Geteuid() != 0 {
		need(t, "libvirt tests need root (libvirtd's system instance, as on a compute node)")
	}
	root, err := vm.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(root, "scripts", "libvirtd-up.sh")).CombinedOutput()
	if err != nil {
		need(t, fmt.Sprintf("scripts/libvirtd-up.sh: %v: %s", err, strings.TrimSpace(string(out))))
	}
}

// Conn connects to the system libvirtd for the test (closed when it ends),
// after removing the domains of test processes that died without cleaning
// up (SweepDead).
func Conn(t testing.TB) *libvirt.Conn {
	t.Helper()
	Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := libvirt.Dial(ctx, "", libvirt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, n := range SweepDead(t, c) {
		t.Logf("removed domain %s of a test process that died", n)
	}
	return c
}

// Owner is the description a test marks its domains with (Boot, and the
// lab's libvirt backend in tests): this process owns them.
func Owner() string { return fmt.Sprintf("raksha-test-owner pid=%d", os.Getpid()) }

var ownerRE = regexp.MustCompile(`raksha-test-owner pid=(\d+)`)

// SweepDead destroys and undefines the domains whose description names an
// owner test process that is gone (killed by a timeout or a signal before
// its cleanups ran) and returns their names. Domains of live processes,
// and every domain not marked by a test, are left alone.
func SweepDead(t testing.TB, c *libvirt.Conn) []string {
	t.Helper()
	l := c.Libvirt()
	doms, _, err := l.ConnectListAllDomains(1, 0)
	if err != nil {
		t.Fatalf("list domains: %v", err)
	}
	var removed []string
	for _, d := range doms {
		desc, err := l.DomainGetMetadata(d, int32(lv.DomainMetadataDescription), nil, 0)
		if err != nil {
			continue
		}
		m := ownerRE.FindStringSubmatch(desc)
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid <= 0 || syscall.Kill(pid, 0) == nil || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			continue
		}
		Remove(t, c, d.Name)
		removed = append(removed, d.Name)
	}
	return removed
}

// Spec describes a guest for Boot.
type Spec struct {
	// Name is the domain's name (a random raksha-test-… name when empty).
	Name string
	// Labels are the data disks to create (vda, vdb, … in order), by file
	// system label: the guest mounts each at /data/<label> and, unless
	// NoWriter, its record writer writes to each.
	Labels []string
	// DiskSize is the size of each data disk (vmtest.DefaultDiskSize when 0).
	DiskSize int64
	// Images are qcow2 files of the test's to attach after the labelled
	// disks (the guest mounts them only if they hold an ext file system).
	Images []string
	// Blocks are block devices to attach after the images, raw (as an
	// iSCSI or FC volume is: <disk type='block'>).
	Blocks []string
	// NoWriter boots the guest without its record writer.
	NoWriter bool
	// MemoryMB is the guest's memory (256 when 0).
	MemoryMB int
}

// Domain is a booted test domain.
type Domain struct {
	// Name and UUID identify the domain; Dom is its go-libvirt handle.
	Name, UUID string
	Dom        lv.Domain
	// Dir is the test's directory holding its disks and console log.
	Dir string
	// Disks are its data disks in target order.
	Disks []Disk
	// Console is the serial console log.
	Console string
}

// Disk is one disk of a test domain.
type Disk struct {
	// Path is the qcow2 file (or, Block set, the raw block device);
	// Target the guest device (vda, …); Label its file system label.
	Path, Target, Label string
	Block               bool
}

// Boot creates the disks in a directory of the test's, defines and starts
// the domain within a guest slot, waits until its agent answers through
// libvirt, and undefines it when the test ends.
func Boot(t testing.TB, c *libvirt.Conn, img vm.Image, s Spec) *Domain {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if s.Name == "" {
		s.Name = "raksha-test-" + randHex(4)
	}
	if s.DiskSize == 0 {
		s.DiskSize = vmtest.DefaultDiskSize
	}
	if s.MemoryMB == 0 {
		s.MemoryMB = 256
	}
	d := &Domain{Name: s.Name, Dir: t.TempDir()}
	d.Console = filepath.Join(d.Dir, "console.log")
	for i, l := range s.Labels {
		p := filepath.Join(d.Dir, l+".qcow2")
		if err := vm.CreateDisk(ctx, p, l, s.DiskSize); err != nil {
			t.Fatal(err)
		}
		d.Disks = append(d.Disks, Disk{Path: p, Target: "vd" + string(rune('a'+i)), Label: l})
	}
	for _, p := range s.Images {
		d.Disks = append(d.Disks, Disk{Path: p, Target: "vd" + string(rune('a'+len(d.Disks))), Label: filepath.Base(p)})
	}
	for _, p := range s.Blocks {
		d.Disks = append(d.Disks, Disk{Path: p, Target: "vd" + string(rune('a'+len(d.Disks))), Label: filepath.Base(p), Block: true})
	}
	release, err := vmtest.AcquireSlot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	l := c.Libvirt()
	dom, err := l.DomainDefineXMLFlags(DomainXML(img, s, d), 0)
	if err != nil {
		t.Fatalf("define domain %s: %v", s.Name, err)
	}
	d.Dom, d.UUID = dom, libvirt.UUIDString(dom.UUID)
	t.Cleanup(func() { Remove(t, c, d.Name) })
	start := time.Now()
	if err := l.DomainCreate(dom); err != nil {
		t.Fatalf("start domain %s: %v", s.Name, err)
	}
	if err := WaitAgent(ctx, c, d); err != nil {
		t.Fatal(err)
	}
	t.Logf("domain %s (%s) booted in %v", d.Name, d.UUID, time.Since(start).Round(time.Millisecond))
	return d
}

// WaitAgent pings the domain's agent through libvirt until it answers, the
// domain stops or ctx ends.
func WaitAgent(ctx context.Context, c *libvirt.Conn, d *Domain) error {
	if err := libvirt.WaitAgent(ctx, c, d.Dom); err != nil {
		return fmt.Errorf("domain %s: %w; console: %s", d.Name, err, tail(d.Console, 2000))
	}
	return nil
}

// Remove destroys and undefines the domain name with its checkpoint
// metadata (if it is still defined), failing the test on errors.
func Remove(t testing.TB, c *libvirt.Conn, name string) {
	t.Helper()
	l := c.Libvirt()
	dom, err := l.DomainLookupByName(name)
	if lv.IsNotFound(err) {
		return
	}
	if err != nil {
		t.Errorf("remove domain %s: %v", name, err)
		return
	}
	if err := l.DomainDestroy(dom); err != nil && !isNotRunning(err) {
		t.Errorf("destroy domain %s: %v", name, err)
	}
	if err := l.DomainUndefineFlags(dom, lv.DomainUndefineCheckpointsMetadata|lv.DomainUndefineSnapshotsMetadata|lv.DomainUndefineNvram); err != nil && !lv.IsNotFound(err) {
		t.Errorf("undefine domain %s: %v", name, err)
	}
}

func isNotRunning(err error) bool {
	var e lv.Error
	return errors.As(err, &e) && lv.ErrorNumber(e.Code) == lv.ErrOperationInvalid
}

// DomainXML is the domain definition Boot uses: the lab guest's kernel and
// initramfs, TCG, the data disks as qcow2 virtio disks with their labels as
// serials, the serial console to a file, and the guest agent's channel.
func DomainXML(img vm.Image, s Spec, d *Domain) string {
	esc := func(v string) string {
		var b strings.Builder
		_ = xml.EscapeText(&b, []byte(v))
		return b.String()
	}
	cmdline := "console=ttyS0 quiet panic=-1"
	if s.NoWriter {
		cmdline += " raksha.writer=0"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<domain type='qemu'>
  <name>%s</name>
  <description>%s</description>
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>%s</cmdline>
  </os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_reboot>destroy</on_reboot>
  <devices>
`, esc(s.Name), esc(Owner()), s.MemoryMB, esc(img.Kernel), esc(img.Initrd), esc(cmdline))
	for _, dk := range d.Disks {
		if dk.Block {
			fmt.Fprintf(&b, `    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='%s'/>
      <target dev='%s' bus='virtio'/>
      <serial>%s</serial>
    </disk>
`, esc(dk.Path), dk.Target, esc(dk.Label))
			continue
		}
		fmt.Fprintf(&b, `    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='%s' bus='virtio'/>
      <serial>%s</serial>
    </disk>
`, esc(dk.Path), dk.Target, esc(dk.Label))
	}
	fmt.Fprintf(&b, `    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>
`, esc(d.Console))
	return b.String()
}

// KillQEMU SIGKILLs the QEMU process of the running domain dom (an unclean
// stop: its persistent bitmaps are not stored) and waits until libvirt
// sees the domain shut off.
func KillQEMU(t testing.TB, c *libvirt.Conn, dom lv.Domain) {
	t.Helper()
	b, err := os.ReadFile("/run/libvirt/qemu/" + dom.Name + ".pid")
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		up, err := c.Running(ctx, dom)
		if err != nil {
			t.Fatal(err)
		}
		if !up {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("domain %s still running a minute after SIGKILL of its QEMU", dom.Name)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Agent opens a guest.Client on the domain's agent through libvirt, with
// its lock file in a directory of the test's, closed when the test ends.
func Agent(t testing.TB, c *libvirt.Conn, d *Domain) *guest.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := libvirt.OpenAgent(ctx, c, d.UUID, libvirt.AgentOptions{LockDir: filepath.Join(d.Dir, "locks"), Guest: guest.Options{Owner: "libvirttest"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// FirstInstance is a random first instance number for a lab on libvirt
// (lab.Options.FirstInstance), so that labs of tests running at once on
// the machine's one libvirtd never name two domains alike.
func FirstInstance() int {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return 0x10000000 + int(b[0])<<16 | int(b[1])<<8 | int(b[2])
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
