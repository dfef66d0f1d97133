package filerestore

import (
	"archive/tar"
	"bytes"
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

// ErrHostileArchive is returned (wrapped) when a tar stream given to
// ExtractTar holds what no honest sender writes: a name that is absolute,
// climbs with "..", is not clean, or lies under something other than a
// directory this extraction made; a hard link to anything but a file it
// wrote; an entry type it does not know.
var ErrHostileArchive = errors.New("refused tar entry")

// maxTarName bounds an entry's name (PATH_MAX).
const maxTarName = 4096

// ExtractTar writes the entries of the tar stream r under destDir (created
// if missing) with Extract's rules, treating r as hostile (the tar of a
// file-restore appliance, whose kernel parsed a tenant's file system):
//   - every name must be a clean relative path of safe components whose
//     parent is destDir itself or a directory this extraction made (so
//     nothing lands outside destDir, nor behind a symlink or over a
//     file); otherwise it stops with ErrHostileArchive;
//   - every write goes through an os.Root on destDir; existing files are
//     not overwritten; symlinks are written as symlinks and never followed;
//   - a hard link must name a regular file written earlier by this
//     extraction, and is linked to it (the file is written once);
//   - devices and FIFOs are skipped and listed; setuid, setgid and sticky
//     bits are stripped unless opts.KeepSpecialBits; permission bits and
//     modification times are kept (directories' once their contents are
//     written), owners not;
//   - each entry and each file's declared size are taken from opts' budget
//     before anything is written, so a huge size stops with ErrBudget;
//   - all-zero blocks of file data are left as holes.
//
// Messages name an entry by its path in the backup: srcDir joined with
// its name in the tar (srcDir is the directory of the path extracted, "/"
// for the root's contents).
//
// The stream ends at the tar's end-of-archive marker; what follows it is
// not read.
func ExtractTar(ctx context.Context, r io.Reader, destDir, srcDir string, opts ExtractOptions) (st Stats, err error) {
	if err := os.MkdirAll(destDir, 0o755); err != nil {
		return st, fmt.Errorf("target directory: %w", err)
	}
	root, err := os.OpenRoot(destDir)
	if err != nil {
		return st, fmt.Errorf("target directory: %w", err)
	}
	defer root.Close()
	x := &tarExtractor{srcDir: path.Clean("/" + srcDir), root: root, st: &st, budget: NewBudget(opts), dirs: map[string]bool{".": true}, files: map[string]bool{}}
	defer x.budget.Finish(&st)
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return st, fmt.Errorf("read the tar stream: %w", err)
		}
		if err := x.entry(ctx, hdr, tr); err != nil {
			return st, err
		}
	}
	// directories' modes and times last, deepest first, so that a
	// read-only directory is filled before it becomes read-only
	for i := len(x.dirAttrs) - 1; i >= 0; i-- {
		if err := x.setAttrs(x.dirAttrs[i]); err != nil {
			return st, err
		}
	}
	return st, nil
}

type tarExtractor struct {
	srcDir   string
	root     *os.Root
	st       *Stats
	budget   *Budget
	dirs     map[string]bool // directories made by this extraction ("." is destDir)
	files    map[string]bool // regular files written by this extraction
	dirAttrs []*tar.Header
}

func hostile(name, why string) error {
	return fmt.Errorf("%w %q: %s", ErrHostileArchive, name, why)
}

// checkName returns the clean relative name of an entry, or why it is
// refused.
func (x *tarExtractor) checkName(raw string) (string, error) {
	name := strings.TrimSuffix(raw, "/")
	switch {
	case len(raw) > maxTarName:
		return "", hostile(raw[:64]+"...", fmt.Sprintf("name longer than %d bytes", maxTarName))
	case strings.ContainsRune(raw, 0):
		return "", hostile(raw, "NUL in the name")
	case strings.HasPrefix(raw, "/"):
		return "", hostile(raw, "absolute path")
	case name == "" || name == ".":
		return "", hostile(raw, "names the target directory itself")
	}
	comps := strings.Split(name, "/")
	for _, c := range comps {
		if c == ".." {
			return "", hostile(raw, `".." in the path`)
		}
		if !safeName(c) {
			return "", hostile(raw, "not a clean path (empty or \".\" component)")
		}
	}
	if len(comps) > MaxDepth {
		return "", hostile(raw, fmt.Sprintf("nested deeper than %d", MaxDepth))
	}
	if parent := path.Dir(name); !x.dirs[parent] {
		return "", hostile(raw, fmt.Sprintf("its parent %q is not a directory this restore made (a symlink, a file, or missing)", parent))
	}
	return name, nil
}

