// Package loopfs reads file systems by letting the kernel mount them: XFS,
// which internal/filerestore cannot read, and ext4 whose journal needs
// recovery (a crash-consistent backup), which filerestore reads without
// replaying it. The backed-up volume is served as a file through a private
// FUSE view (internal/mountfs, chunks fetched as the kernel reads),
// attached to a loop device and mounted read-only. A dirty log or journal
// is replayed into a private copy-on-write overlay, never into the backup;
// where that fails the file system is mounted without recovery (what the
// log holds is then missing). Extract copies a tree out of such a mount
// with the guarantees of filerestore.Extract. Everything is unmounted and
// the loop device detached when the mount ends, on every path.
//
// It needs root (CAP_SYS_ADMIN), the loop driver (/dev/loop-control), the
// file system in the kernel and FUSE; Check says what is missing.
package loopfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raksha-backup/raksha/internal/mountfs"
)

// ErrUnavailable is returned when loop mounts of a file system cannot work
// on this machine.
var ErrUnavailable = errors.New("kernel loop mounts are not available here")

// LoopNamePrefix starts the file name recorded in the loop devices this
// package attaches (LOOP_GET_STATUS64's lo_file_name): how 'raksha umount'
// recognises them.
const LoopNamePrefix = mountfs.LoopNamePrefix

// mountData are the file-system options, with log recovery (into the
// overlay) and without; for XFS no UUID check (the same file system may be
// mounted on this host already). ext4 replays its journal on a read-only
// mount of a writable device (the overlay), unless told noload; an error
// in its metadata must not panic the host, whatever errors= behaviour the
// backed-up superblock asks for (errors=panic applies to read-only mounts
// too).
var mountData = map[string]struct{ recover, norecover string }{
	"xfs":  {"nouuid", "norecovery,nouuid"},
	"ext4": {"errors=remount-ro", "noload,errors=remount-ro"},
}

// host is what Check looks at; tests replace it.
type host struct {
	euid        int
	loopControl string
	filesystems string // /proc/filesystems
	modulesDir  string // /lib/modules/<release>
	fuse        func() error
}

func thisHost() host {
	h := host{euid: os.Geteuid(), loopControl: "/dev/loop-control", filesystems: "/proc/filesystems", fuse: mountfs.Check}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		h.modulesDir = "/lib/modules/" + unix.ByteSliceToString(u.Release[:])
	}
	return h
}

// Check tells whether a file system of type fstype ("xfs", "ext4") can be
// loop-mounted here, naming everything that is missing.
func Check(fstype string) error { return thisHost().check(fstype) }

func (h host) check(fstype string) error {
	if _, ok := mountData[fstype]; !ok {
		return fmt.Errorf("%w: %s is not a file system this package mounts", ErrUnavailable, fstype)
	}
	var missing []string
	if h.euid != 0 {
		missing = append(missing, "root (attaching a loop device and mounting need CAP_SYS_ADMIN)")
	}
	if _, err := os.Stat(h.loopControl); err != nil {
		missing = append(missing, fmt.Sprintf("the loop driver (%s: %v)", h.loopControl, errors.Unwrap(err)))
	}
	if !h.kernelHas(fstype) {
		missing = append(missing, fmt.Sprintf("%s in the kernel (not in %s, and no %s module)", fstype, h.filesystems, fstype))
	}
	if err := h.fuse(); err != nil {
		missing = append(missing, err.Error())
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: an %s mount needs %s", ErrUnavailable, strings.ToUpper(fstype), strings.Join(missing, "; "))
	}
	return nil
}

// kernelHas reports whether the kernel knows fstype or has a module for it
// (which mount loads).
func (h host) kernelHas(fstype string) bool {
	if b, err := os.ReadFile(h.filesystems); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 0 && f[len(f)-1] == fstype {
				return true
			}
		}
	}
	if h.modulesDir == "" {
		return false
	}
	dep, err := os.ReadFile(filepath.Join(h.modulesDir, "modules.dep"))
	return err == nil && bytes.Contains(dep, []byte("/"+fstype+".ko"))
}

// Options tune Open.
type Options struct {
	// Source names the volume, e.g. "raksha:BACKUP/VM/DISK" (the FUSE view's
	// source in the mount table; also recorded in the loop device).
	Source string
	// Log receives read errors of the FUSE view and clean-up progress.
	Log *slog.Logger
}

