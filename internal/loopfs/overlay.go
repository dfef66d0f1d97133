package loopfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// overlayBlock is the unit the overlay copies on write.
const overlayBlock = 4096

// overlay is a private copy-on-write layer over a read-only volume: the
// writes of the kernel's log recovery land in an unlinked sparse file,
// reads see them over the volume. The backup is never written.
type overlay struct {
	base io.ReaderAt
	size int64
	f    *os.File

	mu      sync.RWMutex
	written map[int64]bool // overlayBlock indices held by f
}

// newOverlay makes the overlay's file in dir and unlinks it at once, so
// that nothing is left of it whatever happens.
func newOverlay(base io.ReaderAt, size int64, dir string) (*overlay, error) {
	f, err := os.CreateTemp(dir, "overlay-")
	if err != nil {
		return nil, fmt.Errorf("loop mount: overlay: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("loop mount: overlay: %w", err)
	}
	return &overlay{base: base, size: size, f: f, written: map[int64]bool{}}, nil
}

func (o *overlay) Close() error { return o.f.Close() }

// Bytes is how much the overlay holds.
func (o *overlay) Bytes() int64 {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return int64(len(o.written)) * overlayBlock
}

func (o *overlay) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > o.size {
		return 0, fmt.Errorf("overlay: write of %d bytes at %d beyond the %d-byte volume", len(p), off, o.size)
	}
	if len(p) == 0 {
		return 0, nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	first, last := off/overlayBlock, (off+int64(len(p))-1)/overlayBlock
	// blocks written in part are copied from the volume first
	for _, b := range []int64{first, last} {
		bs, be := b*overlayBlock, min((b+1)*overlayBlock, o.size)
		if o.written[b] || (off <= bs && off+int64(len(p)) >= be) {
			continue
		}
		buf := make([]byte, be-bs)
		if err := readFull(o.base, buf, bs); err != nil {
			return 0, fmt.Errorf("overlay: read the volume at %d: %w", bs, err)
		}
		if _, err := o.f.WriteAt(buf, bs); err != nil {
			return 0, fmt.Errorf("overlay: %w", err)
		}
		o.written[b] = true
	}
	n, err := o.f.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("overlay: %w", err)
	}
	for b := first; b <= last; b++ {
		o.written[b] = true
	}
	return n, nil
}

func (o *overlay) ReadAt(p []byte, off int64) (int, error) {
	if off >= o.size {
		return 0, io.EOF
	}
	var short error
	if rest := o.size - off; int64(len(p)) > rest {
		p, short = p[:rest], io.EOF
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	if len(o.written) == 0 {
		if err := readFull(o.base, p, off); err != nil {
			return 0, err
		}
		return len(p), short
	}
	// runs of blocks from the same side
	for done := 0; done < len(p); {
		pos := off + int64(done)
		b := pos / overlayBlock
		side := o.written[b]
		end := min((b+1)*overlayBlock, off+int64(len(p)))
		for end < off+int64(len(p)) && o.written[end/overlayBlock] == side {
			end = min(end+overlayBlock, off+int64(len(p)))
		}
		chunk := p[done : end-off]
		var err error
		if side {
			err = readFull(o.f, chunk, pos)
		} else {
			err = readFull(o.base, chunk, pos)
		}
		if err != nil {
			return done, err
		}
		done = int(end - off)
	}
	return len(p), short
}

// readFull reads len(p) bytes at off; a short read at the end of a file
// (the overlay's sparse file may end before the volume does) is zeros.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if err != nil && !(errors.Is(err, io.EOF)) {
		return err
	}
	if n < len(p) {
		if _, ok := r.(*os.File); !ok {
			return fmt.Errorf("short read: %d of %d bytes at %d: %w", n, len(p), off, io.ErrUnexpectedEOF)
		}
		clear(p[n:])
	}
	return nil
}
