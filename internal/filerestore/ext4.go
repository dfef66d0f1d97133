package filerestore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// This file is a minimal read-only ext2/3/4 reader: superblock, group
// descriptors (32 and 64 bytes), inodes, extent trees, ext2/3 block maps,
// directories (linear and htree, both read linearly) and symlinks. It reads
// only the blocks it needs through an io.ReaderAt. It does not replay the
// journal: a backup of a frozen or cleanly unmounted file system needs none;
// one that does (a crash-consistent backup whose journal holds transactions)
// is recognised and reported (Journal), and read as the main area has it.

// ErrNotExt4 is returned for a disk that holds no ext2/3/4 file system.
var ErrNotExt4 = errors.New("not an ext2/3/4 file system")

// ErrUnsupported is returned for ext4 features this reader cannot read.
var ErrUnsupported = errors.New("unsupported ext4 feature")

const (
	rootIno = 2

	incompatFiletype   = 0x2
	incompatJournalDev = 0x8
	incompatMetaBG     = 0x10
	incompatExtents    = 0x40
	incompat64bit      = 0x80
	incompatFlexBG     = 0x200
	incompatEAInode    = 0x400
	incompatDirData    = 0x1000
	incompatCsumSeed   = 0x2000
	incompatLargeDir   = 0x4000
	incompatInlineData = 0x8000
	incompatEncrypt    = 0x10000
	incompatCasefold   = 0x20000
	incompatRecover    = 0x4
	incompatMMP        = 0x100

	flagEncrypt    = 0x800
	flagExtents    = 0x80000
	flagInlineData = 0x10000000

	modeFmt  = 0xF000
	modeDir  = 0x4000
	modeReg  = 0x8000
	modeLink = 0xA000

	maxExtentDepth = 5
)

// incompatKnown are the incompat features whose on-disk layout this reader
// understands (RECOVER only means the journal was not replayed).
const incompatKnown = incompatFiletype | incompatRecover | incompatExtents | incompat64bit |
	incompatFlexBG | incompatMMP | incompatCsumSeed | incompatLargeDir | incompatEAInode |
	incompatInlineData | incompatEncrypt | incompatCasefold

type fsys struct {
	r         io.ReaderAt
	size      int64
	bs        int64 // block size
	blocks    uint64
	ipg       uint32 // inodes per group
	inodes    uint32
	inodeSize int64
	descSize  int64
	gdtOff    int64 // byte offset of the group descriptor table
	groups    uint32
	fileType  bool // directory entries carry a file type byte
	is64      bool

	// for statfs and messages
	freeBlocks uint64
	freeInodes uint32
	label      string

	journal Journal
}