// Mount is a file system loop-mounted read-only from a volume.
type Mount struct {
	// Dir is where the file system is mounted.
	Dir string
	// Device is the loop device node, e.g. /dev/loop3.
	Device string

	// Options are the mount options the file system was mounted with.
	Options string
	// Replayed is how many bytes the log recovery wrote into the private
	// overlay (0: the log was clean, or was not replayed).
	Replayed int64
	// RecoveryErr is why the file system was mounted without log
	// recovery (nil when it was not).
	RecoveryErr error

	rdev    uint64 // the loop device's device number
	ino     uint64 // the raw file's inode (in the FUSE view), to recognise the loop binding
	tmp     string // private directory: raw/ (FUSE view), fs/ (default Dir), a loop node
	ownDir  bool   // Dir is tmp/fs
	node    string // a loop device node made here, removed at the end
	raw     *mountfs.Mount
	ov      *overlay
	log     *slog.Logger
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	stopped sync.Once
	err     error
}

// mountError is a failed mount(2) (not a failure to set it up).
type mountError struct{ err error }

func (e *mountError) Error() string { return e.err.Error() }
func (e *mountError) Unwrap() error { return e.err }

// Open serves the volume r (size bytes) as a file through a private FUSE
// view, attaches it to a loop device and mounts the fstype file system
// ("xfs", or "ext4" for ext2/3/4) on it read-only at dir, or at a private
// temporary directory when dir is "".
// The log is replayed into a private overlay; when that mount fails, the
// file system is mounted again without recovery (RecoveryErr says why).
// Reads of r happen while the mount is served; r must stay usable until
// Done is closed.
func Open(r io.ReaderAt, size int64, fstype, dir string, opts Options) (*Mount, error) {
	if err := Check(fstype); err != nil {
		return nil, err
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts.Log = log
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, err
		}
		if fi, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("mount point: %w", err)
		} else if !fi.IsDir() {
			return nil, fmt.Errorf("mount point %s: not a directory", dir)
		}
		if mi, err := mountfs.MountedAt(abs); err == nil && mi != nil {
			return nil, fmt.Errorf("mount point %s: already a mount point (%s from %s)", dir, mi.FSType, mi.Source)
		}
		dir = abs
	}
	m, err := open(r, size, fstype, dir, true, opts)
	var me *mountError
	if !errors.As(err, &me) {
		return m, err
	}
	log.Warn("mount with log recovery failed: mounting without it", "fstype", fstype, "err", err)
	m, err2 := open(r, size, fstype, dir, false, opts)
	if err2 != nil {
		return nil, fmt.Errorf("%w; and without log recovery: %w", err, err2)
	}
	m.RecoveryErr = err
	return m, nil
}

// open is one attempt of Open: with recovery, a writable loop device over
// the overlay; without, everything read-only.
func open(r io.ReaderAt, size int64, fstype, dir string, recovery bool, opts Options) (_ *Mount, err error) {
	tmp, err := os.MkdirTemp("", "raksha-loop-")
	if err != nil {
		return nil, fmt.Errorf("loop mount: %w", err)
	}
	m := &Mount{Dir: dir, tmp: tmp, log: opts.Log, stop: make(chan struct{}), done: make(chan struct{})}
	defer func() {
		if err != nil {
			if cerr := m.finish(); cerr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, cerr)
			}
		}
	}()
	rawDir := filepath.Join(tmp, "raw")
	if err := os.Mkdir(rawDir, 0o700); err != nil {
		return nil, fmt.Errorf("loop mount: %w", err)
	}
	file := mountfs.RawFile{Name: "fs.img", R: r, Size: size}
	flags, data := os.O_RDONLY, mountData[fstype].norecover
	if recovery {
		if m.ov, err = newOverlay(r, size, tmp); err != nil {
			return nil, err
		}
		file.R, file.W = m.ov, m.ov
		flags, data = os.O_RDWR, mountData[fstype].recover
	}
	m.raw, err = mountfs.MountRaw(rawDir, []mountfs.RawFile{file}, mountfs.Options{Source: opts.Source, Log: opts.Log})
	if err != nil {
		return nil, fmt.Errorf("loop mount: serve the volume: %w", err)
	}
	img, err := os.OpenFile(filepath.Join(rawDir, "fs.img"), flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop mount: %w", err)
	}
	defer img.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(img.Fd()), &st); err != nil {
		return nil, fmt.Errorf("loop mount: %w", err)
	}
	m.ino = st.Ino
	loop, err := m.attach(img, opts.Source, !recovery)
	if err != nil {
		return nil, err
	}
	// the loop device detaches itself once the mount below and this file
	// are gone (LO_FLAGS_AUTOCLEAR)
	defer loop.Close()
	if m.Dir == "" {
		m.Dir, m.ownDir = filepath.Join(tmp, "fs"), true
		if err := os.Mkdir(m.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("loop mount: %w", err)
		}
	}
	mflags := uintptr(unix.MS_RDONLY | unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC)
	if err := unix.Mount(m.Device, m.Dir, fstype, mflags, data); err != nil {
		why := ""
		switch {
		case errors.Is(err, unix.ENODEV):
			why = fmt.Sprintf(" (the kernel has no %s support)", fstype)
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EUCLEAN):
			why = fmt.Sprintf(" (not a mountable %s file system, or damaged; the kernel log says more)", fstype)
		case errors.Is(err, unix.EBADMSG):
			why = " (a checksum does not match: damaged metadata or journal; the kernel log says more)"
		}
		_ = unix.IoctlSetInt(int(loop.Fd()), unix.LOOP_CLR_FD, 0)
		return nil, &mountError{fmt.Errorf("mount %s (%s) at %s: %w%s", m.Device, strings.TrimSuffix("ro,"+data, ","), m.Dir, err, why)}
	}
	m.Options = strings.TrimSuffix("ro,"+data, ",")
	if m.ov != nil {
		m.Replayed = m.ov.Bytes()
	}
	go m.watch()
	m.log.Debug("loop-mounted", "dir", m.Dir, "device", m.Device, "fstype", fstype, "options", m.Options, "replayed", m.Replayed)
	return m, nil
}

