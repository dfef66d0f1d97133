// Package vm starts and stops lab guests: child QEMU processes booting the
// lab image (scripts/build-guest.sh) with qcow2 data disks, a QMP monitor
// reserved for Raksha and the guest agent's socket, published as
// <lab dir>/hosts/<host>/instances/<instance>/{qmp,qga}.sock (DESIGN.md,
// "Sockets"). Several guests run at once, each in its own instance directory.
//
// Guests run under TCG (`-accel tcg -cpu qemu64`) by default: KVM is used only
// when asked for, and with AccelAuto only when a boot within a deadline proves
// that it works (on nested or broken KVM a guest may never finish booting).
package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/raksha-backup/raksha/internal/guest"
)

// Accel selects QEMU's accelerator.
type Accel string

const (
	// AccelTCG is QEMU's emulator: slow but works everywhere.
	AccelTCG Accel = "tcg"
	// AccelKVM is hardware virtualisation; Start fails when the guest does
	// not boot with it within KVMBootTimeout.
	AccelKVM Accel = "kvm"
	// AccelAuto tries KVM (when /dev/kvm is usable) with KVMBootTimeout and
	// falls back to TCG.
	AccelAuto Accel = "auto"
)

// Defaults of Config.
const (
	DefaultMemoryMB       = 256
	DefaultBootTimeout    = 120 * time.Second
	DefaultKVMBootTimeout = 30 * time.Second
	DefaultStopTimeout    = 10 * time.Second
)

// maxSocketPath is the longest unix socket path Linux accepts.
const maxSocketPath = 107

// Disk is a data disk to attach.
type Disk struct {
	// Path is the image file.
	Path string
	// Format is the image format ("qcow2" when empty; persistent dirty
	// bitmaps need qcow2).
	Format string
	// Serial is the virtio serial number the guest sees (up to 20
	// characters; none when empty).
	Serial string
}

// AttachedDisk is a data disk as attached to a running guest.
type AttachedDisk struct {
	Disk
	// NodeName is the block node of the image format (e.g. "disk0"): the
	// node QMP commands such as block-dirty-bitmap-add name.
	NodeName string
	// FileNodeName is the protocol node under it ("disk0-file").
	FileNodeName string
	// DeviceID is the virtio-blk device's qdev id ("vdisk0").
	DeviceID string
}

// Config describes a guest to start.
type Config struct {
	// LabDir, Host and Instance place the guest's directory at
	// <LabDir>/hosts/<Host>/instances/<Instance>.
	LabDir, Host, Instance string
	// Image is the kernel and initramfs to boot.
	Image Image
	// Disks are the data disks, attached in order (the guest sees /dev/vda,
	// /dev/vdb, ... and mounts each at /data/<filesystem label>).
	Disks []Disk
	// MemoryMB is the guest's memory (DefaultMemoryMB when zero); CPUs its
	// virtual CPUs (1 when zero).
	MemoryMB, CPUs int
	// Accel is the accelerator (AccelTCG when empty).
	Accel Accel
	// BootTimeout bounds the boot up to the agent's first answer
	// (DefaultBootTimeout when zero); KVMBootTimeout bounds a KVM attempt
	// (DefaultKVMBootTimeout when zero).
	BootTimeout, KVMBootTimeout time.Duration
	// NoWriter keeps the guest's record writer from starting
	// (raksha.writer=0); WriterInterval sets its pause between records.
	NoWriter       bool
	WriterInterval time.Duration
	// ExtraAppend is added to the kernel command line.
	ExtraAppend string
	// KeepOnParentExit lets the QEMU process outlive this process; by
	// default the kernel kills it when its parent dies.
	KeepOnParentExit bool
	// Logger receives the launcher's logs (slog.Default when nil).
	Logger *slog.Logger
}

