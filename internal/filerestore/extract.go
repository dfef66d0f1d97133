// Package filerestore pulls single files and directory trees out of a disk
// image without restoring the whole disk: it reads an ext2/3/4 file system
// through an io.ReaderAt (such as a repo.DiskReader, which fetches only the
// chunks a read touches) and writes what it finds under a target directory,
// never outside it.
package filerestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"
)

// ErrNotFound is returned when the path asked for is not in the file system.
var ErrNotFound = errors.New("no such file or directory in the backup")

// MaxDepth bounds directory nesting (crafted images could nest forever);
// every extraction of a backup's tree holds to it.
const MaxDepth = 512

// MaxLinkHops bounds symlinks followed while looking up the requested path.
const MaxLinkHops = 40

// CopyPiece is the most file data an extraction holds in memory at once.
const CopyPiece = 1 << 20

// ExtractOptions say what an extraction may write. The zero value is the
// safe default.
type ExtractOptions struct {
	// KeepSpecialBits keeps the setuid, setgid and sticky bits of what is
	// written. By default they are stripped (and counted in the Stats'
	// warnings): the files of a tenant's disk land owned by whoever runs
	// the restore, root on a worker, and a setuid file would be a
	// setuid-root program there.
	KeepSpecialBits bool
	// MaxEntries bounds the files, directories, symlinks and hard links
	// written (DefaultMaxEntries when 0); MaxBytes the file data written,
	// holes not counted (DefaultMaxBytes when 0). An extraction that would
	// go past either stops with ErrBudget.
	MaxEntries, MaxBytes int64
}

// The default budget of an extraction.
const (
	DefaultMaxEntries = 1 << 20
	DefaultMaxBytes   = 1 << 40
)

// ErrBudget is returned (wrapped) when an extraction would write more
// entries or bytes than its budget (ExtractOptions).
var ErrBudget = errors.New("extraction budget exceeded")

// Budget tracks an extraction's budget (shared by both extractors).
type Budget struct {
	opts           ExtractOptions
	entries, bytes int64
}