// openExt4 reads the superblock of the file system on r.
func openExt4(r io.ReaderAt, size int64) (*fsys, error) {
	if size < 2048 {
		return nil, fmt.Errorf("%w: the disk is only %d bytes, too small to hold a superblock at byte 1024", ErrNotExt4, size)
	}
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, 1024); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: the disk is only %d bytes", ErrNotExt4, size)
		}
		return nil, fmt.Errorf("read superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != 0xEF53 {
		if kind := sniff(r); kind != "" {
			return nil, fmt.Errorf("%w: the disk holds %s", ErrNotExt4, kind)
		}
		return nil, fmt.Errorf("%w: no ext superblock magic at offset 1080", ErrNotExt4)
	}
	f := &fsys{r: r, size: size}
	logBS := le.Uint32(sb[0x18:])
	if logBS > 6 {
		return nil, fmt.Errorf("%w: superblock: block size 2^(10+%d)", ErrNotExt4, logBS)
	}
	f.bs = 1024 << logBS
	incompat := le.Uint32(sb[0x60:])
	if incompat&incompatJournalDev != 0 {
		return nil, fmt.Errorf("%w: this is an external journal device, not a file system", ErrNotExt4)
	}
	if extra := incompat &^ incompatKnown; extra != 0 {
		names := ""
		if extra&incompatMetaBG != 0 {
			names = " (meta_bg)"
		}
		if extra&incompatDirData != 0 {
			names = " (dirdata)"
		}
		return nil, fmt.Errorf("%w: incompatible features 0x%x%s", ErrUnsupported, extra, names)
	}
	f.fileType = incompat&incompatFiletype != 0
	f.is64 = incompat&incompat64bit != 0
	f.blocks = uint64(le.Uint32(sb[0x4:]))
	if f.is64 {
		f.blocks |= uint64(le.Uint32(sb[0x150:])) << 32
	}
	f.inodes = le.Uint32(sb[0x0:])
	f.ipg = le.Uint32(sb[0x28:])
	bpg := le.Uint32(sb[0x20:])
	first := uint64(le.Uint32(sb[0x14:]))
	f.inodeSize = 128
	if le.Uint32(sb[0x4C:]) >= 1 {
		f.inodeSize = int64(le.Uint16(sb[0x58:]))
	}
	f.descSize = 32
	if f.is64 {
		f.descSize = int64(le.Uint16(sb[0xFE:]))
	}
	switch {
	case f.ipg == 0 || bpg == 0 || f.blocks <= first:
		return nil, fmt.Errorf("%w: superblock: %d inodes and %d blocks per group, %d blocks", ErrNotExt4, f.ipg, bpg, f.blocks)
	case f.inodeSize < 128 || f.inodeSize > f.bs || f.inodeSize&(f.inodeSize-1) != 0:
		return nil, fmt.Errorf("%w: superblock: inode size %d", ErrNotExt4, f.inodeSize)
	case f.descSize < 32 || f.descSize > 1024 || (f.is64 && f.descSize < 64):
		return nil, fmt.Errorf("%w: superblock: group descriptor size %d", ErrNotExt4, f.descSize)
	}
	f.groups = uint32((f.blocks - first + uint64(bpg) - 1) / uint64(bpg))
	f.gdtOff = int64(first+1) * f.bs
	f.freeBlocks = uint64(le.Uint32(sb[0xC:]))
	if f.is64 {
		f.freeBlocks |= uint64(le.Uint32(sb[0x158:])) << 32
	}
	f.freeInodes = le.Uint32(sb[0x10:])
	f.label = strings.TrimRight(string(sb[0x78:0x88]), "\x00")
	f.journal = f.readJournal(sb, le.Uint32(sb[0x5C:]), incompat)
	return f, nil
}

// IsXFS reports whether r starts with an XFS superblock: such a file system
// is read by loop-mounting it (internal/loopfs), not by this package.
func IsXFS(r io.ReaderAt) bool {
	b := make([]byte, 4)
	n, _ := r.ReadAt(b, 0)
	return n == 4 && string(b) == "XFSB"
}

// sniff names a few other things a disk may hold, for a clearer error.
func sniff(r io.ReaderAt) string {
	b := make([]byte, 1024)
	n, _ := r.ReadAt(b, 0)
	b = b[:n]
	switch {
	case len(b) >= 4 && string(b[:4]) == "XFSB":
		return "an XFS file system (this reader does not read it; raksha loop-mounts XFS where the kernel can)"
	case len(b) >= 1024 && string(b[512:520]) == "EFI PART":
		return "a GPT partition table (open one of its partitions: OpenVolume)"
	case len(b) >= 512 && b[510] == 0x55 && b[511] == 0xAA:
		return "an MBR partition table or boot sector (open one of its partitions: OpenVolume)"
	case len(b) >= 1024 && string(b[0x3F6:0x400]) == "SWAPSPACE2":
		return "Linux swap"
	case len(b) >= 4 && string(b[:4]) == "LUKS":
		return "a LUKS encrypted volume"
	case len(b) >= 1024 && string(b[512+24:512+32]) == "LVM2 001":
		return "an LVM physical volume"
	}
	return ""
}

