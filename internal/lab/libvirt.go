package lab

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	lv "github.com/digitalocean/go-libvirt"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/lab/vm"
)

// LibvirtOptions configure the lab's compute backend on libvirt.
type LibvirtOptions struct {
	// Conn is the connection to the system libvirtd.
	Conn *libvirt.Conn
	// Image is the lab guest (vm.BuildImage).
	Image vm.Image
	// LockDir is the guests' lock directory, shared with the host workers
	// (libvirt.DefaultLockDir when empty), so that the lab and Raksha never
	// talk to one guest's agent at once.
	LockDir string
	// NoWriter keeps the in-guest record writer from running on the disks;
	// WriterInterval is its pause between records.
	NoWriter       bool
	WriterInterval time.Duration
	// Description is put into each domain's description (tests mark the
	// domains they own, see libvirttest.Owner).
	Description string
	// Log receives the backend's logs; default: discard.
	Log *slog.Logger
}

// LibvirtCompute runs each lab server as a persistent libvirt domain the way
// Nova's libvirt driver does: named instance-%08x, its UUID the server id,
// TCG, the guest agent on the org.qemu.guest_agent.0 channel that libvirtd
// owns, volumes and ephemeral disks attached as virtio disks (live and in
// the definition) with their Nova serials: qcow2 files, or RBD volumes as
// network disks of protocol rbd authenticated by a libvirt secret of
// usage ceph that the backend defines (and StopAll removes). Start undefines a domain that is
// defined already and defines it again (Nova's start and hard reboot);
// Remove destroys and undefines it (Nova's delete), which libvirt refuses
// while checkpoint metadata is left on the domain. The guest's disks are
// mounted and given record writers through the agent, as on the QEMU
// backend. Raksha's host workers find these guests with --libvirt-uri.
type LibvirtCompute struct {
	opts LibvirtOptions
	log  *slog.Logger

	mu     sync.Mutex
	guests map[InstanceRef]*lvGuest
	// baseMu serialises the writing of base images.
	baseMu sync.Mutex
	// secrets are the libvirt secrets holding Ceph keys for RBD disks, by
	// ceph.conf and user (libvirt_rbd.go).
	secretMu sync.Mutex
	secrets  map[string]lvSecret
}

type lvGuest struct {
	mu      sync.Mutex // serialises attach and detach
	id      string     // server id = domain UUID
	dir     string
	targets map[string]lvDisk // node → attached disk
}

type lvDisk struct {
	Disk
	target string
	xml    string // as attached
}

// NewLibvirtCompute returns the libvirt backend.
func NewLibvirtCompute(opts LibvirtOptions) *LibvirtCompute {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.LockDir == "" {
		opts.LockDir = libvirt.DefaultLockDir
	}
	return &LibvirtCompute{opts: opts, log: opts.Log, guests: map[InstanceRef]*lvGuest{}, secrets: map[string]lvSecret{}}
}

var _ Compute = (*LibvirtCompute)(nil)

// ByServerID says that the lab's Nova keeps this backend's instance
// directories by server id, as Nova's libvirt driver keeps
// <instances_path>/<uuid>: nothing finds a libvirt guest by its directory.
func (l *LibvirtCompute) ByServerID() bool { return true }

