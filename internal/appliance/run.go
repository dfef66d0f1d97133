package appliance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/raksha-backup/raksha/internal/appliance/agent"
	"github.com/raksha-backup/raksha/internal/filerestore"
)

// Options tune Extract.
type Options struct {
	// MemoryMiB is the guest's memory (DefaultMemoryMiB when 0).
	MemoryMiB int
	// BootTimeout bounds the time from QEMU's start until the appliance
	// has mounted the volume and starts sending, or reports that it
	// cannot (DefaultBootTimeout, or DefaultBootTimeoutTCG without KVM,
	// when 0). IdleTimeout bounds each wait for more of the tar once it
	// has begun (DefaultIdleTimeout when 0): a guest that trickles or
	// stalls is killed. Timeout bounds the whole extraction
	// (DefaultTimeout when 0).
	BootTimeout, IdleTimeout, Timeout time.Duration
	// Accel is "kvm", "tcg" or "" (auto: KVM when /dev/kvm can be opened,
	// and TCG again when the appliance does not come up under KVM, as on
	// a host whose nested KVM is broken).
	Accel string
	// Extract are the rules of the unpacking (filerestore.ExtractTar).
	Extract filerestore.ExtractOptions
	// Log receives progress.
	Log *slog.Logger
	// Console, when set, receives the appliance's console output as it
	// comes (the guest's words: for debugging, not to be trusted).
	Console io.Writer
}

// Result is what an extraction through the appliance did.
type Result struct {
	filerestore.Stats
	// Options are the mount options the appliance used.
	Options string `json:"mount_options"`
	// Replayed is how many bytes the log or journal recovery wrote into
	// the guest's copy-on-write overlay (none reached the backup).
	Replayed int64 `json:"replayed"`
	// RecoveryErr says why the file system was mounted without log
	// recovery ("" when it was not).
	RecoveryErr string `json:"recovery_err,omitempty"`
	// Accel is "kvm" or "tcg".
	Accel string `json:"accel"`
	// Boot is the time from QEMU's start to the tar's first byte; Duration
	// the whole extraction; PeakRSS QEMU's peak resident memory in bytes.
	Boot     time.Duration `json:"boot_ns"`
	Duration time.Duration `json:"duration_ns"`
	PeakRSS  int64         `json:"peak_rss"`
}

// Error is a failed extraction through the appliance.
type Error struct {
	// Stage is what failed: "start" (QEMU), "boot" (the appliance did not
	// answer in time, or stopped without a result), "disk", "mount",
	// "path", "copy" (inside the appliance), "unpack" (the host refused
	// or could not write the tar), "timeout" or "cancelled".
	Stage string
	Err   error
	// Console is the tail of the appliance's console log.
	Console string
}

var stageWhat = map[string]string{
	"start":     "starting QEMU",
	"boot":      "booting the appliance",
	"request":   "reading the request in the appliance",
	"disk":      "finding the disk in the appliance",
	"mount":     "mounting the file system in the appliance",
	"path":      "finding the path in the appliance",
	"copy":      "sending the files from the appliance",
	"unpack":    "unpacking the appliance's tar",
	"timeout":   "waiting for the appliance",
	"cancelled": "waiting for the appliance",
}

func (e *Error) Error() string {
	what := stageWhat[e.Stage]
	if what == "" {
		what = e.Stage
	}
	s := fmt.Sprintf("appliance: %s: %v", what, e.Err)
	if c := consoleTail(e.Console, 20); c != "" {
		s += "\n--- appliance console, last lines ---\n" + c
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// consoleTail is the last n lines of a console log, control characters
// (but newlines) dropped: the log is written by the guest.
func consoleTail(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || (r >= 0x20 && r != 0x7f) {
			return r
		}
		return -1
	}, s)
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// tcgCacheMiB bounds TCG's translation cache.
const tcgCacheMiB = 64

// consoleKeep is how much of the console log is kept (the tail).
const consoleKeep = 64 << 10

// ring keeps the last consoleKeep bytes written to it.
type ring struct {
	mu sync.Mutex
	b  []byte
}

func (r *ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.b = append(r.b, p...)
	if len(r.b) > consoleKeep {
		r.b = append(r.b[:0], r.b[len(r.b)-consoleKeep:]...)
	}
	return len(p), nil
}

func (r *ring) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return string(r.b)
}