// VM is a running guest. Its exported fields are set by Start and not
// changed after.
type VM struct {
	// Instance is the instance name; Dir the instance directory.
	Instance, Dir string
	// QMPSocket is the QMP monitor reserved for Raksha; AgentSocket the guest
	// agent's socket (the host side of its virtio-serial port). LabQMPSocket
	// is a second monitor for the lab's own work (hot-plug, quit), so that a
	// host worker may keep Raksha's monitor open.
	QMPSocket, AgentSocket, LabQMPSocket string
	// SerialLog is the file the guest's serial console is written to (the
	// init and fsfreeze-hook messages land there); QEMULog QEMU's own output.
	SerialLog, QEMULog string
	// PID is the QEMU process's PID.
	PID int
	// Accel is the accelerator the guest runs with.
	Accel Accel
	// BootDuration is the time from QEMU's start to the agent's first answer.
	BootDuration time.Duration
	// Disks are the attached data disks.
	Disks []AttachedDisk

	log     *slog.Logger
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// Start starts QEMU as a child process and waits until the guest agent
// answers a ping. On failure the process is killed and the error carries
// the end of QEMU's output and of the serial console.
func Start(ctx context.Context, cfg Config) (*VM, error) {
	if cfg.LabDir == "" || cfg.Host == "" || cfg.Instance == "" {
		return nil, errors.New("start guest: LabDir, Host and Instance are required")
	}
	if cfg.Image.Kernel == "" || cfg.Image.Initrd == "" {
		return nil, fmt.Errorf("start guest %s: no image (see BuildImage)", cfg.Instance)
	}
	if cfg.MemoryMB <= 0 {
		cfg.MemoryMB = DefaultMemoryMB
	}
	if cfg.CPUs <= 0 {
		cfg.CPUs = 1
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = DefaultBootTimeout
	}
	if cfg.KVMBootTimeout <= 0 {
		cfg.KVMBootTimeout = DefaultKVMBootTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	dir := guest.InstanceDir(guest.HostDir(cfg.LabDir, cfg.Host), cfg.Instance)
	v := &VM{
		Instance:     cfg.Instance,
		Dir:          dir,
		QMPSocket:    filepath.Join(dir, guest.QMPSocketName),
		AgentSocket:  filepath.Join(dir, guest.AgentSocketName),
		LabQMPSocket: filepath.Join(dir, "lab-qmp.sock"),
		SerialLog:    filepath.Join(dir, "serial.log"),
		QEMULog:      filepath.Join(dir, "qemu.log"),
		log:          cfg.Logger.With("instance", cfg.Instance),
	}
	if len(v.QMPSocket) > maxSocketPath || len(v.AgentSocket) > maxSocketPath || len(v.LabQMPSocket) > maxSocketPath {
		return nil, fmt.Errorf("start guest %s: socket path %s is longer than %d bytes: use a shorter lab directory", cfg.Instance, v.AgentSocket, maxSocketPath)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("start guest %s: %w", cfg.Instance, err)
	}
	if running(v.QMPSocket) {
		return nil, fmt.Errorf("start guest %s: a QEMU already serves %s", cfg.Instance, v.QMPSocket)
	}
	for i, d := range cfg.Disks {
		if _, err := os.Stat(d.Path); err != nil {
			return nil, fmt.Errorf("start guest %s: disk %d: %w", cfg.Instance, i, err)
		}
		if d.Format == "" {
			d.Format = "qcow2"
		}
		v.Disks = append(v.Disks, AttachedDisk{Disk: d, NodeName: fmt.Sprintf("disk%d", i),
			FileNodeName: fmt.Sprintf("disk%d-file", i), DeviceID: fmt.Sprintf("vdisk%d", i)})
	}

	accel := cfg.Accel
	if accel == "" {
		accel = AccelTCG
	}
	if accel == AccelAuto {
		if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
			f.Close()
			err := v.boot(ctx, cfg, AccelKVM, cfg.KVMBootTimeout)
			if err == nil {
				return v, nil
			}
			v.log.Warn("KVM boot failed; falling back to TCG", "err", err)
		}
		accel = AccelTCG
	}
	timeout := cfg.BootTimeout
	if accel == AccelKVM {
		timeout = cfg.KVMBootTimeout
	}
	if err := v.boot(ctx, cfg, accel, timeout); err != nil {
		return nil, err
	}
	return v, nil
}

// boot starts QEMU with accel and waits for the agent; on failure the
// process is killed.
func (v *VM) boot(ctx context.Context, cfg Config, accel Accel, timeout time.Duration) error {
	for _, p := range []string{v.QMPSocket, v.AgentSocket, v.LabQMPSocket} {
		_ = os.Remove(p)
	}
	args := v.args(cfg, accel)
	logf, err := os.Create(v.QEMULog)
	if err != nil {
		return fmt.Errorf("start guest %s: %w", v.Instance, err)
	}
	defer logf.Close()
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.Dir = v.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !cfg.KeepOnParentExit {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start guest %s: qemu-system-x86_64: %w", v.Instance, err)
	}
	v.cmd, v.PID, v.Accel = cmd, cmd.Process.Pid, accel
	v.done = make(chan struct{})
	go func() {
		v.waitErr = cmd.Wait()
		close(v.done)
	}()
	v.log.Info("QEMU started", "pid", v.PID, "accel", accel, "disks", len(v.Disks), "dir", v.Dir)

	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := v.waitAgent(bctx); err != nil {
		v.kill()
		return fmt.Errorf("start guest %s (%s): %w\nQEMU output: %s\nserial console: %s", v.Instance, accel, err,
			tailFile(v.QEMULog, 1000), tailFile(v.SerialLog, 2000))
	}
	v.BootDuration = time.Since(start)
	v.log.Info("guest agent answers", "pid", v.PID, "boot", v.BootDuration.Round(time.Millisecond))
	return nil
}

func (v *VM) args(cfg Config, accel Accel) []string {
	a := []string{"-name", v.Instance}
	switch accel {
	case AccelKVM:
		a = append(a, "-accel", "kvm", "-cpu", "host")
	default:
		a = append(a, "-accel", "tcg", "-cpu", "qemu64")
	}
	appendLine := "console=ttyS0 quiet panic=-1"
	if cfg.NoWriter {
		appendLine += " raksha.writer=0"
	}
	if cfg.WriterInterval > 0 {
		appendLine += " raksha.interval=" + cfg.WriterInterval.String()
	}
	if cfg.ExtraAppend != "" {
		appendLine += " " + cfg.ExtraAppend
	}
	a = append(a,
		"-m", strconv.Itoa(cfg.MemoryMB), "-smp", strconv.Itoa(cfg.CPUs),
		"-nographic", "-monitor", "none", "-nodefaults", "-no-user-config", "-no-reboot",
		"-kernel", cfg.Image.Kernel, "-initrd", cfg.Image.Initrd, "-append", appendLine,
		"-serial", "file:"+v.SerialLog,
		"-pidfile", filepath.Join(v.Dir, "qemu.pid"),
	)
	for _, d := range v.Disks {
		a = append(a,
			"-blockdev", fmt.Sprintf("driver=file,filename=%s,node-name=%s", optEscape(d.Path), d.FileNodeName),
			"-blockdev", fmt.Sprintf("driver=%s,file=%s,node-name=%s", d.Format, d.FileNodeName, d.NodeName))
		dev := fmt.Sprintf("virtio-blk-pci,drive=%s,id=%s", d.NodeName, d.DeviceID)
		if d.Serial != "" {
			dev += ",serial=" + optEscape(d.Serial)
		}
		a = append(a, "-device", dev)
	}
	a = append(a,
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", fmt.Sprintf("socket,path=%s,server=on,wait=off,id=qga0", optEscape(v.AgentSocket)),
		"-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
		"-chardev", fmt.Sprintf("socket,path=%s,server=on,wait=off,id=qmp0", optEscape(v.QMPSocket)),
		"-mon", "chardev=qmp0,mode=control",
		"-chardev", fmt.Sprintf("socket,path=%s,server=on,wait=off,id=qmp1", optEscape(v.LabQMPSocket)),
		"-mon", "chardev=qmp1,mode=control",
	)
	return a
}

// waitAgent pings the agent until it answers, QEMU exits or ctx ends.
func (v *VM) waitAgent(ctx context.Context) error {
	var last error
	for {
		select {
		case <-v.done:
			return fmt.Errorf("QEMU exited before the guest agent answered: %v", v.waitErr)
		default:
		}
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := guest.Dial(actx, v.AgentSocket, guest.Options{Logger: v.log, Owner: "vm: wait for boot"})
		if err == nil {
			err = c.Ping(actx)
			c.Close()
		}
		cancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest agent did not answer: %w (last: %v)", ctx.Err(), last)
		case <-v.done:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Done is closed when the QEMU process has exited.
func (v *VM) Done() <-chan struct{} { return v.done }

// Stop stops the guest: QMP quit through go-qemu's socket monitor, then,
// when QEMU has not exited within DefaultStopTimeout (or ctx's deadline,
// when sooner), SIGKILL to its process group. It returns once the process
// has exited, and removes the sockets. Stopping a stopped guest is a no-op.
func (v *VM) Stop(ctx context.Context) error {
	select {
	case <-v.done:
		v.cleanup()
		return nil
	default:
	}
	ctx, cancel := context.WithTimeout(ctx, DefaultStopTimeout)
	defer cancel()
	quitErr := make(chan error, 1)
	go func() { quitErr <- v.quit(ctx) }()
	select {
	case <-v.done:
		v.log.Info("QEMU quit", "pid", v.PID)
	case <-ctx.Done():
		v.log.Warn("QEMU did not quit in time; killing it", "pid", v.PID)
		v.kill()
	}
	// The monitor connection ends with the process.
	select {
	case err := <-quitErr:
		if err != nil {
			v.log.Warn("QMP quit failed", "pid", v.PID, "err", err)
		}
	case <-time.After(2 * time.Second):
	}
	v.cleanup()
	return nil
}

// quit sends QMP "quit".
func (v *VM) quit(ctx context.Context) error {
	dl, ok := ctx.Deadline()
	to := 5 * time.Second
	if ok {
		to = time.Until(dl)
	}
	mon, err := qmp.NewSocketMonitor("unix", v.LabQMPSocket, to)
	if err != nil {
		return fmt.Errorf("QMP connect: %w", err)
	}
	defer mon.Disconnect()
	if err := mon.Connect(); err != nil {
		return fmt.Errorf("QMP handshake: %w", err)
	}
	if _, err := mon.Run([]byte(`{"execute":"quit"}`)); err != nil {
		return fmt.Errorf("QMP quit: %w", err)
	}
	return nil
}

// Kill kills QEMU at once (SIGKILL to its process group) and waits for it.
func (v *VM) Kill() {
	v.kill()
	v.cleanup()
}

func (v *VM) kill() {
	if v.cmd == nil || v.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-v.PID, syscall.SIGKILL)
	_ = v.cmd.Process.Kill()
	<-v.done
}

func (v *VM) cleanup() {
	for _, p := range []string{v.QMPSocket, v.AgentSocket, v.LabQMPSocket, filepath.Join(v.Dir, "qemu.pid")} {
		_ = os.Remove(p)
	}
}

// Serial returns what the guest wrote to its serial console so far.
func (v *VM) Serial() (string, error) {
	b, err := os.ReadFile(v.SerialLog)
	if err != nil {
		return "", fmt.Errorf("guest %s: serial log: %w", v.Instance, err)
	}
	return string(b), nil
}

// Agent connects to the guest's agent (see guest.Dial).
func (v *VM) Agent(ctx context.Context, opts guest.Options) (*guest.Client, error) {
	return guest.Dial(ctx, v.AgentSocket, opts)
}

// running reports whether something answers on the unix socket path.
func running(path string) bool {
	c, err := net.DialTimeout("unix", path, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// optEscape doubles commas, QEMU's option separator.
func optEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return tail(b, n)
}

// CreateDisk creates a qcow2 image of size bytes at path holding an empty
// ext4 filesystem labelled label (the guest mounts it at /data/<label>):
// mkfs.ext4 on a sparse raw file, converted with qemu-img. It fails when path
// exists.
func CreateDisk(ctx context.Context, path, label string, size int64) error {
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("create disk %s: already exists", path)
	}
	if len(label) > 16 {
		return fmt.Errorf("create disk %s: label %q longer than 16 bytes (ext4's limit)", path, label)
	}
	raw := path + ".raw.tmp"
	defer os.Remove(raw)
	f, err := os.Create(raw)
	if err != nil {
		return fmt.Errorf("create disk %s: %w", path, err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("create disk %s: %w", path, err)
	}
	if err := MkfsExt4(ctx, raw, label); err != nil {
		return fmt.Errorf("create disk %s: %w", path, err)
	}
	out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("create disk %s: qemu-img: %w: %s", path, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// MkfsExt4 makes an ext4 file system labelled label on the raw image file
// raw (its inode tables and journal written at once, so that the guest does
// not write them lazily later).
func MkfsExt4(ctx context.Context, raw, label string) error {
	if len(label) > 16 {
		return fmt.Errorf("mkfs.ext4 %s: label %q longer than 16 bytes (ext4's limit)", raw, label)
	}
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", label, "-E", "lazy_itable_init=0,lazy_journal_init=0", raw).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %w: %s", raw, err, strings.TrimSpace(string(out)))
	}
	return nil
}