// Start defines (again) and starts the domain, waits for its agent, then
// attaches and mounts its disks.
func (l *LibvirtCompute) Start(ctx context.Context, inst Instance) error {
	if up, _ := l.Running(ctx, inst.InstanceRef); up {
		return nil
	}
	if inst.ID == "" {
		return fmt.Errorf("start %s: no server id for the domain's UUID", inst.InstanceRef)
	}
	if err := os.MkdirAll(inst.Dir, 0o755); err != nil {
		return fmt.Errorf("start %s: %w", inst.InstanceRef, err)
	}
	c := l.opts.Conn.Libvirt()
	if dom, err := c.DomainLookupByName(inst.Name); err == nil {
		// Nova's start and hard reboot define the domain from scratch.
		if err := c.DomainUndefineFlags(dom, 0); err != nil {
			return fmt.Errorf("start %s: undefine the old definition: %w", inst.InstanceRef, err)
		}
	}
	if inst.Root != nil {
		if err := l.rootDisk(ctx, inst); err != nil {
			return fmt.Errorf("start %s: %w", inst.InstanceRef, err)
		}
	}
	if inst.SwapMB > 0 {
		if err := l.swapDisk(ctx, inst); err != nil {
			return fmt.Errorf("start %s: %w", inst.InstanceRef, err)
		}
	}
	dom, err := c.DomainDefineXMLFlags(l.domainXML(inst), 0)
	if err != nil {
		return fmt.Errorf("start %s: define: %w", inst.InstanceRef, err)
	}
	g := &lvGuest{id: inst.ID, dir: inst.Dir, targets: map[string]lvDisk{}}
	l.mu.Lock()
	l.guests[inst.InstanceRef] = g
	l.mu.Unlock()
	start := time.Now()
	if err := c.DomainCreate(dom); err != nil {
		return fmt.Errorf("start %s: %w", inst.InstanceRef, err)
	}
	if err := l.waitAgent(ctx, inst.Name); err != nil {
		_ = c.DomainDestroy(dom)
		return fmt.Errorf("start %s: %w", inst.InstanceRef, err)
	}
	if inst.Root != nil {
		out, err := l.inGuest(ctx, inst.InstanceRef, "root disk writer", rootScript, "root-disk", "root", l.writerArgs()[0], l.writerArgs()[1])
		if err != nil {
			_ = c.DomainDestroy(dom)
			return fmt.Errorf("start %s: the root disk in the guest: %w", inst.InstanceRef, err)
		}
		l.log.Debug("root disk", "instance", inst.InstanceRef.String(), "guest", out)
	}
	for _, d := range inst.Disks {
		if err := l.attach(ctx, inst.InstanceRef, g, d); err != nil {
			_ = c.DomainDestroy(dom)
			return fmt.Errorf("start %s: %w", inst.InstanceRef, err)
		}
	}
	l.log.Info("lab server running on libvirt", "instance", inst.InstanceRef.String(), "uuid", inst.ID, "disks", len(inst.Disks), "boot", time.Since(start).Round(time.Millisecond))
	return nil
}

// rootScript runs in the guest once it has booted from its root disk: it
// checks that / is the root disk (vda) and that the guest's init bound it
// at /data/root, and, when $2 is 1, starts a record writer there (pause
// $3), so that records land on the root file system.
const rootScript = `
l="$1"; w="$2"; iv="$3"
dev=$(awk '$2 == "/" && $1 ~ /^\/dev\// { d = $1 } END { print d }' /proc/mounts)
[ "$dev" = /dev/vda ] || { echo "the guest did not boot from its root disk: / is ${dev:-not a block device}" >&2; exit 1; }
m=$(awk -v p="/data/$l" '$2 == p { d = $1 } END { print d }' /proc/mounts)
[ "$m" = "$dev" ] || { echo "/data/$l is not the root disk bound there (${m:-not mounted})" >&2; exit 1; }
if [ "$w" = 1 ]; then
  mkdir -p /run/raksha; rm -f /run/raksha/w-$l.ready
  guestapp write -interval "$iv" -ready /run/raksha/w-$l.ready /data/$l >>/run/raksha/guestapp.log 2>&1 </dev/null &
  echo $! > /run/raksha/w-$l.pid
  i=0; while [ ! -e /run/raksha/w-$l.ready ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
  [ -e /run/raksha/w-$l.ready ] || { echo "record writer on /data/$l not ready after 30s" >&2; exit 1; }
fi
echo "/ on $dev, records in /data/$l"
`

