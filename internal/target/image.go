// Package target opens the places a restore writes to. An Image is a disk
// image file (qcow2 or raw: a lab volume, a Nova ephemeral disk, an NFS-backed
// Cinder volume) written through qemu-nbd, so every format QEMU knows is
// written correctly and zero ranges become unallocated clusters instead of
// bytes.
package target

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/raksha-backup/raksha/internal/nbd"
)

// ErrNoQemuNBD means qemu-nbd is not installed.
var ErrNoQemuNBD = errors.New("qemu-nbd not found (install the Debian package qemu-utils, or run make test-deps)")

// ErrInUse means another process (a running QEMU) holds the image's write
// lock: the server using it must be stopped first.
var ErrInUse = errors.New("the disk image is in use by another process")

// ImageOptions tune OpenImage.
type ImageOptions struct {
	// Format is "qcow2" or "raw"; "" probes the file (qcow2 magic or raw).
	Format string
	// Conns is the number of NBD connections, one write in flight on each
	// (default 4).
	Conns int
}

// Image is a disk image open for writing. WriteAt is safe for concurrent use;
// Close must be called, and only after Close returned nil is every write
// durable.
type Image struct {
	path  string
	size  int64
	cmd   *exec.Cmd
	dir   string
	pool  chan *nbd.Conn
	conns []*nbd.Conn
	once  sync.Once
	err   error
	exit  chan struct{}
	stder *bytes.Buffer
}

// OpenImage serves path with qemu-nbd on a private unix socket and connects
// to it. It fails with ErrInUse when a running QEMU has the image open.
func OpenImage(ctx context.Context, path string, o ImageOptions) (*Image, error) {
	bin, err := exec.LookPath("qemu-nbd")
	if err != nil {
		return nil, ErrNoQemuNBD
	}
	if o.Conns <= 0 {
		o.Conns = 4
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("open disk image %s: %w", path, err)
	}
	if o.Format == "" {
		if o.Format, err = probe(path); err != nil {
			return nil, fmt.Errorf("open disk image %s: %w", path, err)
		}
	}
	if o.Format != "qcow2" && o.Format != "raw" {
		return nil, fmt.Errorf("open disk image %s: unsupported format %q (want qcow2 or raw)", path, o.Format)
	}
	dir, err := os.MkdirTemp("", "raksha-nbd-")
	if err != nil {
		return nil, fmt.Errorf("open disk image %s: %w", path, err)
	}
	sock := filepath.Join(dir, "s")
	im := &Image{path: path, dir: dir, exit: make(chan struct{}), stder: &bytes.Buffer{}}
	im.cmd = exec.Command(bin, "--socket="+sock, "--format="+o.Format, "--export-name=restore",
		fmt.Sprintf("--shared=%d", o.Conns), "--persistent", "--cache=writeback", "--aio=threads",
		"--discard=unmap", "--detect-zeroes=unmap", path)
	im.cmd.Stderr = im.stder
	// qemu-nbd holds the image's lock: it must not outlive a worker that is
	// killed (it flushes and exits on SIGTERM).
	im.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := im.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("open disk image %s: start qemu-nbd: %w", path, err)
	}
	go func() { im.cmd.Wait(); close(im.exit) }()
	if err := im.connect(ctx, sock, o.Conns); err != nil {
		im.stop()
		return nil, fmt.Errorf("open disk image %s: %w", path, err)
	}
	return im, nil
}

func (im *Image) connect(ctx context.Context, sock string, n int) error {
	deadline := time.Now().Add(15 * time.Second)
	im.pool = make(chan *nbd.Conn, n)
	for range n {
		c, err := im.dial(ctx, sock, deadline)
		if err != nil {
			return err
		}
		if c.ReadOnly() {
			c.Close()
			return errors.New("qemu-nbd exported the image read-only")
		}
		im.size = c.Size()
		im.conns = append(im.conns, c)
		im.pool <- c
	}
	return nil
}

