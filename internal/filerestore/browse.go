package filerestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"time"
)

// FS is a read-only ext2/3/4 file system opened for browsing by inode
// number (what a FUSE mount needs). It keeps no state besides the
// superblock, so it is safe for concurrent use when its io.ReaderAt is.
type FS struct{ f *fsys }

// Open reads the superblock of the ext2/3/4 file system on r (size bytes).
func Open(r io.ReaderAt, size int64) (*FS, error) {
	f, err := openExt4(r, size)
	if err != nil {
		return nil, err
	}
	return &FS{f: f}, nil
}

// RootIno is the inode number of the root directory.
const RootIno = rootIno

// Attr is an inode's metadata. Mode holds the Linux st_mode bits (type and
// permissions) as ext4 stores them.
type Attr struct {
	Ino                 uint32
	Mode                uint32
	Links               uint32
	UID, GID            uint32
	Size                int64
	Atime, Mtime, Ctime time.Time
	// Rdev is the device number of a character or block device in the
	// kernel's new_encode_dev form (what FUSE takes): minor's low 8 bits,
	// then 12 bits of major, then minor's high bits.
	Rdev uint32
}

// Linux file type bits of Attr.Mode.
const (
	ModeType  = modeFmt
	ModeDir   = modeDir
	ModeReg   = modeReg
	ModeLink  = modeLink
	ModeFIFO  = 0x1000
	ModeChar  = 0x2000
	ModeBlock = 0x6000
	ModeSock  = 0xC000
)

// Statfs describes the file system as a whole.
type Statfs struct {
	BlockSize  int64
	Blocks     uint64
	FreeBlocks uint64
	Inodes     uint64
	FreeInodes uint64
	Label      string
}

// Statfs returns the superblock's counts.
func (x *FS) Statfs() Statfs {
	f := x.f
	return Statfs{BlockSize: f.bs, Blocks: f.blocks, FreeBlocks: min(f.freeBlocks, f.blocks),
		Inodes: uint64(f.inodes), FreeInodes: uint64(min(f.freeInodes, f.inodes)), Label: f.label}
}

// Journal describes the file system's journal and whether it needs
// recovery (this package reads the file system without replaying it).
func (x *FS) Journal() Journal { return x.f.journal }

// ReadJournal reads what the ext2/3/4 file system on r (size bytes) records
// of its journal.
func ReadJournal(r io.ReaderAt, size int64) (Journal, error) {
	f, err := openExt4(r, size)
	if err != nil {
		return Journal{}, err
	}
	return f.journal, nil
}

// Attr reads inode ino's metadata.
func (x *FS) Attr(ino uint32) (Attr, error) {
	in, err := x.f.inode(ino)
	if err != nil {
		return Attr{}, err
	}
	return attrOf(in), nil
}

func attrOf(in *inode) Attr {
	a := Attr{Ino: in.ino, Mode: uint32(in.mode), Links: uint32(in.links), UID: in.uid, GID: in.gid,
		Size: in.size, Atime: in.atime, Mtime: in.mtime, Ctime: in.ctime}
	if t := a.Mode & ModeType; t == ModeChar || t == ModeBlock {
		le := func(b []byte) uint32 { return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24 }
		// the old 16-bit encoding in i_block[0], else the new one in
		// i_block[1]; both read the same in the new encoding
		if old := le(in.block[0:]); old != 0 {
			a.Rdev = old & 0xffff
		} else {
			a.Rdev = le(in.block[4:])
		}
	}
	if a.Mode&ModeType != ModeReg && a.Mode&ModeType != ModeDir && a.Mode&ModeType != ModeLink {
		a.Size = 0
	}
	return a
}

// DirEntry is one entry of a directory.
type DirEntry struct {
	Name string
	Ino  uint32
	// Type holds the Linux file type bits (ModeDir, ModeReg, ...), or 0
	// when the directory entry records no type (read the inode then).
	Type uint32
}

// dirent file type codes, to Linux mode type bits.
var ftypeMode = [8]uint32{0, ModeReg, ModeDir, ModeChar, ModeBlock, ModeFIFO, ModeSock, ModeLink}

// ErrNotDir is returned for a directory operation on another kind of inode.
var ErrNotDir = errors.New("not a directory")

// ReadDir lists directory ino, without "." and "..".
func (x *FS) ReadDir(ino uint32) ([]DirEntry, error) {
	in, err := x.f.inode(ino)
	if err != nil {
		return nil, err
	}
	if !in.isDir() {
		return nil, fmt.Errorf("inode %d: %w", ino, ErrNotDir)
	}
	var out []DirEntry
	err = x.f.readDir(in, func(e dirent) error {
		if e.name == "." || e.name == ".." {
			return nil
		}
		if e.ino > x.f.inodes {
			return fmt.Errorf("directory inode %d: %w: entry %q points at inode %d of %d", ino, ErrCorruptFS, e.name, e.ino, x.f.inodes)
		}
		d := DirEntry{Name: e.name, Ino: e.ino}
		if int(e.ftype) < len(ftypeMode) {
			d.Type = ftypeMode[e.ftype]
		}
		out = append(out, d)
		return nil
	})
	return out, err
}