func (x *tarExtractor) entry(ctx context.Context, hdr *tar.Header, tr io.Reader) error {
	name, err := x.checkName(hdr.Name)
	if err != nil {
		return err
	}
	src := path.Join(x.srcDir, name)
	if err := x.budget.Entry(src); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := x.root.Mkdir(name, 0o700); err != nil {
			return fmt.Errorf("restore %s: %w", src, err)
		}
		x.dirs[name] = true
		x.st.Dirs++
		h := *hdr
		h.Name = name
		x.dirAttrs = append(x.dirAttrs, &h)
		return nil
	case tar.TypeReg: // the reader turns the old TypeRegA into TypeReg
		if hdr.Size < 0 {
			return hostile(hdr.Name, "negative size")
		}
		if err := x.budget.Bytes(src, hdr.Size); err != nil {
			return err
		}
		if err := x.file(ctx, name, src, hdr.Size, tr); err != nil {
			return err
		}
		x.files[name] = true
		x.st.Files++
		h := *hdr
		h.Name = name
		return x.setAttrs(&h)
	case tar.TypeLink:
		target := hdr.Linkname
		if !x.files[target] {
			return hostile(hdr.Name, fmt.Sprintf("hard link to %q, which is not a file this restore wrote", target))
		}
		if err := x.root.Link(target, name); err != nil {
			return fmt.Errorf("restore %s: link to %s: %w", src, target, err)
		}
		x.st.Hardlinks++
		return nil
	case tar.TypeSymlink:
		if hdr.Linkname == "" || strings.ContainsRune(hdr.Linkname, 0) {
			x.skip(src, "symlink with an empty target or a NUL in it")
			return nil
		}
		if err := x.root.Symlink(hdr.Linkname, name); err != nil {
			return fmt.Errorf("restore %s: %w", src, err)
		}
		x.st.Symlinks++
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		kind := map[byte]int64{tar.TypeChar: 0o020000, tar.TypeBlock: 0o060000, tar.TypeFifo: 0o010000}[hdr.Typeflag]
		x.skip(src, fmt.Sprintf("special file (mode %06o) not restored", kind|hdr.Mode&0o7777))
		return nil
	default:
		return hostile(hdr.Name, fmt.Sprintf("entry type %q is not one a restore writes", hdr.Typeflag))
	}
}

func (x *tarExtractor) skip(src, why string) {
	x.st.Skipped = append(x.st.Skipped, fmt.Sprintf("%s: %s", src, why))
}

// file writes size bytes of r as the new file name, all-zero blocks left
// as holes.
func (x *tarExtractor) file(ctx context.Context, name, src string, size int64, r io.Reader) (err error) {
	out, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("restore %s: %w", src, err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("restore %s: %w", src, cerr)
		}
	}()
	const block = 4096
	var zero [block]byte
	buf := make([]byte, min(CopyPiece, max(size, 1)))
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(int64(len(buf)), size-off)]
		n, err := io.ReadFull(r, b)
		if err != nil {
			return fmt.Errorf("restore %s: read the tar stream at offset %d of %d: %w", src, off+int64(n), size, err)
		}
		for p := 0; p < n; p += block {
			q := min(p+block, n)
			if bytes.Equal(b[p:q], zero[:q-p]) {
				continue
			}
			if _, err := out.WriteAt(b[p:q], off+int64(p)); err != nil {
				return fmt.Errorf("restore %s: %w", src, err)
			}
		}
		off += int64(n)
	}
	if err := out.Truncate(size); err != nil {
		return fmt.Errorf("restore %s: %w", src, err)
	}
	x.st.Bytes += size
	return nil
}

// setAttrs applies an entry's permission bits (special ones as the
// options say) and modification time.
func (x *tarExtractor) setAttrs(hdr *tar.Header) error {
	var special fs.FileMode
	if hdr.Mode&0o4000 != 0 {
		special |= fs.ModeSetuid
	}
	if hdr.Mode&0o2000 != 0 {
		special |= fs.ModeSetgid
	}
	if hdr.Mode&0o1000 != 0 {
		special |= fs.ModeSticky
	}
	mode := x.budget.Mode(fs.FileMode(hdr.Mode&0o777), special, x.st)
	src := path.Join(x.srcDir, hdr.Name)
	if err := x.root.Chmod(hdr.Name, mode); err != nil {
		return fmt.Errorf("restore %s: set mode: %w", src, err)
	}
	if err := x.root.Chtimes(hdr.Name, time.Time{}, hdr.ModTime); err != nil {
		return fmt.Errorf("restore %s: set mtime: %w", src, err)
	}
	return nil
}
