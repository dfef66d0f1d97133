// Package mountfs serves a backed-up disk as a read-only FUSE file system:
// either the ext2/3/4 tree on it (read through internal/filerestore, so only
// the chunks a read touches are fetched), or the raw disk image and its
// partitions as files, for an operator to loop-mount what filerestore cannot
// read (xfs, LVM).
package mountfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/raksha-backup/raksha/internal/filerestore"
)

// FSType is the file system type the mounts show in /proc/self/mountinfo
// ("fuse." + the FUSE subtype).
const FSType = "fuse.raksha"

// cacheTimeout is how long the kernel may keep names and attributes: a
// backup never changes.
const cacheTimeout = time.Hour

// ErrNoFUSE is returned when this machine cannot mount FUSE file systems.
var ErrNoFUSE = errors.New("FUSE is not available")

// Options tune Mount.
type Options struct {
	// Source is shown as the mount's source in the mount table, e.g.
	// "raksha:BACKUP/VM/DISK".
	Source string
	// Log receives read errors (a missing chunk shows as EIO to readers;
	// the reason is logged here).
	Log *slog.Logger
	// Debug logs every FUSE request.
	Debug bool

	writable bool // a raw file takes writes: no "ro" mount option
}

// Mount is a mounted file system.
type Mount struct {
	Dir    string
	server *fuse.Server
	done   chan struct{}
}

// Check tells whether FUSE mounts can work here: /dev/fuse and the
// fusermount3 (or fusermount) helper.
func Check() error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("%w: /dev/fuse: %v", ErrNoFUSE, err)
	}
	if _, err := fusermount(); err != nil {
		return err
	}
	return nil
}