func (f *fsys) readAt(p []byte, off int64, what string) error {
	if off < 0 || off+int64(len(p)) > f.size {
		return fmt.Errorf("%s: %w: bytes %d-%d outside the %d-byte disk", what, ErrCorruptFS, off, off+int64(len(p)), f.size)
	}
	if _, err := f.r.ReadAt(p, off); err != nil && !(errors.Is(err, io.EOF) && len(p) > 0) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// ErrCorruptFS marks file system structures that make no sense.
var ErrCorruptFS = errors.New("corrupt file system")

type inode struct {
	ino                 uint32
	mode                uint16
	flags               uint32
	size                int64
	uid, gid            uint32
	links               uint16
	atime, mtime, ctime time.Time
	block               [60]byte
}

func (in *inode) isDir() bool  { return in.mode&modeFmt == modeDir }
func (in *inode) isReg() bool  { return in.mode&modeFmt == modeReg }
func (in *inode) isLink() bool { return in.mode&modeFmt == modeLink }

func (f *fsys) inode(ino uint32) (*inode, error) {
	if ino == 0 || ino > f.inodes {
		return nil, fmt.Errorf("inode %d: %w: outside 1-%d", ino, ErrCorruptFS, f.inodes)
	}
	g := (ino - 1) / f.ipg
	idx := int64((ino - 1) % f.ipg)
	if g >= f.groups {
		return nil, fmt.Errorf("inode %d: %w: group %d of %d", ino, ErrCorruptFS, g, f.groups)
	}
	desc := make([]byte, f.descSize)
	if err := f.readAt(desc, f.gdtOff+int64(g)*f.descSize, fmt.Sprintf("group descriptor %d", g)); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	table := uint64(le.Uint32(desc[0x8:]))
	if f.is64 {
		table |= uint64(le.Uint32(desc[0x28:])) << 32
	}
	if table == 0 || table >= f.blocks {
		return nil, fmt.Errorf("inode %d: %w: group %d inode table at block %d", ino, ErrCorruptFS, g, table)
	}
	raw := make([]byte, f.inodeSize)
	if err := f.readAt(raw, int64(table)*f.bs+idx*f.inodeSize, fmt.Sprintf("inode %d", ino)); err != nil {
		return nil, err
	}
	in := &inode{ino: ino, mode: le.Uint16(raw[0:]), flags: le.Uint32(raw[0x20:])}
	in.size = int64(uint64(le.Uint32(raw[0x4:])) | uint64(le.Uint32(raw[0x6C:]))<<32)
	if in.size < 0 {
		return nil, fmt.Errorf("inode %d: %w: size %d", ino, ErrCorruptFS, in.size)
	}
	copy(in.block[:], raw[0x28:0x28+60])
	in.uid = uint32(le.Uint16(raw[0x2:])) | uint32(le.Uint16(raw[0x78:]))<<16
	in.gid = uint32(le.Uint16(raw[0x18:])) | uint32(le.Uint16(raw[0x7A:]))<<16
	in.links = le.Uint16(raw[0x1A:])
	var extra int64
	if f.inodeSize > 128 {
		extra = int64(le.Uint16(raw[0x80:]))
		if 128+extra > f.inodeSize {
			extra = 0
		}
	}
	// a timestamp: 32 signed bits of seconds, and in large inodes an extra
	// word with 2 more bits of seconds and 30 of nanoseconds
	stamp := func(at, extraAt int) time.Time {
		sec := int64(int32(le.Uint32(raw[at:])))
		var nsec int64
		if extra >= int64(extraAt-128+4) {
			x := le.Uint32(raw[extraAt:])
			sec += int64(x&3) << 32
			nsec = int64(x >> 2)
			if nsec > 999999999 {
				nsec = 0
			}
		}
		return time.Unix(sec, nsec)
	}
	in.ctime = stamp(0xC, 0x84)
	in.mtime = stamp(0x10, 0x88)
	in.atime = stamp(0x8, 0x8C)
	return in, nil
}

// extent maps length blocks at logical block lblk to physical block pblk;
// unwritten extents read as zeros.
type extent struct {
	lblk, pblk, len uint64
	unwritten       bool
}

// extents returns an inode's block mapping in logical order; it maps no
// more blocks than the disk holds.
func (f *fsys) extents(in *inode) ([]extent, error) {
	exts, err := f.mapping(in)
	if err != nil {
		return nil, err
	}
	if err := f.checkMapped(in, exts); err != nil {
		return nil, err
	}
	return exts, nil
}

// mapping reads an inode's extent tree or block map.
func (f *fsys) mapping(in *inode) ([]extent, error) {
	switch {
	case in.flags&flagEncrypt != 0:
		return nil, fmt.Errorf("inode %d: %w: encrypted", in.ino, ErrUnsupported)
	case in.flags&flagInlineData != 0:
		return nil, fmt.Errorf("inode %d: %w: inline data", in.ino, ErrUnsupported)
	case in.flags&flagExtents != 0:
		var out []extent
		seen := map[uint64]bool{}
		if err := f.walkExtents(in, in.block[:], -1, seen, &out); err != nil {
			return nil, err
		}
		return out, nil
	default:
		return f.blockMap(in)
	}
}

// walkExtents appends the extents of the tree node in b; depth is the depth
// the node must have (-1 for the root, which sets it). seen holds the tree
// blocks read so far: a block met twice means a corrupt, looping tree.
func (f *fsys) walkExtents(in *inode, b []byte, depth int, seen map[uint64]bool, out *[]extent) error {
	le := binary.LittleEndian
	if len(b) < 12 || le.Uint16(b[0:]) != 0xF30A {
		return fmt.Errorf("inode %d: %w: bad extent header", in.ino, ErrCorruptFS)
	}
	entries := int(le.Uint16(b[2:]))
	d := int(le.Uint16(b[6:]))
	if (depth >= 0 && d != depth) || d > maxExtentDepth || 12+12*entries > len(b) {
		return fmt.Errorf("inode %d: %w: extent node depth %d (want %d), %d entries", in.ino, ErrCorruptFS, d, depth, entries)
	}
	for k := range entries {
		e := b[12+12*k:]
		lblk := uint64(le.Uint32(e[0:]))
		if d == 0 {
			n := uint64(le.Uint16(e[4:]))
			unwritten := false
			if n > 32768 {
				n -= 32768
				unwritten = true
			}
			p := uint64(le.Uint16(e[6:]))<<32 | uint64(le.Uint32(e[8:]))
			if p+n > f.blocks {
				return fmt.Errorf("inode %d: %w: extent at block %d+%d beyond %d blocks", in.ino, ErrCorruptFS, p, n, f.blocks)
			}
			if l := len(*out); l > 0 && (*out)[l-1].lblk+(*out)[l-1].len > lblk {
				return fmt.Errorf("inode %d: %w: extents overlap or out of order at logical block %d", in.ino, ErrCorruptFS, lblk)
			}
			*out = append(*out, extent{lblk: lblk, pblk: p, len: n, unwritten: unwritten})
			continue
		}
		child := uint64(le.Uint16(e[8:]))<<32 | uint64(le.Uint32(e[4:]))
		if child == 0 || child >= f.blocks || seen[child] {
			return fmt.Errorf("inode %d: %w: extent index points at block %d", in.ino, ErrCorruptFS, child)
		}
		seen[child] = true
		blk := make([]byte, f.bs)
		if err := f.readAt(blk, int64(child)*f.bs, fmt.Sprintf("inode %d extent block %d", in.ino, child)); err != nil {
			return err
		}
		if err := f.walkExtents(in, blk, d-1, seen, out); err != nil {
			return err
		}
	}
	return nil
}

// diskBlocks is the number of blocks the disk holds (not the superblock's
// claim).
func (f *fsys) diskBlocks() uint64 { return uint64((f.size + f.bs - 1) / f.bs) }

// checkMapped fails when the extents of an inode map more blocks than the
// disk holds: extents of a corrupt or hostile inode that map the same
// blocks over and over would make reading it cost many times the disk.
func (f *fsys) checkMapped(in *inode, exts []extent) error {
	var n uint64
	for _, e := range exts {
		n += e.len
	}
	if n > f.diskBlocks() {
		return fmt.Errorf("inode %d: %w: its extents map %d blocks, more than the disk's %d", in.ino, ErrCorruptFS, n, f.diskBlocks())
	}
	return nil
}

// blockMap reads the ext2/3 direct and indirect block pointers of an inode,
// merged into extents.
func (f *fsys) blockMap(in *inode) ([]extent, error) {
	le := binary.LittleEndian
	nblocks := uint64((in.size + f.bs - 1) / f.bs)
	per := uint64(f.bs / 4)
	var out []extent
	seen := map[uint64]bool{}
	add := func(l, p uint64) error {
		if p == 0 {
			return nil // a hole
		}
		if p >= f.blocks {
			return fmt.Errorf("inode %d: %w: block pointer %d beyond %d blocks", in.ino, ErrCorruptFS, p, f.blocks)
		}
		if n := len(out); n > 0 && out[n-1].lblk+out[n-1].len == l && out[n-1].pblk+out[n-1].len == p {
			out[n-1].len++
			return nil
		}
		out = append(out, extent{lblk: l, pblk: p, len: 1})
		return nil
	}
	var walk func(blk uint64, level int, base uint64) error
	walk = func(blk uint64, level int, base uint64) error {
		if blk == 0 || base >= nblocks {
			return nil
		}
		if blk >= f.blocks || seen[blk] {
			return fmt.Errorf("inode %d: %w: indirect block %d beyond %d blocks or used twice", in.ino, ErrCorruptFS, blk, f.blocks)
		}
		seen[blk] = true
		buf := make([]byte, f.bs)
		if err := f.readAt(buf, int64(blk)*f.bs, fmt.Sprintf("inode %d indirect block %d", in.ino, blk)); err != nil {
			return err
		}
		span := uint64(1)
		for range level - 1 {
			span *= per
		}
		for k := range per {
			p := uint64(le.Uint32(buf[4*k:]))
			l := base + k*span
			if l >= nblocks {
				break
			}
			var err error
			if level == 1 {
				err = add(l, p)
			} else {
				err = walk(p, level-1, l)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	for k := range uint64(12) {
		if k >= nblocks {
			return out, nil
		}
		if err := add(k, uint64(le.Uint32(in.block[4*k:]))); err != nil {
			return nil, err
		}
	}
	base := uint64(12)
	span := per
	for level := 1; level <= 3; level++ {
		if err := walk(uint64(le.Uint32(in.block[4*(11+level):])), level, base); err != nil {
			return nil, err
		}
		base += span
		span *= per
	}
	return out, nil
}

// readData reads p at byte offset off of a file with the given extents
// (holes and unwritten extents read as zeros).
func (f *fsys) readData(in *inode, exts []extent, p []byte, off int64) error {
	clear(p)
	end := off + int64(len(p))
	for _, e := range exts {
		es := int64(e.lblk) * f.bs
		ee := es + int64(e.len)*f.bs
		if ee <= off || es >= end || e.unwritten {
			continue
		}
		s := max(es, off)
		t := min(ee, end)
		phys := int64(e.pblk)*f.bs + (s - es)
		if err := f.readAt(p[s-off:t-off], phys, fmt.Sprintf("inode %d data at offset %d", in.ino, s)); err != nil {
			return err
		}
	}
	return nil
}

// dirent is one directory entry.
type dirent struct {
	name  string
	ino   uint32
	ftype byte // 0 when the file system records no type in its entries
}

// readDir calls fn for every entry of directory in ("." and ".." included),
// one block in memory at a time. Htree directories are read linearly: their
// index blocks look like empty entries.
func (f *fsys) readDir(in *inode, fn func(dirent) error) error {
	exts, err := f.extents(in)
	if err != nil {
		return err
	}
	blk := make([]byte, f.bs)
	for _, e := range exts {
		for k := uint64(0); k < e.len; k++ {
			off := int64(e.lblk+k) * f.bs
			if off >= in.size {
				return nil
			}
			if e.unwritten {
				continue
			}
			if err := f.readAt(blk, int64(e.pblk+k)*f.bs, fmt.Sprintf("directory inode %d block at offset %d", in.ino, off)); err != nil {
				return err
			}
			if err := f.dirBlock(in, blk, off, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// dirBlock parses the entries of one directory block.
func (f *fsys) dirBlock(in *inode, blk []byte, off int64, fn func(dirent) error) error {
	le := binary.LittleEndian
	for pos := 0; pos+8 <= len(blk); {
		ino := le.Uint32(blk[pos:])
		rec := int(le.Uint16(blk[pos+4:]))
		nameLen := int(blk[pos+6])
		if !f.fileType {
			nameLen |= int(blk[pos+7]) << 8
		}
		if rec < 8 || rec%4 != 0 || pos+rec > len(blk) || 8+nameLen > rec {
			return fmt.Errorf("directory inode %d block at offset %d: %w: entry at %d has length %d, name length %d",
				in.ino, off, ErrCorruptFS, pos, rec, nameLen)
		}
		if ino != 0 && nameLen > 0 {
			var ft byte
			if f.fileType {
				ft = blk[pos+7]
			}
			if err := fn(dirent{name: string(blk[pos+8 : pos+8+nameLen]), ino: ino, ftype: ft}); err != nil {
				return err
			}
		}
		pos += rec
	}
	return nil
}

// readLink returns a symlink's target.
func (f *fsys) readLink(in *inode) (string, error) {
	if in.size > 4096 {
		return "", fmt.Errorf("symlink inode %d: %w: target of %d bytes", in.ino, ErrCorruptFS, in.size)
	}
	if in.flags&(flagExtents|flagInlineData) == 0 && in.size < 60 || in.flags&flagInlineData != 0 && in.size < 60 {
		return string(in.block[:in.size]), nil
	}
	exts, err := f.extents(in)
	if err != nil {
		return "", err
	}
	p := make([]byte, in.size)
	if err := f.readData(in, exts, p, 0); err != nil {
		return "", err
	}
	return string(p), nil
}