// attach binds img to a free loop device, cleared on last close (and
// read-only if ro), and returns the device opened.
func (m *Mount) attach(img *os.File, source string, ro bool) (*os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop mount: %w", err)
	}
	defer ctl.Close()
	var lastErr error
	for try := 0; try < 20; try++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("loop mount: no free loop device: %w", err)
		}
		node, err := m.loopNode(n)
		if err != nil {
			return nil, err
		}
		// the device is writable only when opened for writing
		mode := os.O_RDWR
		if ro {
			mode = os.O_RDONLY
		}
		dev, err := os.OpenFile(node, mode|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("loop mount: %w", err)
		}
		cfg := unix.LoopConfig{Fd: uint32(img.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		if ro {
			cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
		}
		copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], LoopNamePrefix+source)
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
			// kernels before 5.8: no LOOP_CONFIGURE
			if err = unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_SET_FD, int(img.Fd())); err == nil {
				if err = unix.IoctlLoopSetStatus64(int(dev.Fd()), &cfg.Info); err != nil {
					_ = unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_CLR_FD, 0)
				}
			}
		}
		if errors.Is(err, unix.EBUSY) { // taken by someone else meanwhile
			dev.Close()
			m.dropNode()
			lastErr = err
			continue
		}
		if err != nil {
			dev.Close()
			return nil, fmt.Errorf("loop mount: attach %s: %w", node, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(dev.Fd()), &st); err != nil {
			dev.Close()
			return nil, fmt.Errorf("loop mount: %w", err)
		}
		m.Device, m.rdev = node, st.Rdev
		return dev, nil
	}
	return nil, fmt.Errorf("loop mount: every free loop device was taken before it could be attached: %w", lastErr)
}

// loopNode returns the device node of loop device n, making one in the
// private directory when /dev has none (a container's static /dev).
func (m *Mount) loopNode(n int) (string, error) {
	p := fmt.Sprintf("/dev/loop%d", n)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	major, minor := uint32(7), uint32(n)
	if b, err := os.ReadFile(fmt.Sprintf("/sys/devices/virtual/block/loop%d/dev", n)); err == nil {
		if a, b, ok := strings.Cut(strings.TrimSpace(string(b)), ":"); ok {
			x, err1 := strconv.ParseUint(a, 10, 32)
			y, err2 := strconv.ParseUint(b, 10, 32)
			if err1 == nil && err2 == nil {
				major, minor = uint32(x), uint32(y)
			}
		}
	}
	node := filepath.Join(m.tmp, fmt.Sprintf("loop%d", n))
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(major, minor))); err != nil {
		return "", fmt.Errorf("loop mount: %s is missing and making %s failed: %w", p, node, err)
	}
	m.node = node
	return node, nil
}