// Extract copies the file, symlink or directory tree at p in the fstype
// file system ("xfs", or "ext4" for ext2/3/4) on disk (a raw image: a file
// path, or a QEMU NBD URL such as nbd+unix:///?socket=PATH) into destDir,
// as filerestore.Extract names and writes it, by mounting it in a
// throwaway appliance guest booted from img. The disk is never written:
// the guest sees it through a copy-on-write snapshot in a private
// directory that is removed, with QEMU killed, before Extract returns.
// A failure is an *Error naming the stage and carrying the console's tail;
// a path missing from the file system wraps filerestore.ErrNotFound, a
// budget exceeded filerestore.ErrBudget, a tar the host refuses
// filerestore.ErrHostileArchive.
func Extract(ctx context.Context, img Image, disk, fstype, p, destDir string, opts Options) (Result, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	word, err := agent.EncodeRequest(agent.Request{FSType: fstype, Path: p})
	if err != nil {
		return Result{}, err
	}
	if err := Check(); err != nil {
		return Result{}, &Error{Stage: "start", Err: err}
	}
	switch opts.Accel {
	case "kvm", "tcg":
		return extract(ctx, img, disk, word, fstype, p, destDir, opts.Accel, opts)
	case "":
	default:
		return Result{}, fmt.Errorf("appliance: accelerator %q: want kvm, tcg or auto", opts.Accel)
	}
	if !kvm() {
		return extract(ctx, img, disk, word, fstype, p, destDir, "tcg", opts)
	}
	kopts := opts
	if kopts.BootTimeout == 0 {
		kopts.BootTimeout = DefaultBootTimeout
	}
	res, err := extract(ctx, img, disk, word, fstype, p, destDir, "kvm", kopts)
	var ae *Error
	// nothing was written before the first byte: the same extraction again
	if err != nil && errors.As(err, &ae) && (ae.Stage == "start" || ae.Stage == "boot") && res.Boot == 0 && ctx.Err() == nil {
		opts.Log.Warn("the appliance did not come up under KVM: trying TCG", "err", err)
		return extract(ctx, img, disk, word, fstype, p, destDir, "tcg", opts)
	}
	return res, err
}