func fusermount() (string, error) {
	for _, name := range []string{"fusermount3", "fusermount"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		if p := "/bin/" + name; isExec(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: no fusermount3 or fusermount on PATH (Debian package fuse3)", ErrNoFUSE)
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// MountExt4 mounts the file system x read-only at dir.
func MountExt4(dir string, x *filerestore.FS, opts Options) (*Mount, error) {
	root := &node{fsys: x, ino: filerestore.RootIno, log: logger(opts)}
	return mount(dir, root, opts)
}

// RawFile is one file of a raw mount: a disk image or a partition of it.
type RawFile struct {
	Name string
	R    io.ReaderAt
	Size int64
	// W, when set, takes writes to the file (within Size; no truncation):
	// a private copy-on-write overlay, never the backup. The mount is then
	// not read-only (the kernel refuses writes to the other files itself).
	W io.WriterAt
}

// MountRaw mounts a directory holding files (read-only, but for files
// with a W) at dir.
func MountRaw(dir string, files []RawFile, opts Options) (*Mount, error) {
	root := &rawDir{files: files, log: logger(opts), mtime: time.Now()}
	for _, f := range files {
		if f.W != nil {
			opts.writable = true
		}
	}
	return mount(dir, root, opts)
}

func logger(opts Options) *slog.Logger {
	if opts.Log != nil {
		return opts.Log.With("mount", opts.Source)
	}
	return slog.New(slog.DiscardHandler)
}

func mount(dir string, root fs.InodeEmbedder, opts Options) (*Mount, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("mount point: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("mount point %s: not a directory", dir)
	}
	if m, err := mounted(abs); err == nil && m != nil {
		hint := ""
		if m.fstype == FSType {
			hint = fmt.Sprintf(": unmount it first ('raksha umount %s')", dir)
		}
		return nil, fmt.Errorf("mount point %s: already a mount point (%s from %s)%s", dir, m.fstype, m.source, hint)
	}
	timeout := cacheTimeout
	mopts := []string{"ro", "nodev", "nosuid"}
	if opts.writable {
		mopts = mopts[1:]
	}
	src := opts.Source
	if src == "" {
		src = "raksha"
	}
	fo := &fs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			FsName: strings.NewReplacer(",", "_", " ", "_").Replace(src),
			Name:   "raksha",
			// the kernel refuses writes itself (EROFS); no devices, no setuid
			Options:       mopts,
			DisableXAttrs: true,
			MaxReadAhead:  1 << 20,
			Debug:         opts.Debug,
		},
	}
	server, err := fs.Mount(abs, root, fo)
	if err != nil {
		return nil, fmt.Errorf("mount %s at %s: %w", src, dir, err)
	}
	m := &Mount{Dir: abs, server: server, done: make(chan struct{})}
	go func() {
		server.Wait()
		close(m.done)
	}()
	return m, nil
}

// Done is closed when the file system is no longer served: it was
// unmounted, by Unmount or from outside (fusermount3 -u, umount).
func (m *Mount) Done() <-chan struct{} { return m.done }

// Unmount unmounts the file system and waits until it is no longer
// served. A busy mount point (a process has a file open or its working
// directory there) fails with an error wrapping syscall.EBUSY and stays
// mounted.
func (m *Mount) Unmount() error {
	select {
	case <-m.done:
		return nil
	default:
	}
	if err := m.server.Unmount(); err != nil {
		select {
		case <-m.done: // unmounted from outside meanwhile
			return nil
		default:
		}
		if busy(m.Dir) {
			return fmt.Errorf("unmount %s: %w (a process has a file open or its working directory there)", m.Dir, syscall.EBUSY)
		}
		return fmt.Errorf("unmount %s: %w", m.Dir, err)
	}
	<-m.done
	return nil
}

// busy reports whether dir is still mounted after a failed unmount.
func busy(dir string) bool {
	mi, err := mounted(dir)
	return err == nil && mi != nil
}

// mountInfo is one line of /proc/self/mountinfo.
type mountInfo struct {
	dir, fstype, source string
	dev                 string // major:minor
}

// MountInfo describes the mount at a directory.
type MountInfo struct {
	FSType, Source string
	// Dev is the device number as major:minor.
	Dev string
}

// MountedAt returns the (topmost) mount at exactly the absolute path dir,
// or nil when dir is no mount point.
func MountedAt(dir string) (*MountInfo, error) {
	m, err := mounted(dir)
	if err != nil || m == nil {
		return nil, err
	}
	return &MountInfo{FSType: m.fstype, Source: m.source, Dev: m.dev}, nil
}

// mounted returns the mount at exactly dir, or nil.
func mounted(dir string) (*mountInfo, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var found *mountInfo
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		sep := -1
		for k := 6; k < len(fields); k++ {
			if fields[k] == "-" {
				sep = k
				break
			}
		}
		if sep < 0 || sep+2 >= len(fields) {
			continue
		}
		if unescape(fields[4]) == dir {
			// the last one wins: mounts stacked on the same directory
			found = &mountInfo{dir: dir, fstype: fields[sep+1], source: unescape(fields[sep+2]), dev: fields[2]}
		}
	}
	return found, sc.Err()
}

// Unescape undoes /proc/self/mountinfo's octal escapes (\040 for a space).
func Unescape(s string) string { return unescape(s) }

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// IsMounted reports whether dir is a mount point of this package's file
// systems.
func IsMounted(dir string) (bool, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false, err
	}
	m, err := mounted(abs)
	if err != nil {
		return false, err
	}
	return m != nil && m.fstype == FSType, nil
}

// LoopNamePrefix starts the file name internal/loopfs records in the loop
// devices it attaches: the mark by which Unmount knows its mounts.
const LoopNamePrefix = "raksha-loop:"