// NewBudget returns the budget of opts, defaults filled in.
func NewBudget(opts ExtractOptions) *Budget {
	if opts.MaxEntries == 0 {
		opts.MaxEntries = DefaultMaxEntries
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	return &Budget{opts: opts}
}

// Entry takes one entry (src, for the message) from the budget.
func (b *Budget) Entry(src string) error {
	if b.entries++; b.entries > b.opts.MaxEntries {
		return fmt.Errorf("restore %s: %w: more than %d files, directories and links", src, ErrBudget, b.opts.MaxEntries)
	}
	return nil
}

// Bytes takes n bytes of file data (of src) from the budget.
func (b *Budget) Bytes(src string, n int64) error {
	if b.bytes += n; b.bytes > b.opts.MaxBytes {
		return fmt.Errorf("restore %s: %w: more than %d bytes of file data", src, ErrBudget, b.opts.MaxBytes)
	}
	return nil
}

// Mode is the mode to give a restored entry whose permission bits are
// perm and special bits (setuid, setgid, sticky) special: the special bits
// only when kept; stripped ones are counted in st.
func (b *Budget) Mode(perm, special fs.FileMode, st *Stats) fs.FileMode {
	if special == 0 {
		return perm
	}
	if b.opts.KeepSpecialBits {
		return perm | special
	}
	st.SpecialBitsStripped++
	return perm
}

// Finish adds the warning about stripped special bits to st.
func (b *Budget) Finish(st *Stats) {
	if st.SpecialBitsStripped > 0 {
		st.Warnings = append(st.Warnings, fmt.Sprintf("setuid, setgid or sticky bits stripped from %d entries (--keep-special-bits keeps them)", st.SpecialBitsStripped))
	}
}

// Stats count what Extract wrote.
type Stats struct {
	Files    int64 `json:"files"`
	Dirs     int64 `json:"dirs"`
	Symlinks int64 `json:"symlinks"`
	// Hardlinks counts the further names of files with several: each such
	// file is written once, its other names linked to it.
	Hardlinks int64 `json:"hardlinks,omitempty"`
	// Bytes is the total size of the regular files written.
	Bytes int64 `json:"bytes"`
	// SpecialBitsStripped counts the entries whose setuid, setgid or
	// sticky bits were not restored (ExtractOptions.KeepSpecialBits).
	SpecialBitsStripped int64 `json:"special_bits_stripped,omitempty"`
	// Skipped lists entries not written and why: unsafe names, special
	// files, directory loops.
	Skipped []string `json:"skipped,omitempty"`
	// Journal is the kind of the ext3/4 journal ("internal", "external";
	// "" without one, or not ext).
	Journal string `json:"journal,omitempty"`
	// NeedsRecovery: the journal holds transactions that were not replayed
	// into what was read (see Journal.NeedsRecovery).
	NeedsRecovery bool `json:"needs_recovery,omitempty"`
	// Warnings say what may be wrong with what was written (a journal that
	// was not replayed).
	Warnings []string `json:"warnings,omitempty"`
}

// Extract copies the file, symlink or directory tree at path in the ext2/3/4
// file system on r (size bytes) into destDir, which is created if missing.
// The entry lands under its own name (path /etc/app becomes destDir/app);
// path "/" copies the root's contents into destDir. Permission bits and
// modification times are kept (owners are not; setuid, setgid and sticky
// bits only with opts.KeepSpecialBits). A file with several names is
// written once and its other names hard-linked to it. The extraction stops
// with ErrBudget past opts' budget. Symlinks are written as
// symlinks and never followed when writing; nothing is written outside
// destDir, and entries with unsafe names ("..", "/" or NUL in a name) are
// skipped and listed in Stats.Skipped. Existing files are not overwritten.
// The journal is not replayed: a journal that needs recovery is reported in
// Stats (NeedsRecovery, Warnings), and the files are read as the main area
// holds them.
func Extract(ctx context.Context, r io.ReaderAt, size int64, p, destDir string, opts ExtractOptions) (st Stats, err error) {
	f, err := openExt4(r, size)
	if err != nil {
		return st, err
	}
	st.Journal, st.NeedsRecovery = f.journal.Kind, f.journal.NeedsRecovery
	if w := f.journal.Warning(); w != "" {
		st.Warnings = append(st.Warnings, w)
	}
	clean := path.Clean("/" + p)
	ino, err := f.lookup(ctx, clean)
	if err != nil {
		return st, err
	}
	if err := os.MkdirAll(destDir, 0o755); err != nil {
		return st, fmt.Errorf("target directory: %w", err)
	}
	root, err := os.OpenRoot(destDir)
	if err != nil {
		return st, fmt.Errorf("target directory: %w", err)
	}
	defer root.Close()
	x := &extractor{f: f, root: root, st: &st, visited: map[uint32]bool{}, links: map[uint32]string{}, budget: NewBudget(opts)}
	defer x.budget.Finish(&st)
	in, err := f.inode(ino)
	if err != nil {
		return st, fmt.Errorf("%s: %w", clean, err)
	}
	if clean == "/" {
		x.visited[ino] = true
		err = x.dirContents(ctx, in, ".", "/", 0)
	} else {
		err = x.entry(ctx, in, path.Base(clean), clean, 0)
	}
	return st, err
}

// lookup resolves an absolute, clean path to an inode number, following
// symlinks in directory components inside the file system (never on the
// host) but not in the last component.
func (f *fsys) lookup(ctx context.Context, p string) (uint32, error) {
	return f.lookupFollow(ctx, p, false)
}

// lookupFollow is lookup that also follows a symlink in the last
// component when followLast is set.
func (f *fsys) lookupFollow(ctx context.Context, p string, followLast bool) (uint32, error) {
	hops := 0
	var walk func(comps []string, sofar string, followLast bool) (uint32, string, error)
	walk = func(comps []string, sofar string, followLast bool) (uint32, string, error) {
		cur := uint32(rootIno)
		for k, c := range comps {
			if err := ctx.Err(); err != nil {
				return 0, "", err
			}
			in, err := f.inode(cur)
			if err != nil {
				return 0, "", fmt.Errorf("%s: %w", sofar, err)
			}
			if !in.isDir() {
				return 0, "", fmt.Errorf("not a directory in the backup: %s", sofar)
			}
			next, err := f.find(in, c)
			if err != nil {
				return 0, "", fmt.Errorf("%s: %w", sofar, err)
			}
			if next == 0 {
				return 0, "", fmt.Errorf("%w: %s", ErrNotFound, p)
			}
			here := path.Join(sofar, c)
			if followLast || k < len(comps)-1 {
				nin, err := f.inode(next)
				if err != nil {
					return 0, "", fmt.Errorf("%s: %w", here, err)
				}
				if nin.isLink() {
					if hops++; hops > MaxLinkHops {
						return 0, "", fmt.Errorf("%s: too many levels of symbolic links", here)
					}
					target, err := f.readLink(nin)
					if err != nil {
						return 0, "", fmt.Errorf("%s: %w", here, err)
					}
					if !strings.HasPrefix(target, "/") {
						target = sofar + "/" + target
					}
					next, here, err = walk(SplitPath(target), "/", true)
					if err != nil {
						return 0, "", err
					}
				}
			}
			cur, sofar = next, here
		}
		return cur, sofar, nil
	}
	ino, _, err := walk(SplitPath(p), "/", followLast)
	return ino, err
}

// SplitPath splits a path into components, resolving ".." lexically against
// the components before it (".." at the top stays at the top, as at "/").
func SplitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		switch c {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, c)
		}
	}
	return out
}

