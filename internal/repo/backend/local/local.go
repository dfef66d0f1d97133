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

	"golang.org/x/sys/unix"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

const tmpPrefix = ".tmp-"

// Backend is a directory of objects.
type Backend struct {
	root string
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

func wrap(op, name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("local %s %s: %w", op, name, backend.ErrNotFound)
	}
	if errors.Is(err, fs.ErrPermission) {
		return backend.Permanent(fmt.Errorf("local %s %s: %w", op, name, err))
	}
	return fmt.Errorf("local %s %s: %w", op, name, err)
}

// Save implements backend.Backend: temp file in the same directory, then rename.
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
			return wrap("save", name, err)
		}
		f, err = os.CreateTemp(dir, tmpPrefix)
	}
	if err != nil {
		return wrap("save", name, err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, p)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return wrap("save", name, werr)
	}
	return nil
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
