package repo

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directAlign is the alignment O_DIRECT writes keep: offset, length and
// buffer address multiples of it (4 KiB covers every common logical block
// size).
const directAlign = 4096

// DirectWriter writes a restore target (a file or block device) through a
// second descriptor opened with O_DIRECT where a write is block-aligned, and
// through the ordinary descriptor where it is not (the tail of a disk whose
// size is not a multiple of 4 KiB) or where it is short. Direct writes go from the restore's
// buffers to the device without passing through the page cache: a restore
// does not fill memory with pages it will not read again, nor spend its CPU
// time copying into them, and the bytes are on the device when the restore
// returns instead of waiting for write-back. Where O_DIRECT is not supported
// (tmpfs, some FUSE file systems), every write goes through the ordinary
// descriptor.
//
// RestoreDisk recognises a DirectWriter and aligns its buffers for it.
//
// Sync makes everything written durable. So that its flush does not come all
// at the end, a DirectWriter starts one in the background (fdatasync, one at
// a time) every flushEvery bytes: the device, or the host behind a virtual
// disk, then persists the earlier writes while the restore still decodes
// the later ones.
type DirectWriter struct {
	f      *os.File
	direct *os.File    // nil: O_DIRECT unavailable
	off    atomic.Bool // set when the target refused an aligned direct write

	unflushed atomic.Int64   // bytes written since the last background flush started
	flushing  atomic.Bool    // a background flush runs
	flushes   sync.WaitGroup // the background flush, for Sync and Close
	flushErr  atomic.Pointer[error]
	flushed   atomic.Int64 // background flushes done (for tests)
}

// flushEvery is how many bytes a DirectWriter writes between background
// flushes. On the bench's VM a restore of 1.5 GB of data spent about 1 s in
// one flush at the end.
const flushEvery = 128 << 20

// NewDirectWriter returns a DirectWriter for f, which must be open for
// writing. Close it before closing f; it does not close f.
func NewDirectWriter(f *os.File) *DirectWriter {
	d := &DirectWriter{f: f}
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err == nil {
		d.direct = os.NewFile(uintptr(fd), f.Name())
	}
	return d
}

// Direct reports whether aligned writes bypass the page cache.
func (d *DirectWriter) Direct() bool { return d.direct != nil && !d.off.Load() }

func aligned(p []byte) bool {
	return len(p) == 0 || uintptr(unsafe.Pointer(&p[0]))%directAlign == 0
}

// directMinWrite is the shortest write DirectWriter sends with O_DIRECT.
// A direct write into a hole holds the file's lock for the whole device
// write, and small ones are slow per byte; the scattered single blocks of a
// sparse restore are cheaper through the page cache.
const directMinWrite = 64 << 10

// WriteAt implements io.WriterAt.
func (d *DirectWriter) WriteAt(p []byte, off int64) (int, error) {
	n, err := d.writeAt(p, off)
	if d.unflushed.Add(int64(n)) >= flushEvery && d.flushing.CompareAndSwap(false, true) {
		d.unflushed.Store(0)
		d.flushes.Add(1)
		go func() {
			defer d.flushes.Done()
			defer d.flushing.Store(false)
			defer d.flushed.Add(1)
			if err := d.fdatasync(); err != nil {
				d.flushErr.CompareAndSwap(nil, &err)
			}
		}()
	}
	return n, err
}

// Sync waits for the background flush and makes every write so far durable
// (fdatasync of the target: its data and what is needed to read it back).
// It returns the first error of any flush: a failed flush may have dropped
// writes, so the target cannot be trusted after one.
func (d *DirectWriter) Sync() error {
	d.flushes.Wait()
	if e := d.flushErr.Load(); e != nil {
		return *e
	}
	return d.fdatasync()
}

// fdatasync flushes the target's data and the metadata needed to read it.
func (d *DirectWriter) fdatasync() error {
	if err := unix.Fdatasync(int(d.f.Fd())); err != nil {
		return fmt.Errorf("flush restore target %s: %w", d.f.Name(), err)
	}
	return nil
}

func (d *DirectWriter) writeAt(p []byte, off int64) (int, error) {
	if !d.Direct() || len(p) < directMinWrite || off%directAlign != 0 || !aligned(p) {
		return d.f.WriteAt(p, off)
	}
	n := len(p) &^ (directAlign - 1)
	written := 0
	if n > 0 {
		// Allocate first (as unwritten extents): ext4 lets a direct write
		// into allocated blocks run under the shared file lock, while one
		// into a hole holds it exclusively for the whole I/O. Measured
		// 5-10% faster for a restore's 4 MiB writes; fallocate itself
		// still waits for the direct writes in flight.
		_ = unix.Fallocate(int(d.direct.Fd()), unix.FALLOC_FL_KEEP_SIZE, off, int64(n))
		w, err := d.direct.WriteAt(p[:n], off)
		written += w
		if errors.Is(err, unix.EINVAL) && w == 0 {
			// The device wants a larger alignment than directAlign: give
			// up on O_DIRECT for this target.
			d.off.Store(true)
			return d.f.WriteAt(p, off)
		}
		if err != nil {
			return written, err
		}
	}
	if n < len(p) {
		w, err := d.f.WriteAt(p[n:], off+int64(n))
		written += w
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// Close waits for the background flush and closes the O_DIRECT descriptor
// (not the file given to NewDirectWriter). It does not make the writes
// durable: Sync does.
func (d *DirectWriter) Close() error {
	d.flushes.Wait()
	if d.direct == nil {
		return nil
	}
	err := d.direct.Close()
	d.direct = nil
	return err
}

// alignedBuffer returns a zero-length slice with capacity n whose first byte
// is directAlign-aligned.
func alignedBuffer(n int) []byte {
	b := bigBuffer(n + directAlign)
	skip := 0
	if r := uintptr(unsafe.Pointer(&b[0])) % directAlign; r != 0 {
		skip = int(directAlign - r)
	}
	return b[skip : skip : skip+n]
}