var errFound = errors.New("found")

// find returns the inode of name in directory in, or 0.
func (f *fsys) find(in *inode, name string) (uint32, error) {
	var ino uint32
	err := f.readDir(in, func(e dirent) error {
		if e.name == name {
			ino = e.ino
			return errFound
		}
		return nil
	})
	if err != nil && !errors.Is(err, errFound) {
		return 0, err
	}
	return ino, nil
}

type extractor struct {
	f       *fsys
	root    *os.Root
	st      *Stats
	visited map[uint32]bool
	links   map[uint32]string // inode of a file with several names → where it was written
	budget  *Budget
}

// safeName reports whether a directory entry's name can be a file name in
// the target: not empty, ".", "..", and no "/" or NUL.
func safeName(n string) bool {
	return n != "" && n != "." && n != ".." && !strings.ContainsAny(n, "/\x00")
}

func (x *extractor) skip(src, why string) {
	x.st.Skipped = append(x.st.Skipped, fmt.Sprintf("%s: %s", src, why))
}

// entry writes inode in as rel (relative to the target) ; src is its path in
// the backup, for messages.
func (x *extractor) entry(ctx context.Context, in *inode, rel, src string, depth int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := x.budget.Entry(src); err != nil {
		return err
	}
	switch {
	case in.isDir():
		if x.visited[in.ino] {
			x.skip(src, fmt.Sprintf("directory loop (inode %d seen before)", in.ino))
			return nil
		}
		if depth >= MaxDepth {
			x.skip(src, "nested too deep")
			return nil
		}
		x.visited[in.ino] = true
		if err := x.root.Mkdir(rel, 0o700); err != nil {
			return fmt.Errorf("restore %s: %w", src, err)
		}
		x.st.Dirs++
		if err := x.dirContents(ctx, in, rel, src, depth); err != nil {
			return err
		}
		return x.setAttrs(in, rel, src)
	case in.isReg():
		if first, ok := x.links[in.ino]; ok {
			if err := x.root.Link(first, rel); err != nil {
				return fmt.Errorf("restore %s: link to %s: %w", src, first, err)
			}
			x.st.Hardlinks++
			return nil
		}
		if err := x.file(ctx, in, rel, src); err != nil {
			return err
		}
		x.st.Files++
		if in.links > 1 {
			x.links[in.ino] = rel
		}
		return x.setAttrs(in, rel, src)
	case in.isLink():
		target, err := x.f.readLink(in)
		if err != nil {
			return fmt.Errorf("restore %s: %w", src, err)
		}
		if target == "" || strings.ContainsRune(target, 0) {
			x.skip(src, "symlink with an empty target or a NUL in it")
			return nil
		}
		if err := x.root.Symlink(target, rel); err != nil {
			return fmt.Errorf("restore %s: %w", src, err)
		}
		x.st.Symlinks++
		return nil
	default:
		x.skip(src, fmt.Sprintf("special file (mode %06o) not restored", in.mode))
		return nil
	}
}