// rootDisk makes the root disk of an image-booted server the way Nova's
// libvirt driver does, unless it exists (a stopped server keeps its disk):
// the image's raw base file in the host's instances/_base directory,
// written once, and <Dir>/disk, a qcow2 overlay on it grown to the
// flavor's root size.
func (l *LibvirtCompute) rootDisk(ctx context.Context, inst Instance) error {
	if strings.ContainsAny(inst.Root.ImageID, "/\\") || inst.Root.ImageID == "" || strings.HasPrefix(inst.Root.ImageID, ".") {
		return fmt.Errorf("root disk: invalid image id %q", inst.Root.ImageID)
	}
	return l.overlayDisk(ctx, "root disk", inst, RootFile, inst.Root.ImageID, int64(inst.Root.SizeGB)<<30, func(tmp string) error {
		if l.opts.Image.Root == "" {
			return fmt.Errorf("the lab guest image has no root file system (vm.Image.Root)")
		}
		if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "raw", "-S", "4k", l.opts.Image.Root, tmp).CombinedOutput(); err != nil {
			return fmt.Errorf("write the base image: %w: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	})
}

// swapDisk makes the swap disk of a server whose flavor has one, unless it
// exists: as Nova's libvirt driver does, a raw base formatted as swap
// (mkswap) in the host's instances/_base directory, written once per size,
// and <Dir>/disk.swap, a qcow2 overlay on it.
func (l *LibvirtCompute) swapDisk(ctx context.Context, inst Instance) error {
	size := int64(inst.SwapMB) << 20
	return l.overlayDisk(ctx, "swap disk", inst, SwapFile, fmt.Sprintf("swap_%d", inst.SwapMB), size, func(tmp string) error {
		if err := os.WriteFile(tmp, nil, 0o644); err != nil {
			return err
		}
		if err := os.Truncate(tmp, size); err != nil {
			return err
		}
		if out, err := exec.CommandContext(ctx, sbin("mkswap"), tmp).CombinedOutput(); err != nil {
			return fmt.Errorf("mkswap %s: %w: %s", tmp, err, strings.TrimSpace(string(out)))
		}
		return nil
	})
}

// overlayDisk makes <Dir>/file unless it exists: a qcow2 overlay on the raw
// base file instances/_base/<base> of the server's host, which makeBase
// writes (into a temporary name) when the host has none yet, the overlay
// grown to size when the base is smaller.
func (l *LibvirtCompute) overlayDisk(ctx context.Context, what string, inst Instance, file, base string, size int64, makeBase func(tmp string) error) error {
	disk := filepath.Join(inst.Dir, file)
	if _, err := os.Stat(disk); err == nil {
		return nil
	}
	baseDir := filepath.Join(filepath.Dir(inst.Dir), "_base")
	base = filepath.Join(baseDir, base)
	l.baseMu.Lock()
	defer l.baseMu.Unlock()
	if _, err := os.Stat(base); err != nil {
		if err := os.MkdirAll(baseDir, 0o755); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		tmp := base + ".part"
		if err := makeBase(tmp); err != nil {
			return fmt.Errorf("%s: base %s: %w", what, base, err)
		}
		if err := os.Rename(tmp, base); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	args := []string{"create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", disk + ".part"}
	if st, err := os.Stat(base); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	} else if size > st.Size() {
		args = append(args, strconv.FormatInt(size, 10))
	}
	if out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: create the overlay %s: %w: %s", what, disk, err, strings.TrimSpace(string(out)))
	}
	if err := os.Rename(disk+".part", disk); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// sbin finds a system program that a user's PATH may lack.
func sbin(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		if p := filepath.Join(d, name); isExec(p) {
			return p
		}
	}
	return name
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode()&0o111 != 0
}

// bootDisk is a disk a server boots with.
type bootDisk struct{ file, target string }

// bootDisks are the disks a server boots with: its root disk as vda, its
// swap disk as vdz, out of the way of the disks attached after boot, so
// that a resize that adds a swap disk moves no other disk's target.
func bootDisks(inst Instance) []bootDisk {
	var ds []bootDisk
	if inst.Root != nil {
		ds = append(ds, bootDisk{filepath.Join(inst.Dir, RootFile), "vda"})
	}
	if inst.SwapMB > 0 {
		ds = append(ds, bootDisk{filepath.Join(inst.Dir, SwapFile), "vdz"})
	}
	return ds
}

// domainXML is the domain of a lab server: the root disk of an
// image-booted server as vda (the kernel told root=/dev/vda, as Nova does
// for an image with kernel and ramdisk) and its swap disk (vdz), no other
// disk at boot (they are attached after, as Nova attaches volumes), the
// serial console in the instance directory.
func (l *LibvirtCompute) domainXML(inst Instance) string {
	esc := func(s string) string {
		var b strings.Builder
		_ = xml.EscapeText(&b, []byte(s))
		return b.String()
	}
	mem, cpus := inst.MemoryMB, inst.VCPUs
	if mem <= 0 {
		mem = 256
	}
	if cpus <= 0 {
		cpus = 1
	}
	rootDisk, rootArg := "", ""
	for _, d := range bootDisks(inst) {
		rootDisk += fmt.Sprintf("\n    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='%s' bus='virtio'/></disk>",
			esc(d.file), d.target)
	}
	if inst.Root != nil {
		rootArg = "root=/dev/vda "
	}
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <description>%s</description>
  <memory unit='MiB'>%d</memory>
  <vcpu>%d</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>%s</kernel><initrd>%s</initrd>
    <cmdline>%sconsole=ttyS0 quiet panic=-1 raksha.writer=0</cmdline></os>
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_reboot>destroy</on_reboot>
  <devices>%s
    <serial type='file'><source path='%s/console.log'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>`, esc(inst.Name), esc(inst.ID), esc(l.opts.Description), mem, cpus, esc(l.opts.Image.Kernel), esc(l.opts.Image.Initrd), rootArg, rootDisk, esc(inst.Dir))
}

func (l *LibvirtCompute) waitAgent(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	dom, err := l.opts.Conn.Domain(ctx, name)
	if err != nil {
		return err
	}
	return libvirt.WaitAgent(ctx, l.opts.Conn, dom)
}

var _ Resizer = (*LibvirtCompute)(nil)

// Resize stops the domain, grows its root disk to the new flavor's size
// (qemu-img resize on the overlay, as Nova's libvirt driver does; QEMU
// grows the disk's persistent bitmaps with it, leaving the new area clean)
// and defines it anew with the flavor's CPUs and memory; it starts it again
// when start is set.
func (l *LibvirtCompute) Resize(ctx context.Context, inst Instance, start bool) error {
	if err := l.Stop(ctx, inst.InstanceRef); err != nil {
		return fmt.Errorf("resize %s: %w", inst.InstanceRef, err)
	}
	if inst.Root != nil && inst.Root.SizeGB > 0 {
		disk := filepath.Join(inst.Dir, RootFile)
		out, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", disk).Output()
		if err != nil {
			return fmt.Errorf("resize %s: qemu-img info %s: %w", inst.InstanceRef, disk, err)
		}
		var info struct {
			VirtualSize int64 `json:"virtual-size"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			return fmt.Errorf("resize %s: qemu-img info %s: %w", inst.InstanceRef, disk, err)
		}
		if size := int64(inst.Root.SizeGB) << 30; size > info.VirtualSize {
			if out, err := exec.CommandContext(ctx, "qemu-img", "resize", "-q", disk, strconv.FormatInt(size, 10)).CombinedOutput(); err != nil {
				return fmt.Errorf("resize %s: grow the root disk: %w: %s", inst.InstanceRef, err, strings.TrimSpace(string(out)))
			}
		}
	}
	c := l.opts.Conn.Libvirt()
	if dom, err := c.DomainLookupByName(inst.Name); err == nil {
		if err := c.DomainUndefineFlags(dom, 0); err != nil {
			return fmt.Errorf("resize %s: undefine the old definition: %w", inst.InstanceRef, err)
		}
	}
	if !start {
		// Defined with every disk, as a stopped server's domain is.
		dom, err := c.DomainDefineXMLFlags(l.domainXML(inst), 0)
		if err != nil {
			return fmt.Errorf("resize %s: define: %w", inst.InstanceRef, err)
		}
		next := 'a'
		if inst.Root != nil {
			next = 'b'
		}
		for _, d := range inst.Disks {
			x, err := l.diskXML(d, "vd"+string(next))
			if err != nil {
				return fmt.Errorf("resize %s: define disk %s: %w", inst.InstanceRef, d.Node, err)
			}
			if err := c.DomainAttachDeviceFlags(dom, x, uint32(lv.DomainDeviceModifyConfig)); err != nil {
				return fmt.Errorf("resize %s: define disk %s: %w", inst.InstanceRef, d.Node, err)
			}
			next++
		}
		return nil
	}
	return l.Start(ctx, inst)
}