// extract is one run of the appliance with accel.
func extract(ctx context.Context, img Image, disk, word, fstype, p, destDir, accel string, opts Options) (res Result, err error) {
	start := time.Now()
	log := opts.Log
	res.Accel = accel
	mem := opts.MemoryMiB
	if mem == 0 {
		mem = DefaultMemoryMiB
	}
	boot := opts.BootTimeout
	if boot == 0 {
		boot = DefaultBootTimeout
		if res.Accel == "tcg" {
			boot = DefaultBootTimeoutTCG
		}
	}
	total, idle := opts.Timeout, opts.IdleTimeout
	if total == 0 {
		total = DefaultTimeout
	}
	if idle == 0 {
		idle = DefaultIdleTimeout
	}

	tmp, err := os.MkdirTemp("", "raksha-appliance-")
	if err != nil {
		return res, fmt.Errorf("appliance: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(tmp); rerr != nil {
			err = errors.Join(err, fmt.Errorf("appliance: remove its directory: %w", rerr))
		}
	}()
	tarSock, conSock := filepath.Join(tmp, "tar.sock"), filepath.Join(tmp, "console.sock")
	tarL, err := net.Listen("unix", tarSock)
	if err != nil {
		return res, fmt.Errorf("appliance: %w", err)
	}
	defer tarL.Close()
	conL, err := net.Listen("unix", conSock)
	if err != nil {
		return res, fmt.Errorf("appliance: %w", err)
	}
	defer conL.Close()

	// TCG's translation cache would grow to 1 GiB by default: bounded
	cpu, acc := "max", "tcg,tb-size="+strconv.Itoa(tcgCacheMiB)
	if res.Accel == "kvm" {
		cpu, acc = "host", "kvm"
	}
	esc := func(s string) string { return strings.ReplaceAll(s, ",", ",,") }
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "pc", "-accel", acc, "-cpu", cpu, "-m", strconv.Itoa(mem), "-smp", "1",
		"-no-reboot", "-nic", "none",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-kernel", img.Kernel, "-initrd", img.Initrd,
		"-append", "console=ttyS0 loglevel=5 panic=-1 " + word,
		"-chardev", "socket,id=con,path=" + esc(conSock), "-serial", "chardev:con",
		"-drive", "file=" + esc(disk) + ",format=raw,if=virtio,snapshot=on",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=tar,path=" + esc(tarSock),
		"-device", "virtserialport,chardev=tar,name=" + agent.PortName,
	}
	cmd := exec.Command(qemuBinary, args...)
	// snapshot=on keeps its overlay in TMPDIR: the private directory
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	var stderr ring
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return res, &Error{Stage: "start", Err: fmt.Errorf("%s: %w", qemuBinary, err)}
	}
	log.Debug("appliance started", "pid", cmd.Process.Pid, "accel", res.Accel, "memory_mib", mem, "fstype", fstype, "path", p)
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	kill := func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
		}
	}
	defer func() {
		kill()
		<-exited
		if ps := cmd.ProcessState; ps != nil {
			if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
				res.PeakRSS = ru.Maxrss * 1024
			}
		}
		res.Duration = time.Since(start)
		log.Debug("appliance stopped", "duration", res.Duration, "peak_rss", res.PeakRSS)
	}()

	var console ring
	conDone := make(chan struct{})
	var timedOut string
	var mu sync.Mutex
	stop := func(why string) {
		mu.Lock()
		if timedOut == "" {
			timedOut = why
		}
		mu.Unlock()
		kill()
	}
	fail := func(stage string, err error) error {
		select { // the console's last words
		case <-conDone:
		case <-time.After(2 * time.Second):
		}
		return &Error{Stage: stage, Err: err, Console: console.String() + stderr.String()}
	}

	// QEMU connects to both sockets as it starts
	conns := make(chan net.Conn, 2)
	for _, l := range []net.Listener{conL, tarL} {
		go func() {
			c, err := l.Accept()
			if err == nil {
				conns <- c
			}
		}()
	}
	var conC, tarC net.Conn
	for conC == nil || tarC == nil {
		select {
		case c := <-conns:
			if c.LocalAddr().String() == conSock {
				conC = c
			} else {
				tarC = c
			}
		case <-exited:
			close(conDone)
			return res, fail("start", fmt.Errorf("%s exited before it connected: %s", qemuBinary, consoleTail(stderr.String(), 5)))
		case <-time.After(30 * time.Second):
			close(conDone)
			return res, fail("start", fmt.Errorf("%s did not connect its sockets within 30s", qemuBinary))
		}
	}
	defer conC.Close()
	defer tarC.Close()
	go func() {
		var w io.Writer = &console
		if opts.Console != nil {
			w = io.MultiWriter(&console, opts.Console)
		}
		_, _ = io.Copy(w, conC)
		close(conDone)
	}()

	// the watchdog: boot timeout until the first byte, then the idle
	// timeout between bytes; the overall timeout; cancellation
	first := make(chan struct{})
	var firstOnce sync.Once
	var last atomic.Int64 // when a byte last came, Unix ns
	done := make(chan struct{})
	defer close(done)
	go func(first <-chan struct{}) {
		bootT, totalT := time.NewTimer(boot), time.NewTimer(total)
		defer bootT.Stop()
		defer totalT.Stop()
		tick := time.NewTicker(min(idle/4, time.Second))
		defer tick.Stop()
		started := false
		for {
			select {
			case <-first:
				first, started = nil, true
				bootT.Stop()
			case <-bootT.C:
				stop(fmt.Sprintf("no answer from the appliance within the boot timeout (%v)", boot))
			case <-tick.C:
				if started && time.Since(time.Unix(0, last.Load())) > idle {
					stop(fmt.Sprintf("the appliance sent nothing for longer than the idle timeout (%v)", idle))
				}
			case <-totalT.C:
				stop(fmt.Sprintf("the extraction took longer than its timeout (%v)", total))
			case <-ctx.Done():
				stop("cancelled: " + context.Cause(ctx).Error())
			case <-exited:
				return
			case <-done:
				return
			}
		}
	}(first)
	r := &firstReader{r: tarC, last: &last, first: func() {
		firstOnce.Do(func() {
			res.Boot = time.Since(start)
			close(first)
			log.Debug("appliance sending", "boot", res.Boot)
		})
	}}
	srcDir := path.Dir(path.Clean("/" + p))
	st, xerr := filerestore.ExtractTar(ctx, r, destDir, srcDir, opts.Extract)
	res.Stats = st
	if xerr == nil && r.n > 0 {
		if _, err := tarC.Write([]byte{agent.Ack}); err != nil {
			xerr = fmt.Errorf("acknowledge the tar: %w", err)
		}
	}
	if xerr != nil {
		kill()
	}
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		kill()
		<-exited
	}
	<-conDone
	mu.Lock()
	why := timedOut
	mu.Unlock()
	out, found := agent.ParseResult([]byte(console.String()))
	if found {
		res.Options, res.Replayed, res.RecoveryErr = out.Options, out.Replayed, out.RecoveryErr
		res.Skipped = append(res.Skipped, out.Skipped...)
	}
	switch {
	case why != "":
		stage := "timeout"
		if res.Boot == 0 {
			stage = "boot"
		}
		if ctx.Err() != nil {
			stage = "cancelled"
		}
		return res, fail(stage, errors.Join(errors.New(why), ctx.Err()))
	case found && !out.OK:
		aerr := errors.New(out.Error)
		if out.NotFound {
			aerr = fmt.Errorf("%w: %s", filerestore.ErrNotFound, p)
		}
		return res, fail(out.Stage, errors.Join(aerr, xerr))
	case xerr != nil:
		return res, fail("unpack", xerr)
	case !found:
		return res, fail("boot", errors.New("the appliance stopped without a result"))
	}
	if out.RecoveryErr != "" {
		res.Warnings = append(res.Warnings, "mounted without log recovery: "+out.RecoveryErr)
	}
	log.Debug("appliance done", "boot", res.Boot, "files", st.Files, "bytes", st.Bytes)
	return res, nil
}

// firstReader calls first on the first byte read, notes when bytes
// last came in last, and counts them.
type firstReader struct {
	r     io.Reader
	first func()
	last  *atomic.Int64
	n     int64
}

func (f *firstReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 {
		f.last.Store(time.Now().UnixNano())
		if f.n == 0 {
			f.first()
		}
		f.n += int64(n)
	}
	return n, err
}