// dirContents writes the entries of directory in under rel.
func (x *extractor) dirContents(ctx context.Context, in *inode, rel, src string, depth int) error {
	var ents []dirent
	if err := x.f.readDir(in, func(e dirent) error {
		ents = append(ents, e)
		return nil
	}); err != nil {
		return fmt.Errorf("read directory %s: %w", src, err)
	}
	for _, e := range ents {
		if e.name == "." || e.name == ".." {
			continue
		}
		csrc := path.Join(src, e.name)
		if !safeName(e.name) {
			x.skip(fmt.Sprintf("%s/%q", src, e.name), "unsafe name")
			continue
		}
		cin, err := x.f.inode(e.ino)
		if err != nil {
			return fmt.Errorf("restore %s: %w", csrc, err)
		}
		if err := x.entry(ctx, cin, path.Join(rel, e.name), csrc, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// file writes regular file in as rel, leaving holes unwritten.
func (x *extractor) file(ctx context.Context, in *inode, rel, src string) (err error) {
	exts, err := x.f.extents(in)
	if err != nil {
		return fmt.Errorf("restore %s: %w", src, err)
	}
	out, err := x.root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("restore %s: %w", src, err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("restore %s: %w", src, cerr)
		}
	}()
	buf := make([]byte, min(CopyPiece, max(in.size, 1)))
	bs := x.f.bs
	for _, e := range exts {
		if e.unwritten {
			continue
		}
		start := int64(e.lblk) * bs
		end := min(start+int64(e.len)*bs, in.size)
		for off := start; off < end; off += int64(len(buf)) {
			if err := ctx.Err(); err != nil {
				return err
			}
			p := buf[:min(int64(len(buf)), end-off)]
			if err := x.budget.Bytes(src, int64(len(p))); err != nil {
				return err
			}
			phys := int64(e.pblk)*bs + (off - start)
			if err := x.f.readAt(p, phys, fmt.Sprintf("%s (inode %d) at offset %d", src, in.ino, off)); err != nil {
				return fmt.Errorf("restore %s: %w", src, err)
			}
			if _, err := out.WriteAt(p, off); err != nil {
				return fmt.Errorf("restore %s: %w", src, err)
			}
		}
	}
	if err := out.Truncate(in.size); err != nil {
		return fmt.Errorf("restore %s: %w", src, err)
	}
	x.st.Bytes += in.size
	return nil
}

// setAttrs applies the permission bits (special ones as the options say)
// and modification time of in to rel.
func (x *extractor) setAttrs(in *inode, rel, src string) error {
	var special fs.FileMode
	if in.mode&0o4000 != 0 {
		special |= fs.ModeSetuid
	}
	if in.mode&0o2000 != 0 {
		special |= fs.ModeSetgid
	}
	if in.mode&0o1000 != 0 {
		special |= fs.ModeSticky
	}
	mode := x.budget.Mode(fs.FileMode(in.mode&0o777), special, x.st)
	if err := x.root.Chmod(rel, mode); err != nil {
		return fmt.Errorf("restore %s: set mode: %w", src, err)
	}
	if err := x.root.Chtimes(rel, time.Time{}, in.mtime); err != nil {
		return fmt.Errorf("restore %s: set mtime: %w", src, err)
	}
	return nil
}