// Stop destroys the domain (QEMU exits cleanly on SIGTERM); its definition
// stays, as Nova's stop leaves it.
func (l *LibvirtCompute) Stop(ctx context.Context, ref InstanceRef) error {
	c := l.opts.Conn.Libvirt()
	dom, err := c.DomainLookupByName(ref.Name)
	if lv.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stop %s: %w", ref, err)
	}
	if up, _ := l.opts.Conn.Running(ctx, dom); !up {
		return nil
	}
	if err := c.DomainDestroy(dom); err != nil {
		return fmt.Errorf("stop %s: %w", ref, err)
	}
	return nil
}

// Remove destroys and undefines the domain (Nova's delete): libvirt refuses
// while the domain has checkpoint metadata.
func (l *LibvirtCompute) Remove(ctx context.Context, ref InstanceRef) error {
	if err := l.Stop(ctx, ref); err != nil {
		return err
	}
	c := l.opts.Conn.Libvirt()
	dom, err := c.DomainLookupByName(ref.Name)
	if lv.IsNotFound(err) {
		return nil
	}
	if err == nil {
		err = c.DomainUndefineFlags(dom, 0)
	}
	if err != nil {
		return fmt.Errorf("remove %s: undefine: %w", ref, err)
	}
	l.mu.Lock()
	delete(l.guests, ref)
	l.mu.Unlock()
	return nil
}