// loopMount reports whether m is a file system on a loop device that
// internal/loopfs attached (an XFS volume of a backup, or an ext4 one whose
// journal was replayed, served by a raksha process).
func loopMount(m *mountInfo) bool {
	if !strings.HasPrefix(m.dev, "7:") {
		return false
	}
	f, err := os.OpenFile(m.source, os.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeDevice == 0 {
		return false
	}
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	return err == nil && strings.HasPrefix(unix.ByteSliceToString(info.File_name[:]), LoopNamePrefix)
}

// Unmount unmounts the raksha mount at dir from another process (what
// 'raksha umount' does), with fusermount3 -u (-z when lazy: detach now,
// finish when the last user is gone); a loop mount of internal/loopfs
// (XFS, ext4 with its journal replayed) with umount(2) (MNT_DETACH when lazy). It refuses mount points that
// are not raksha mounts.
func Unmount(ctx context.Context, dir string, lazy bool) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	m, err := mounted(abs)
	if err != nil {
		return fmt.Errorf("read the mount table: %w", err)
	}
	switch {
	case m == nil:
		return fmt.Errorf("%s: %w: not a mount point", dir, ErrNotMounted)
	case m.fstype != FSType && loopMount(m):
		flags := 0
		if lazy {
			flags = unix.MNT_DETACH
		}
		backing, _ := os.ReadFile("/sys/dev/block/" + m.dev + "/loop/backing_file")
		if err := unix.Unmount(abs, flags); err != nil {
			if errors.Is(err, unix.EBUSY) {
				return fmt.Errorf("unmount %s: %w (close what uses it, or unmount lazily)", dir, syscall.EBUSY)
			}
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
		if !lazy && len(backing) > 0 {
			return orphanView(ctx, m, strings.TrimSpace(string(backing)))
		}
		return nil
	case m.fstype != FSType:
		return fmt.Errorf("%s: %w: it is a %s mount of %s", dir, ErrNotMounted, m.fstype, m.source)
	}
	bin, err := fusermount()
	if err != nil {
		return err
	}
	args := []string{"-u"}
	if lazy {
		args = append(args, "-z")
	}
	out, err := exec.CommandContext(ctx, bin, append(args, "--", abs)...).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "busy") {
			return fmt.Errorf("unmount %s: %w: %s (close what uses it, or unmount lazily)", dir, syscall.EBUSY, msg)
		}
		return fmt.Errorf("unmount %s: %s: %v: %s", dir, filepath.Base(bin), err, msg)
	}
	return nil
}

// orphanView cleans up after a loop mount whose raksha process is gone
// (killed): once the loop device lets go of the FUSE view's file, the view,
// which nobody serves any more, is unmounted and its private directory
// removed. A view still served is left to its process.
func orphanView(ctx context.Context, m *mountInfo, backing string) error {
	view := filepath.Dir(backing)
	tmp := filepath.Dir(view)
	if !strings.HasPrefix(filepath.Base(tmp), "raksha-loop-") {
		return nil
	}
	if mi, err := mounted(view); err != nil || mi == nil || mi.fstype != FSType {
		return nil
	}
	if _, err := os.ReadDir(view); !errors.Is(err, syscall.ENOTCONN) {
		return nil // served: its process cleans up
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		b, err := os.ReadFile("/sys/dev/block/" + m.dev + "/loop/backing_file")
		if err != nil || strings.TrimSpace(string(b)) != backing {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("unmounted, but loop device %s still holds %s: detach it with losetup -d, then run 'raksha umount %s'", m.source, backing, view)
		}
	}
	if err := Unmount(ctx, view, false); err != nil {
		return fmt.Errorf("unmounted; the FUSE view of its killed raksha process: %w", err)
	}
	if filepath.Dir(m.source) == tmp {
		_ = os.Remove(m.source) // a loop device node made there
	}
	_ = os.Remove(filepath.Join(tmp, "fs"))
	_ = os.Remove(view)
	_ = os.Remove(tmp)
	return nil
}

// ErrNotMounted is returned by Unmount for a directory that is no raksha
// mount point.
var ErrNotMounted = errors.New("not a raksha mount")

