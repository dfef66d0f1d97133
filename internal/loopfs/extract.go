package loopfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/raksha-backup/raksha/internal/filerestore"
)

// Extract copies the file, symlink or directory tree at p in the file
// system mounted at mnt (a backup's, read-only) into destDir, with
// filerestore.Extract's rules: the entry lands under its own name (/etc/app
// becomes destDir/app; "/" copies the root's contents); symlinks in p's
// directory components are followed inside the backed-up file system (an
// absolute target starts at its root, never the host's), the last one is
// not; every write goes through an os.Root on destDir so nothing lands
// outside it; symlinks are written as symlinks and never followed; special
// files are skipped and listed; permission bits and modification times are
// kept, owners not, setuid, setgid and sticky bits only with
// opts.KeepSpecialBits; a file with several names is written once and
// linked; holes stay holes; existing files are not overwritten; the
// extraction stops with filerestore.ErrBudget past opts' budget.
func Extract(ctx context.Context, mnt, p, destDir string, opts filerestore.ExtractOptions) (st filerestore.Stats, err error) {
	src, err := os.OpenRoot(mnt)
	if err != nil {
		return st, fmt.Errorf("open the mounted file system: %w", err)
	}
	defer src.Close()
	clean := path.Clean("/" + p)
	rel, err := resolve(ctx, src, clean)
	if err != nil {
		return st, err
	}
	if err := os.MkdirAll(destDir, 0o755); err != nil {
		return st, fmt.Errorf("target directory: %w", err)
	}
	dst, err := os.OpenRoot(destDir)
	if err != nil {
		return st, fmt.Errorf("target directory: %w", err)
	}
	defer dst.Close()
	x := &extractor{src: src, dst: dst, st: &st, visited: map[[2]uint64]bool{}, links: map[[2]uint64]string{}, budget: filerestore.NewBudget(opts)}
	defer x.budget.Finish(&st)
	if rel == "." {
		fi, err := src.Lstat(".")
		if err != nil {
			return st, fmt.Errorf("/: %w", err)
		}
		x.visited[key(fi)] = true
		err = x.dirContents(ctx, ".", ".", "/", 0)
		return st, err
	}
	err = x.entry(ctx, rel, path.Base(clean), clean, 0)
	return st, err
}

// resolve is filerestore.ResolveIn.
func resolve(ctx context.Context, src *os.Root, p string) (string, error) {
	return filerestore.ResolveIn(ctx, src, p)
}

// unwrapPath is filerestore.UnwrapPath.
func unwrapPath(err error) error { return filerestore.UnwrapPath(err) }

type extractor struct {
	src, dst *os.Root
	st       *filerestore.Stats
	visited  map[[2]uint64]bool
	links    map[[2]uint64]string // a file with several names → where it was written
	budget   *filerestore.Budget
}

func key(fi fs.FileInfo) [2]uint64 {
	if s, ok := fi.Sys().(*syscall.Stat_t); ok {
		return [2]uint64{s.Dev, s.Ino}
	}
	return [2]uint64{}
}

func rawMode(fi fs.FileInfo) uint32 {
	if s, ok := fi.Sys().(*syscall.Stat_t); ok {
		return s.Mode
	}
	return uint32(fi.Mode().Perm())
}

func safeName(n string) bool {
	return n != "" && n != "." && n != ".." && !strings.ContainsAny(n, "/\x00")
}

func (x *extractor) skip(src, why string) {
	x.st.Skipped = append(x.st.Skipped, fmt.Sprintf("%s: %s", src, why))
}