// StopAll destroys and undefines every domain this backend started, then
// removes the Ceph secrets it defined.
func (l *LibvirtCompute) StopAll(ctx context.Context) {
	l.mu.Lock()
	refs := make([]InstanceRef, 0, len(l.guests))
	for r := range l.guests {
		refs = append(refs, r)
	}
	l.mu.Unlock()
	for _, r := range refs {
		if err := l.Remove(ctx, r); err != nil {
			l.log.Error("lab libvirt: remove", "instance", r.String(), "err", err)
		}
	}
	if err := l.removeSecrets(); err != nil {
		l.log.Error("lab libvirt: remove the Ceph secrets", "err", err)
	}
}

// Running reports whether the domain runs.
func (l *LibvirtCompute) Running(ctx context.Context, ref InstanceRef) (bool, error) {
	dom, err := l.opts.Conn.Domain(ctx, ref.Name)
	if errors.Is(err, libvirt.ErrNoDomain) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return l.opts.Conn.Running(ctx, dom)
}

func (l *LibvirtCompute) guest(ref InstanceRef) (*lvGuest, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	g := l.guests[ref]
	if g == nil {
		return nil, fmt.Errorf("%s is not running on this backend", ref)
	}
	return g, nil
}

// Attach attaches a disk to the running domain and mounts it in the guest.
func (l *LibvirtCompute) Attach(ctx context.Context, ref InstanceRef, d Disk) error {
	g, err := l.guest(ref)
	if err != nil {
		return fmt.Errorf("attach %s: %w", d.Node, err)
	}
	return l.attach(ctx, ref, g, d)
}