// dial connects to qemu-nbd's export, retrying until deadline while
// qemu-nbd runs. A dial fails while qemu-nbd has not made its socket yet,
// and is refused after it made it but before it listens; qemu-nbd also
// makes its socket before it takes the image's lock, so a refusal may be
// qemu-nbd exiting on a lock held by a running QEMU (its exit says so). A
// fixed wait after the first refusal failed when the machine was loaded:
// qemu-nbd had neither exited nor listened within it.
func (im *Image) dial(ctx context.Context, sock string, deadline time.Time) (*nbd.Conn, error) {
	for {
		c, err := nbd.Dial(ctx, "unix", sock, "restore", nil)
		if err == nil {
			return c, nil
		}
		select {
		case <-im.exit:
			return nil, im.exited()
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no connection to qemu-nbd in 15 s (it did not open its socket, or did not accept): %w", err)
		}
	}
}

// exited is the error of a qemu-nbd that exited (im.exit closed, so its
// standard error is complete): ErrInUse when it could not take the image's
// lock.
func (im *Image) exited() error {
	msg := strings.TrimSpace(im.stder.String())
	if strings.Contains(msg, "lock") {
		return fmt.Errorf("%w: %s", ErrInUse, msg)
	}
	return fmt.Errorf("qemu-nbd exited: %s", msg)
}

// probe tells qcow2 from raw by the qcow2 magic.
func probe(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := f.ReadAt(magic, 0); err == nil && string(magic) == "QFI\xfb" {
		return "qcow2", nil
	}
	return "raw", nil
}

// Size is the virtual size of the image in bytes.
func (im *Image) Size() int64 { return im.size }

// zeroRun is the shortest run of zeros WriteAt sends as a write-zeroes
// request instead of bytes.
const zeroRun = 64 << 10

var zeroBlock = make([]byte, zeroRun)

// WriteAt writes p at off. Runs of zeros of 64 KiB or more (aligned to 64 KiB
// within p) become write-zeroes requests, so holes cost no bandwidth and stay
// unallocated in a qcow2 image.
func (im *Image) WriteAt(p []byte, off int64) (int, error) {
	c := <-im.pool
	defer func() { im.pool <- c }()
	start := 0 // first byte not yet sent
	for b := 0; b < len(p); b += zeroRun {
		e := min(b+zeroRun, len(p))
		if e-b < zeroRun || !bytes.Equal(p[b:e], zeroBlock) {
			continue
		}
		// p[b:e] is zero: send the data before it, then extend the run.
		z := e
		for z < len(p) {
			ze := min(z+zeroRun, len(p))
			if !bytes.Equal(p[z:ze], zeroBlock[:ze-z]) {
				break
			}
			z = ze
		}
		if b > start {
			if _, err := c.WriteAt(p[start:b], off+int64(start)); err != nil {
				return start, fmt.Errorf("write %s: %w", im.path, err)
			}
		}
		if err := c.WriteZeroes(off+int64(b), int64(z-b)); err != nil {
			return b, fmt.Errorf("write %s: %w", im.path, err)
		}
		start = z
		b = z - zeroRun // the loop adds zeroRun
	}
	if start < len(p) {
		if _, err := c.WriteAt(p[start:], off+int64(start)); err != nil {
			return start, fmt.Errorf("write %s: %w", im.path, err)
		}
	}
	return len(p), nil
}

// Sync flushes every write made so far to the image file (an NBD flush on
// every connection): after it, they survive qemu-nbd or this process being
// killed.
func (im *Image) Sync() error {
	for _, c := range im.conns {
		if err := c.Flush(); err != nil {
			return fmt.Errorf("sync %s: %w", im.path, err)
		}
	}
	return nil
}

// Close flushes every write to the image file, disconnects and stops
// qemu-nbd. The first error is returned, and again by later calls.
func (im *Image) Close() error {
	im.once.Do(func() {
		for _, c := range im.conns {
			if err := c.Flush(); err != nil && im.err == nil {
				im.err = fmt.Errorf("close %s: %w", im.path, err)
			}
			c.Close()
		}
		if err := im.stop(); err != nil && im.err == nil {
			im.err = fmt.Errorf("close %s: %w", im.path, err)
		}
	})
	return im.err
}

// stop ends qemu-nbd (it flushes the image on SIGTERM) and waits for it.
func (im *Image) stop() error {
	defer os.RemoveAll(im.dir)
	select {
	case <-im.exit:
		return nil
	default:
	}
	im.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-im.exit:
		return nil
	case <-time.After(30 * time.Second):
		im.cmd.Process.Kill()
		<-im.exit
		return errors.New("qemu-nbd did not stop in 30 s after SIGTERM")
	}
}
