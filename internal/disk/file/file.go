// Package file reads a disk image file or block device as a disk.Source,
// reporting allocated ranges with SEEK_DATA/SEEK_HOLE so that holes of sparse
// images are never read.
package file

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/raksha-backup/raksha/internal/disk"
)

// Source is an open image file.
type Source struct {
	f    *os.File
	size int64
}

// Open opens path read-only. Block devices report their size; files their length.
func Open(path string) (*Source, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open disk image: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open disk image %s: %w", path, err)
	}
	if fi.IsDir() {
		f.Close()
		return nil, fmt.Errorf("open disk image %s: is a directory", path)
	}
	size := fi.Size()
	if fi.Mode()&os.ModeDevice != 0 {
		size, err = f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("open disk image %s: size of device: %w", path, err)
		}
	}
	return &Source{f: f, size: size}, nil
}

// ReadAt implements io.ReaderAt.
func (s *Source) ReadAt(p []byte, off int64) (int, error) { return s.f.ReadAt(p, off) }

// Size implements disk.Source.
func (s *Source) Size() int64 { return s.size }

// Allocated implements disk.Source with SEEK_DATA/SEEK_HOLE. File systems
// without support report the whole file as data, which is still correct.
func (s *Source) Allocated() ([]disk.Extent, bool, error) {
	fd := int(s.f.Fd())
	var exts []disk.Extent
	var off int64
	for off < s.size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			break // no data after off
		}
		if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("seek data in %s: %w", s.f.Name(), err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, false, fmt.Errorf("seek hole in %s: %w", s.f.Name(), err)
		}
		hole = min(hole, s.size)
		if hole > data {
			exts = append(exts, disk.Extent{Offset: data, Length: hole - data})
		}
		off = hole
	}
	return exts, true, nil
}

// Close implements disk.Source.
func (s *Source) Close() error { return s.f.Close() }