func (l *LibvirtCompute) attach(ctx context.Context, ref InstanceRef, g *lvGuest, d Disk) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	c := l.opts.Conn
	dom, err := c.Domain(ctx, ref.Name)
	if err != nil {
		return fmt.Errorf("attach %s: %w", d.Node, err)
	}
	disks, err := c.Disks(ctx, dom)
	if err != nil {
		return fmt.Errorf("attach %s: %w", d.Node, err)
	}
	used := map[string]bool{}
	for _, x := range disks {
		used[x.Target] = true
	}
	target := ""
	for ch := 'a'; ch <= 'z'; ch++ {
		if t := "vd" + string(ch); !used[t] {
			target = t
			break
		}
	}
	if target == "" {
		return fmt.Errorf("attach %s to %s: no free virtio target", d.Node, ref)
	}
	x, err := l.diskXML(d, target)
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", d.Node, ref, err)
	}
	if err := c.Libvirt().DomainAttachDeviceFlags(dom, x, uint32(lv.DomainDeviceModifyLive|lv.DomainDeviceModifyConfig)); err != nil {
		return fmt.Errorf("attach %s to %s: %w", d.Node, ref, err)
	}
	g.targets[d.Node] = lvDisk{Disk: d, target: target, xml: x}
	out, err := l.inGuest(ctx, ref, "attach "+d.Node, mountScript, "mount", d.Serial, l.writerArgs()[0], l.writerArgs()[1])
	if err != nil {
		return fmt.Errorf("attach %s to %s: mount in the guest: %w", d.Node, ref, err)
	}
	l.log.Info("disk attached", "instance", ref.String(), "node", d.Node, "target", target, "guest", out)
	return nil
}

func (l *LibvirtCompute) writerArgs() [2]string {
	w, iv := "1", l.opts.WriterInterval.String()
	if l.opts.NoWriter {
		w = "0"
	}
	if l.opts.WriterInterval <= 0 {
		iv = "1s"
	}
	return [2]string{w, iv}
}

// fileDiskXML is a qcow2 lab disk as libvirt attaches it: a file on
// virtio with its Nova serial.
func fileDiskXML(d Disk, target string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(d.Path))
	var s strings.Builder
	_ = xml.EscapeText(&s, []byte(d.Serial))
	return fmt.Sprintf("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='%s' bus='virtio'/><serial>%s</serial></disk>",
		b.String(), target, s.String())
}

// inGuest runs a script of the lab in the guest through its agent, under
// the guest's lock.
func (l *LibvirtCompute) inGuest(ctx context.Context, ref InstanceRef, what, script string, args ...string) (string, error) {
	lctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	ag, err := libvirt.OpenAgent(lctx, l.opts.Conn, ref.Name, libvirt.AgentOptions{LockDir: l.opts.LockDir,
		Guest: guest.Options{Logger: l.log, Owner: "raksha lab: " + what}})
	if err != nil {
		return "", err
	}
	defer ag.Close()
	res, err := ag.Run(lctx, guest.ExecRequest{Path: "/bin/sh", Args: append([]string{"-c", script}, args...), Capture: true})
	if err != nil {
		return "", err
	}
	if res.ExitCode != 0 {
		return "", fmt.Errorf("exit %d: %s", res.ExitCode, strings.TrimSpace(string(res.Stderr)))
	}
	return strings.TrimSpace(string(res.Stdout)), nil
}

