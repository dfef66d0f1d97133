// Package local stores a repository's objects as files under one directory
// (URL file:///path). Each object is one file; a save writes a temporary file
// and renames it into place, so readers never see a partial object.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

const tmpPrefix = ".tmp-"

// directMin is the object size from which Save writes with O_DIRECT
// (chunks, not small metadata objects); directAlign the alignment of
// offset, length and buffer that O_DIRECT needs (4 KiB covers every common
// logical block size).
const (
	directMin   = 64 << 10
	directAlign = 4096
)

// Backend is a directory of objects.
type Backend struct {
	root     string
	noDirect atomic.Bool // the file system refused O_DIRECT once
}

// Open returns a backend rooted at dir, creating dir if it does not exist.
func Open(dir string) (*Backend, error) {
	if dir == "" {
		return nil, backend.Permanent(errors.New("local backend: empty directory"))
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, backend.Permanent(fmt.Errorf("local backend %s: %w", dir, err))
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, backend.Permanent(fmt.Errorf("local backend: create %s: %w", abs, err))
	}
	return &Backend{root: abs}, nil
}

// Location implements backend.Backend.
func (b *Backend) Location() string { return "file://" + b.root }

func (b *Backend) path(name string) (string, error) {
	clean := filepath.Clean("/" + name)
	if name == "" || clean != "/"+name || strings.Contains(name, "\\") {
		return "", backend.Permanent(fmt.Errorf("local backend: invalid object name %q", name))
	}
	return filepath.Join(b.root, filepath.FromSlash(name)), nil
}

// saveErr wraps an error of Save.
func (b *Backend) saveErr(name string, err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return backend.Permanent(fmt.Errorf("local save %s: no space left for the repository %s: %w", name, b.root, err))
	}
	return wrap("save", name, err)
}

func wrap(op, name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("local %s %s: %w", op, name, backend.ErrNotFound)
	}
	if errors.Is(err, fs.ErrPermission) {
		return backend.Permanent(fmt.Errorf("local %s %s: %w", op, name, err))
	}
	return fmt.Errorf("local %s %s: %w", op, name, err)
}

// Save implements backend.Backend: temp file in the same directory, then
// rename; the temporary file of a failed save is removed. A full file system
// (ENOSPC, EDQUOT) is a permanent error naming the repository's directory:
// retrying at once cannot free space.
func (b *Backend) Save(ctx context.Context, name string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := b.path(name)
	if err != nil {
		return err
	}
	dir := filepath.Dir(p)
	f, err := os.CreateTemp(dir, tmpPrefix)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return b.saveErr(name, err)
		}
		f, err = os.CreateTemp(dir, tmpPrefix)
	}
	if err != nil {
		return b.saveErr(name, err)
	}
	tmp := f.Name()
	werr := b.write(f, data)
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, p)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return b.saveErr(name, werr)
	}
	return nil
}

// write writes a new object's data to f. Large objects go to the device
// with O_DIRECT (the block-aligned part; the short tail through the page
// cache): a backup writes each chunk once and reads it back rarely, so
// copying it into the page cache would only cost CPU time and leave the
// whole backup's write-back for the commit's Flush. Durability is Flush's
// business either way. Where O_DIRECT is refused (tmpfs), f is written as
// usual.
func (b *Backend) write(f *os.File, data []byte) error {
	n := len(data) &^ (directAlign - 1)
	if len(data) < directMin || b.noDirect.Load() || uintptr(unsafe.Pointer(&data[0]))%directAlign != 0 {
		_, err := f.Write(data)
		return err
	}
	fd, err := unix.Open(f.Name(), unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EINVAL) {
			b.noDirect.Store(true)
		}
		_, err := f.Write(data)
		return err
	}
	w, err := unix.Pwrite(fd, data[:n], 0)
	unix.Close(fd)
	if err != nil && w <= 0 {
		if errors.Is(err, unix.EINVAL) {
			b.noDirect.Store(true)
		}
		_, err := f.WriteAt(data, 0)
		return err
	}
	if err != nil {
		return err
	}
	_, err = f.WriteAt(data[w:], int64(w))
	return err
}

// Load implements backend.Backend.
func (b *Backend) Load(ctx context.Context, name string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := b.path(name)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, wrap("load", name, err)
	}
	return data, nil
}

// LoadInto implements backend.IntoLoader.
func (b *Backend) LoadInto(ctx context.Context, name string, buf []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := b.path(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, wrap("load", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, wrap("load", name, err)
	}
	if int64(cap(buf)) < fi.Size() {
		buf = make([]byte, fi.Size())
	}
	buf = buf[:fi.Size()]
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, wrap("load", name, err)
	}
	return buf, nil
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (backend.Info, error) {
	if err := ctx.Err(); err != nil {
		return backend.Info{}, err
	}
	p, err := b.path(name)
	if err != nil {
		return backend.Info{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return backend.Info{}, wrap("stat", name, err)
	}
	return backend.Info{Name: name, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Delete implements backend.Backend.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := b.path(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		return wrap("delete", name, err)
	}
	return nil
}

// List implements backend.Backend. Directories are walked from the deepest
// directory that the prefix names; half-written temporary files are skipped.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	start := b.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = filepath.Join(b.root, filepath.FromSlash(prefix[:i]))
	}
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		rel, err := filepath.Rel(b.root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if !strings.HasPrefix(name, prefix) {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted while we walked
		}
		if err != nil {
			return err
		}
		return fn(backend.Info{Name: name, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	if err != nil {
		return fmt.Errorf("local list %q: %w", prefix, err)
	}
	return nil
}

// Flush makes every object saved so far durable (syncfs on the repository's
// file system). The repository calls it before it writes a backup record.
func (b *Backend) Flush(ctx context.Context) error {
	f, err := os.Open(b.root)
	if err != nil {
		return wrap("flush", ".", err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("local flush %s: %w", b.root, err)
	}
	return nil
}

// Close implements backend.Backend.
func (b *Backend) Close() error { return nil }