// ReadLink returns the target of symlink ino.
func (x *FS) ReadLink(ino uint32) (string, error) {
	in, err := x.f.inode(ino)
	if err != nil {
		return "", err
	}
	if !in.isLink() {
		return "", fmt.Errorf("inode %d: %w: not a symlink", ino, ErrCorruptFS)
	}
	return x.f.readLink(in)
}

// File is an open regular file: its block map is read once.
type File struct {
	f    *fsys
	in   *inode
	exts []extent
}

// OpenFile opens regular file ino for reading.
func (x *FS) OpenFile(ino uint32) (*File, error) {
	in, err := x.f.inode(ino)
	if err != nil {
		return nil, err
	}
	if !in.isReg() {
		return nil, fmt.Errorf("inode %d: not a regular file (mode %06o)", ino, in.mode)
	}
	exts, err := x.f.extents(in)
	if err != nil {
		return nil, err
	}
	return &File{f: x.f, in: in, exts: exts}, nil
}

// Size is the file's length in bytes.
func (fl *File) Size() int64 { return fl.in.size }

// ReadAt reads the file's bytes at off; holes and unwritten extents read as
// zeros. It returns io.EOF when p reaches past the end.
func (fl *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("inode %d: negative offset %d", fl.in.ino, off)
	}
	if off >= fl.in.size {
		return 0, io.EOF
	}
	n := len(p)
	if rest := fl.in.size - off; int64(n) > rest {
		n = int(rest)
	}
	q := p[:n]
	clear(q)
	end := off + int64(n)
	bs := fl.f.bs
	// the first extent that ends after off
	k := sort.Search(len(fl.exts), func(i int) bool {
		e := fl.exts[i]
		return int64(e.lblk+e.len)*bs > off
	})
	for ; k < len(fl.exts); k++ {
		e := fl.exts[k]
		es := int64(e.lblk) * bs
		if es >= end {
			break
		}
		if e.unwritten {
			continue
		}
		ee := es + int64(e.len)*bs
		s, t := max(es, off), min(ee, end)
		phys := int64(e.pblk)*bs + (s - es)
		if err := fl.f.readAt(q[s-off:t-off], phys, fmt.Sprintf("inode %d data at offset %d", fl.in.ino, s)); err != nil {
			return 0, err
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Lookup returns the inode of name in directory dir, or an error wrapping
// ErrNotFound.
func (x *FS) Lookup(dir uint32, name string) (uint32, error) {
	in, err := x.f.inode(dir)
	if err != nil {
		return 0, err
	}
	if !in.isDir() {
		return 0, fmt.Errorf("inode %d: %w", dir, ErrNotDir)
	}
	ino, err := x.f.find(in, name)
	if err != nil {
		return 0, err
	}
	if ino == 0 {
		return 0, fmt.Errorf("%w: %q in directory inode %d", ErrNotFound, name, dir)
	}
	return ino, nil
}

// LookupPath resolves path p (made absolute and clean; ".." is resolved
// lexically and stops at the root) to an inode number, as Extract does:
// symlinks in directory components are followed inside the file system,
// never on the host, at most MaxLinkHops of them; a symlink in the last
// component is followed only when followLast is set. A missing entry is
// an error wrapping ErrNotFound.
func (x *FS) LookupPath(ctx context.Context, p string, followLast bool) (uint32, error) {
	return x.f.lookupFollow(ctx, path.Clean("/"+p), followLast)
}

// ErrStop, returned by a ReadDirFunc callback, ends the listing early
// without an error.
var ErrStop = errors.New("stop listing")

// ReadDirFunc calls fn for each entry of directory ino, without "." and
// "..", in the order the directory holds them, reading one block at a
// time (so a caller that stops early never holds a whole directory); fn
// returning ErrStop ends it with a nil error, any other error ends it with
// that error.
func (x *FS) ReadDirFunc(ino uint32, fn func(DirEntry) error) error {
	in, err := x.f.inode(ino)
	if err != nil {
		return err
	}
	if !in.isDir() {
		return fmt.Errorf("inode %d: %w", ino, ErrNotDir)
	}
	err = x.f.readDir(in, func(e dirent) error {
		if e.name == "." || e.name == ".." {
			return nil
		}
		if e.ino > x.f.inodes {
			return fmt.Errorf("directory inode %d: %w: entry %q points at inode %d of %d", ino, ErrCorruptFS, e.name, e.ino, x.f.inodes)
		}
		d := DirEntry{Name: e.name, Ino: e.ino}
		if int(e.ftype) < len(ftypeMode) {
			d.Type = ftypeMode[e.ftype]
		}
		return fn(d)
	})
	if errors.Is(err, ErrStop) {
		return nil
	}
	return err
}