// entry copies rel (relative to the mount) to out (relative to the
// target); src is its path in the backup, for messages.
func (x *extractor) entry(ctx context.Context, rel, out, src string, depth int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fi, err := x.src.Lstat(rel)
	if err != nil {
		return fmt.Errorf("restore %s: %w", src, unwrapPath(err))
	}
	if err := x.budget.Entry(src); err != nil {
		return err
	}
	switch {
	case fi.IsDir():
		k := key(fi)
		if x.visited[k] {
			x.skip(src, "directory loop (seen before)")
			return nil
		}
		if depth >= filerestore.MaxDepth {
			x.skip(src, "nested too deep")
			return nil
		}
		x.visited[k] = true
		if err := x.dst.Mkdir(out, 0o700); err != nil {
			return fmt.Errorf("restore %s: %w", src, err)
		}
		x.st.Dirs++
		if err := x.dirContents(ctx, rel, out, src, depth); err != nil {
			return err
		}
		return x.setAttrs(fi, out, src)
	case fi.Mode().IsRegular():
		k := key(fi)
		if first, ok := x.links[k]; ok {
			if err := x.dst.Link(first, out); err != nil {
				return fmt.Errorf("restore %s: link to %s: %w", src, first, err)
			}
			x.st.Hardlinks++
			return nil
		}
		if err := x.file(ctx, rel, out, src, fi.Size()); err != nil {
			return err
		}
		x.st.Files++
		if s, ok := fi.Sys().(*syscall.Stat_t); ok && s.Nlink > 1 {
			x.links[k] = out
		}
		return x.setAttrs(fi, out, src)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := x.src.Readlink(rel)
		if err != nil {
			return fmt.Errorf("restore %s: %w", src, unwrapPath(err))
		}
		if target == "" || strings.ContainsRune(target, 0) {
			x.skip(src, "symlink with an empty target or a NUL in it")
			return nil
		}
		if err := x.dst.Symlink(target, out); err != nil {
			return fmt.Errorf("restore %s: %w", src, err)
		}
		x.st.Symlinks++
		return nil
	default:
		x.skip(src, fmt.Sprintf("special file (mode %06o) not restored", rawMode(fi)))
		return nil
	}
}

// dirContents copies the entries of directory rel under out.
func (x *extractor) dirContents(ctx context.Context, rel, out, src string, depth int) error {
	d, err := x.src.Open(rel)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", src, unwrapPath(err))
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("read directory %s: %w", src, unwrapPath(err))
	}
	for _, n := range names {
		csrc := path.Join(src, n)
		if !safeName(n) {
			x.skip(fmt.Sprintf("%s/%q", src, n), "unsafe name")
			continue
		}
		if err := x.entry(ctx, path.Join(rel, n), path.Join(out, n), csrc, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// file copies regular file rel to out, leaving holes unwritten.
func (x *extractor) file(ctx context.Context, rel, out, src string, size int64) (err error) {
	in, err := x.src.OpenFile(rel, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("restore %s: %w", src, unwrapPath(err))
	}
	defer in.Close()
	w, err := x.dst.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("restore %s: %w", src, err)
	}
	defer func() {
		if cerr := w.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("restore %s: %w", src, cerr)
		}
	}()
	buf := make([]byte, min(filerestore.CopyPiece, max(size, 1)))
	for off := int64(0); off < size; {
		// the data ranges only (SEEK_DATA / SEEK_HOLE); without them, all
		start, end := off, size
		if d, err := in.Seek(off, 3); err == nil {
			start = d
			if h, err := in.Seek(d, 4); err == nil {
				end = min(h, size)
			}
		} else if errors.Is(err, syscall.ENXIO) {
			break // a hole up to the end
		}
		for p := start; p < end; {
			if err := ctx.Err(); err != nil {
				return err
			}
			b := buf[:min(int64(len(buf)), end-p)]
			if err := x.budget.Bytes(src, int64(len(b))); err != nil {
				return err
			}
			n, err := in.ReadAt(b, p)
			if n > 0 {
				if _, werr := w.WriteAt(b[:n], p); werr != nil {
					return fmt.Errorf("restore %s: %w", src, werr)
				}
				p += int64(n)
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("restore %s: the file ended at %d bytes, not %d", src, p, size)
			}
			if err != nil {
				return fmt.Errorf("restore %s at offset %d: %w", src, p, unwrapPath(err))
			}
		}
		off = end
	}
	if err := w.Truncate(size); err != nil {
		return fmt.Errorf("restore %s: %w", src, err)
	}
	x.st.Bytes += size
	return nil
}

// setAttrs applies the permission bits and modification time of fi to out.
func (x *extractor) setAttrs(fi fs.FileInfo, out, src string) error {
	mode := x.budget.Mode(fi.Mode()&fs.ModePerm, fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky), x.st)
	if err := x.dst.Chmod(out, mode); err != nil {
		return fmt.Errorf("restore %s: set mode: %w", src, err)
	}
	if err := x.dst.Chtimes(out, time.Time{}, fi.ModTime()); err != nil {
		return fmt.Errorf("restore %s: set mtime: %w", src, err)
	}
	return nil
}