func (m *Mount) dropNode() {
	if m.node != "" {
		_ = os.Remove(m.node)
		m.node = ""
	}
}

// Done is closed once the file system is unmounted (by Unmount, Close or
// from outside: umount, 'raksha umount'), the loop device detached and the
// FUSE view gone.
func (m *Mount) Done() <-chan struct{} { return m.done }

// Err is what the clean-up after the unmount failed at, once Done is closed.
func (m *Mount) Err() error {
	<-m.done
	return m.err
}

// Unmount unmounts the file system and waits until everything is cleaned
// up. A busy mount point (a process has a file open or its working
// directory there) fails with an error wrapping syscall.EBUSY and stays
// mounted.
func (m *Mount) Unmount() error {
	select {
	case <-m.done:
		return m.err
	default:
	}
	if err := unix.Unmount(m.Dir, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("unmount %s: %w (a process has a file open or its working directory there)", m.Dir, syscall.EBUSY)
		}
		return fmt.Errorf("unmount %s: %w", m.Dir, err)
	}
	return m.finish()
}

// Close unmounts the file system, lazily if it stays busy for a few
// seconds, and cleans up everything.
func (m *Mount) Close() error {
	var err error
	for k := 0; k < 20; k++ {
		if err = m.Unmount(); !errors.Is(err, syscall.EBUSY) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	m.log.Warn("mount point busy: detaching it lazily", "dir", m.Dir, "err", err)
	if err := unix.Unmount(m.Dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s lazily: %w", m.Dir, err)
	}
	return m.finish()
}

// watch notices an unmount from outside and cleans up after it.
func (m *Mount) watch() {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		if on, err := m.mounted(); err == nil && !on {
			m.log.Info("unmounted from outside", "dir", m.Dir)
			_ = m.finish()
			return
		}
	}
}

// mounted reports whether the loop device is still mounted at Dir.
func (m *Mount) mounted() (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	want := fmt.Sprintf("%d:%d", unix.Major(m.rdev), unix.Minor(m.rdev))
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && fields[2] == want && mountfs.Unescape(fields[4]) == m.Dir {
			return true, nil
		}
	}
	return false, sc.Err()
}

// finish cleans up once the file system is unmounted (or was never
// mounted): waits for the loop device to let go of the FUSE view (a lazy
// unmount keeps it until its last user is done), unmounts the view and
// removes the private directory. It runs once; later calls wait for it.
func (m *Mount) finish() error {
	m.stopped.Do(func() { close(m.stop) })
	m.once.Do(func() {
		defer close(m.done)
		var errs []error
		if m.rdev != 0 {
			start, said := time.Now(), time.Now()
			for !m.loopReleased() {
				if time.Since(said) > 10*time.Second {
					m.log.Info("waiting for the loop device to be released (a lazily unmounted file system still in use)", "device", m.Device, "waited", time.Since(start).Round(time.Second))
					said = time.Now()
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		if m.raw != nil {
			var err error
			for k := 0; k < 50; k++ {
				if err = m.raw.Unmount(); err == nil || !errors.Is(err, syscall.EBUSY) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if errors.Is(err, syscall.EBUSY) {
				m.log.Warn("FUSE view busy: detaching it lazily", "dir", m.raw.Dir)
				err = mountfs.Unmount(context.Background(), m.raw.Dir, true)
				if err == nil {
					<-m.raw.Done()
				}
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("unmount the FUSE view: %w", err))
			}
		}
		m.dropNode()
		if m.ov != nil {
			_ = m.ov.Close()
		}
		if m.ownDir {
			if err := os.Remove(m.Dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		for _, p := range []string{filepath.Join(m.tmp, "raw"), m.tmp} {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		m.err = errors.Join(errs...)
		if m.err != nil {
			m.err = fmt.Errorf("clean up the loop mount of %s: %w", m.Device, m.err)
		}
	})
	<-m.done
	return m.err
}

// loopReleased reports whether the loop device no longer serves the FUSE
// view's file (it was cleared, or is bound to another file by now).
func (m *Mount) loopReleased() bool {
	dev, err := os.OpenFile(m.Device, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENXIO)
	}
	defer dev.Close()
	info, err := unix.IoctlLoopGetStatus64(int(dev.Fd()))
	if err != nil {
		return errors.Is(err, unix.ENXIO)
	}
	return info.Inode != m.ino || !strings.HasPrefix(unix.ByteSliceToString(info.File_name[:]), LoopNamePrefix)
}