// errno maps a read error to what the reader sees, logging the reason.
func errno(log *slog.Logger, what string, err error) syscall.Errno {
	switch {
	case errors.Is(err, filerestore.ErrNotFound):
		return syscall.ENOENT
	case errors.Is(err, filerestore.ErrNotDir):
		return syscall.ENOTDIR
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	log.Warn("read from the backup failed", "what", what, "err", err)
	return syscall.EIO
}

// writeFlags are open flags that would change a file.
const writeFlags = syscall.O_WRONLY | syscall.O_RDWR | syscall.O_TRUNC | syscall.O_APPEND | syscall.O_CREAT

// node is one inode of the ext4 tree.
type node struct {
	fs.Inode
	fsys *filerestore.FS
	ino  uint32
	log  *slog.Logger

	mu      sync.Mutex
	entries map[string]filerestore.DirEntry // a directory's, read once
}

var (
	_ fs.NodeGetattrer  = (*node)(nil)
	_ fs.NodeLookuper   = (*node)(nil)
	_ fs.NodeReaddirer  = (*node)(nil)
	_ fs.NodeOpener     = (*node)(nil)
	_ fs.NodeReadlinker = (*node)(nil)
	_ fs.NodeStatfser   = (*node)(nil)
)

func fillAttr(a filerestore.Attr, out *fuse.Attr) {
	out.Ino = uint64(a.Ino)
	out.Mode = a.Mode
	out.Nlink = a.Links
	out.Owner = fuse.Owner{Uid: a.UID, Gid: a.GID}
	out.Size = uint64(a.Size)
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 4096
	out.Rdev = a.Rdev
	out.SetTimes(&a.Atime, &a.Mtime, &a.Ctime)
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	a, err := n.fsys.Attr(n.ino)
	if err != nil {
		return errno(n.log, fmt.Sprintf("inode %d", n.ino), err)
	}
	fillAttr(a, &out.Attr)
	return 0
}

// dir returns the entries of directory n by name, reading it once.
func (n *node) dir() (map[string]filerestore.DirEntry, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.entries != nil {
		return n.entries, nil
	}
	ents, err := n.fsys.ReadDir(n.ino)
	if err != nil {
		return nil, err
	}
	m := make(map[string]filerestore.DirEntry, len(ents))
	for _, e := range ents {
		if _, dup := m[e.Name]; !dup && n.nameOK(e) {
			m[e.Name] = e
		}
	}
	n.entries = m
	return m, nil
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ents, err := n.dir()
	if err != nil {
		return nil, errno(n.log, fmt.Sprintf("directory inode %d", n.ino), err)
	}
	e, ok := ents[name]
	if !ok {
		return nil, syscall.ENOENT
	}
	a, err := n.fsys.Attr(e.Ino)
	if err != nil {
		return nil, errno(n.log, fmt.Sprintf("inode %d (%q in directory inode %d)", e.Ino, name, n.ino), err)
	}
	fillAttr(a, &out.Attr)
	child := &node{fsys: n.fsys, ino: e.Ino, log: n.log}
	return n.NewInode(ctx, child, fs.StableAttr{Mode: a.Mode & filerestore.ModeType, Ino: uint64(e.Ino)}), 0
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	ents, err := n.fsys.ReadDir(n.ino)
	if err != nil {
		return nil, errno(n.log, fmt.Sprintf("directory inode %d", n.ino), err)
	}
	list := make([]fuse.DirEntry, 0, len(ents))
	seen := make(map[string]bool, len(ents))
	for _, e := range ents {
		if seen[e.Name] || !n.nameOK(e) {
			continue
		}
		seen[e.Name] = true
		mode := e.Type
		if mode == 0 {
			a, err := n.fsys.Attr(e.Ino)
			if err != nil {
				return nil, errno(n.log, fmt.Sprintf("inode %d", e.Ino), err)
			}
			mode = a.Mode & filerestore.ModeType
		}
		list = append(list, fuse.DirEntry{Name: e.Name, Ino: uint64(e.Ino), Mode: mode})
	}
	return fs.NewListDirStream(list), 0
}

// nameOK reports whether a directory entry's name can be served: crafted
// images can hold names with "/" or NUL, which no path can name (the
// kernel fails a whole listing that has one); those are left out, logged.
func (n *node) nameOK(e filerestore.DirEntry) bool {
	if strings.ContainsAny(e.Name, "/\x00") {
		n.log.Warn("entry with an unusable name left out", "directory", "/"+n.Path(nil), "name", fmt.Sprintf("%q", e.Name), "inode", e.Ino)
		return false
	}
	return true
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	t, err := n.fsys.ReadLink(n.ino)
	if err != nil {
		return nil, errno(n.log, fmt.Sprintf("symlink inode %d", n.ino), err)
	}
	return []byte(t), 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&writeFlags != 0 {
		return nil, 0, syscall.EROFS
	}
	f, err := n.fsys.OpenFile(n.ino)
	if err != nil {
		return nil, 0, errno(n.log, fmt.Sprintf("open inode %d", n.ino), err)
	}
	// the data never changes: the page cache may keep it across opens
	return &handle{r: f, log: n.log, what: fmt.Sprintf("/%s (inode %d)", n.Path(nil), n.ino)}, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	s := n.fsys.Statfs()
	out.Blocks = s.Blocks
	out.Bfree = s.FreeBlocks
	out.Bavail = 0 // read-only
	out.Files = s.Inodes
	out.Ffree = s.FreeInodes
	out.Bsize = uint32(s.BlockSize)
	out.Frsize = uint32(s.BlockSize)
	out.NameLen = 255
	return 0
}

// handle is an open file: reads go to r.
type handle struct {
	r    io.ReaderAt
	log  *slog.Logger
	what string
}

var _ fs.FileReader = (*handle)(nil)

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := h.r.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, errno(h.log, fmt.Sprintf("%s at offset %d", h.what, off), err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// rawDir is the root of a raw mount.
type rawDir struct {
	fs.Inode
	files []RawFile
	log   *slog.Logger
	mtime time.Time
}

var _ fs.NodeOnAdder = (*rawDir)(nil)

func (d *rawDir) OnAdd(ctx context.Context) {
	for _, f := range d.files {
		ch := d.NewPersistentInode(ctx, &rawFile{f: f, log: d.log, mtime: d.mtime}, fs.StableAttr{Mode: syscall.S_IFREG})
		d.AddChild(f.Name, ch, false)
	}
}

func (d *rawDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	out.SetTimes(&d.mtime, &d.mtime, &d.mtime)
	return 0
}

// rawFile is a disk image or partition file of a raw mount.
type rawFile struct {
	fs.Inode
	f     RawFile
	log   *slog.Logger
	mtime time.Time
}

var (
	_ fs.NodeGetattrer = (*rawFile)(nil)
	_ fs.NodeOpener    = (*rawFile)(nil)
)

func (r *rawFile) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	if r.f.W != nil {
		out.Mode |= 0o200
	}
	out.Size = uint64(r.f.Size)
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 1 << 16
	out.Nlink = 1
	out.SetTimes(&r.mtime, &r.mtime, &r.mtime)
	return 0
}

func (r *rawFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	switch {
	case flags&writeFlags == 0:
	case r.f.W == nil:
		return nil, 0, syscall.EROFS
	case flags&(syscall.O_TRUNC|syscall.O_APPEND) != 0:
		return nil, 0, syscall.EPERM
	default:
		return &rwHandle{handle: handle{r: &bounded{r: r.f.R, size: r.f.Size}, log: r.log, what: r.f.Name}, w: r.f.W, size: r.f.Size}, fuse.FOPEN_KEEP_CACHE, 0
	}
	return &handle{r: &bounded{r: r.f.R, size: r.f.Size}, log: r.log, what: r.f.Name}, fuse.FOPEN_KEEP_CACHE, 0
}

// rwHandle is a raw file opened for writing: writes go to its overlay.
type rwHandle struct {
	handle
	w    io.WriterAt
	size int64
}

var (
	_ fs.FileWriter  = (*rwHandle)(nil)
	_ fs.FileFsyncer = (*rwHandle)(nil)
	_ fs.FileFlusher = (*rwHandle)(nil)
)

func (h *rwHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if off < 0 || off+int64(len(data)) > h.size {
		return 0, syscall.ENOSPC
	}
	n, err := h.w.WriteAt(data, off)
	if err != nil {
		return uint32(n), errno(h.log, fmt.Sprintf("write %s at offset %d", h.what, off), err)
	}
	return uint32(n), 0
}

// Fsync succeeds: the overlay is private and lives as long as the mount.
func (h *rwHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno { return 0 }

func (h *rwHandle) Flush(ctx context.Context) syscall.Errno { return 0 }

// bounded cuts reads off at size.
type bounded struct {
	r    io.ReaderAt
	size int64
}

func (b *bounded) ReadAt(p []byte, off int64) (int, error) {
	if off >= b.size {
		return 0, io.EOF
	}
	if rest := b.size - off; int64(len(p)) > rest {
		n, err := b.r.ReadAt(p[:rest], off)
		if err == nil {
			err = io.EOF
		}
		return n, err
	}
	return b.r.ReadAt(p, off)
}