// Detach unmounts the disk in the guest and detaches it (live and from the
// definition), waiting until the guest has let it go.
func (l *LibvirtCompute) Detach(ctx context.Context, ref InstanceRef, node string) error {
	g, err := l.guest(ref)
	if err != nil {
		return fmt.Errorf("detach %s: %w", node, err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	d, ok := g.targets[node]
	if !ok {
		return fmt.Errorf("detach %s from %s: not attached by this backend", node, ref)
	}
	if _, err := l.inGuest(ctx, ref, "detach "+node, umountScript, "umount", d.Serial); err != nil {
		return fmt.Errorf("detach %s from %s: unmount in the guest: %w", node, ref, err)
	}
	c := l.opts.Conn
	dom, err := c.Domain(ctx, ref.Name)
	if err != nil {
		return fmt.Errorf("detach %s: %w", node, err)
	}
	if err := c.Libvirt().DomainDetachDeviceFlags(dom, d.xml, uint32(lv.DomainDeviceModifyLive|lv.DomainDeviceModifyConfig)); err != nil {
		return fmt.Errorf("detach %s from %s: %w", node, ref, err)
	}
	// The guest acknowledges the unplug asynchronously.
	for deadline := time.Now().Add(30 * time.Second); ; {
		disks, err := c.Disks(ctx, dom)
		if err != nil {
			return fmt.Errorf("detach %s from %s: %w", node, ref, err)
		}
		gone := true
		for _, x := range disks {
			if x.Target == d.target {
				gone = false
			}
		}
		if gone {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("detach %s from %s: the guest did not release %s within 30s", node, ref, d.target)
		}
		time.Sleep(100 * time.Millisecond)
	}
	delete(g.targets, node)
	return nil
}

// CopyDisk writes a point-in-time copy of an attached disk to target as a
// qcow2 file: a push-mode libvirt backup of that one disk, waited for.
func (l *LibvirtCompute) CopyDisk(ctx context.Context, ref InstanceRef, node, target string) error {
	g, err := l.guest(ref)
	if err != nil {
		return fmt.Errorf("copy %s: %w", node, err)
	}
	g.mu.Lock()
	d, ok := g.targets[node]
	g.mu.Unlock()
	if !ok {
		return fmt.Errorf("copy %s of %s: not attached by this backend", node, ref)
	}
	c := l.opts.Conn
	dom, err := c.Domain(ctx, ref.Name)
	if err != nil {
		return fmt.Errorf("copy %s: %w", node, err)
	}
	disks, err := c.Disks(ctx, dom)
	if err != nil {
		return fmt.Errorf("copy %s: %w", node, err)
	}
	var bx strings.Builder
	bx.WriteString("<domainbackup mode='push'><disks>")
	for _, x := range disks {
		if x.Target != d.target {
			fmt.Fprintf(&bx, "<disk name='%s' backup='no'/>", x.Target)
			continue
		}
		var t strings.Builder
		_ = xml.EscapeText(&t, []byte(target))
		fmt.Fprintf(&bx, "<disk name='%s' backup='yes' type='file'><target file='%s'/><driver type='qcow2'/></disk>", x.Target, t.String())
	}
	bx.WriteString("</disks></domainbackup>")
	if err := c.Libvirt().DomainBackupBegin(dom, bx.String(), nil, 0); err != nil {
		return fmt.Errorf("copy %s of %s: backup begin: %w", node, ref, err)
	}
	for {
		active, err := c.JobActive(ctx, dom)
		if err != nil {
			return fmt.Errorf("copy %s of %s: %w", node, ref, err)
		}
		if !active {
			break
		}
		select {
		case <-ctx.Done():
			_ = c.Libvirt().DomainAbortJob(dom)
			return fmt.Errorf("copy %s of %s: %w", node, ref, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	typ, _, err := c.Libvirt().DomainGetJobStats(dom, lv.DomainJobStatsCompleted)
	if err != nil {
		return fmt.Errorf("copy %s of %s: job stats: %w", node, ref, err)
	}
	if lv.DomainJobType(typ) != lv.DomainJobCompleted {
		return fmt.Errorf("copy %s of %s: the backup job ended as %d, not completed", node, ref, typ)
	}
	return nil
}
