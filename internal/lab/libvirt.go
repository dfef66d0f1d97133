package lab

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"os"
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
// the definition) with their Nova serials. Start undefines a domain that is
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
}

// NewLibvirtCompute returns the libvirt backend.
func NewLibvirtCompute(opts LibvirtOptions) *LibvirtCompute {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.LockDir == "" {
		opts.LockDir = libvirt.DefaultLockDir
	}
	return &LibvirtCompute{opts: opts, log: opts.Log, guests: map[InstanceRef]*lvGuest{}}
}

var _ Compute = (*LibvirtCompute)(nil)

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
	for _, d := range inst.Disks {
		if err := l.attach(ctx, inst.InstanceRef, g, d); err != nil {
			_ = c.DomainDestroy(dom)
			return fmt.Errorf("start %s: %w", inst.InstanceRef, err)
		}
	}
	l.log.Info("lab server running on libvirt", "instance", inst.InstanceRef.String(), "uuid", inst.ID, "disks", len(inst.Disks), "boot", time.Since(start).Round(time.Millisecond))
	return nil
}

// domainXML is the domain of a lab server: no disk at boot (they are
// attached after, as Nova attaches volumes), the serial console in the
// instance directory.
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
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <description>%s</description>
  <memory unit='MiB'>%d</memory>
  <vcpu>%d</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>%s</kernel><initrd>%s</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 raksha.writer=0</cmdline></os>
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_reboot>destroy</on_reboot>
  <devices>
    <serial type='file'><source path='%s/console.log'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>`, esc(inst.Name), esc(inst.ID), esc(l.opts.Description), mem, cpus, esc(l.opts.Image.Kernel), esc(l.opts.Image.Initrd), esc(inst.Dir))
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

// StopAll destroys and undefines every domain this backend started.
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
	if d.RBD != nil {
		return fmt.Errorf("attach %s to %s: RBD volumes are not supported on the lab's libvirt backend yet", d.Node, ref)
	}
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
	x := diskXML(d, target)
	if err := c.Libvirt().DomainAttachDeviceFlags(dom, x, uint32(lv.DomainDeviceModifyLive|lv.DomainDeviceModifyConfig)); err != nil {
		return fmt.Errorf("attach %s to %s: %w", d.Node, ref, err)
	}
	g.targets[d.Node] = lvDisk{Disk: d, target: target}
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

// diskXML is a lab disk as libvirt attaches it: a qcow2 file on virtio
// with its Nova serial.
func diskXML(d Disk, target string) string {
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
	if err := c.Libvirt().DomainDetachDeviceFlags(dom, diskXML(d.Disk, d.target), uint32(lv.DomainDeviceModifyLive|lv.DomainDeviceModifyConfig)); err != nil {
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
