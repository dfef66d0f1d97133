// Package agent is the inside of the file-restore appliance
// (internal/appliance): the program a throwaway QEMU guest runs to mount a
// tenant's XFS or ext4 volume with its own kernel and stream the requested
// tree to the host as a tar. It also holds the protocol both sides speak:
// the request on the kernel command line (EncodeRequest), the tar on the
// virtio-serial port PortName (Write), an acknowledgement byte back from
// the host, and the result line on the console (ResultPrefix).
//
// Nothing here is trusted by the host: a compromised guest kernel can send
// any bytes, and the host unpacks them with filerestore.ExtractTar.
package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/raksha-backup/raksha/internal/filerestore"
)

// PortName is the virtio-serial port the tar goes out on.
const PortName = "raksha.tar"

// CmdlineKey starts the kernel command-line word that carries the request.
const CmdlineKey = "raksha.req="

// ResultPrefix starts the console line that carries the Result as JSON.
const ResultPrefix = "RAKSHA-RESULT "

// Ack is the byte the host sends back on the port once it has read the
// whole tar; the agent powers off after it (or after a timeout).
const Ack = 'K'

// MaxPath bounds the requested path: it travels on the kernel command
// line, which holds 2048 bytes.
const MaxPath = 1024

// Request is what the host asks the appliance for.
type Request struct {
	// FSType is "xfs" or "ext4" (ext2/3/4).
	FSType string `json:"fstype"`
	// Path is the file or directory in the file system, as in
	// filerestore.Extract.
	Path string `json:"path"`
}

// Result is what the agent reports on the console.
type Result struct {
	OK bool `json:"ok"`
	// Stage is what failed: "request", "disk", "mount", "path" or "copy".
	Stage string `json:"stage,omitempty"`
	Error string `json:"error,omitempty"`
	// NotFound: Path is not in the file system.
	NotFound bool `json:"not_found,omitempty"`
	// Options are the mount options used.
	Options string `json:"options,omitempty"`
	// Replayed is how many bytes the log recovery wrote to the guest's
	// disk (a copy-on-write overlay on the host side).
	Replayed int64 `json:"replayed,omitempty"`
	// RecoveryErr is why the file system was mounted without log recovery.
	RecoveryErr string `json:"recovery_err,omitempty"`
	// Skipped lists what the agent left out of the tar and why.
	Skipped []string `json:"skipped,omitempty"`
}

// EncodeRequest returns the kernel command-line word carrying req.
func EncodeRequest(req Request) (string, error) {
	if req.FSType != "xfs" && req.FSType != "ext4" {
		return "", fmt.Errorf("appliance request: file system %q: want xfs or ext4", req.FSType)
	}
	if len(req.Path) > MaxPath {
		return "", fmt.Errorf("appliance request: path longer than %d bytes", MaxPath)
	}
	b, err := json.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("appliance request: %w", err)
	}
	return CmdlineKey + base64.RawURLEncoding.EncodeToString(b), nil
}

// DecodeRequest finds the request in a kernel command line.
func DecodeRequest(cmdline string) (Request, error) {
	var req Request
	for _, w := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(w, CmdlineKey)
		if !ok {
			continue
		}
		b, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil {
			return req, fmt.Errorf("decode the request: %w", err)
		}
		if err := json.Unmarshal(b, &req); err != nil {
			return req, fmt.Errorf("decode the request: %w", err)
		}
		return req, nil
	}
	return req, errors.New("no " + CmdlineKey + " on the kernel command line")
}

// ParseResult returns the last result line in a console log (false when
// there is none).
func ParseResult(console []byte) (Result, bool) {
	var res Result
	found := false
	for _, line := range bytes.Split(console, []byte("\n")) {
		i := bytes.Index(line, []byte(ResultPrefix))
		if i < 0 {
			continue
		}
		var r Result
		if json.Unmarshal(bytes.TrimSpace(line[i+len(ResultPrefix):]), &r) == nil {
			res, found = r, true
		}
	}
	return res, found
}

// Write writes the file, symlink or directory tree at p in the file system
// rooted at src to tw, named as filerestore.Extract would write it under
// its target (/etc/app as app, app/...; "/" as the root's contents):
// directories before their contents, a file with several names once and
// its other names as hard links to the first, symlinks as symlinks,
// devices and FIFOs as headers without data, permission bits with setuid,
// setgid and sticky and modification times kept, owners not. Directory
// loops, nesting past filerestore.MaxDepth, sockets and unsafe names are
// left out and returned as skipped. It does not close tw.
func Write(ctx context.Context, src *os.Root, p string, tw *tar.Writer) (skipped []string, err error) {
	clean := path.Clean("/" + p)
	rel, err := filerestore.ResolveIn(ctx, src, clean)
	if err != nil {
		return nil, err
	}
	x := &writer{src: src, tw: tw, visited: map[[2]uint64]bool{}, links: map[[2]uint64]string{}, buf: make([]byte, filerestore.CopyPiece)}
	if rel == "." {
		fi, err := src.Lstat(".")
		if err != nil {
			return nil, fmt.Errorf("/: %w", err)
		}
		x.visited[key(fi)] = true
		err = x.dirContents(ctx, ".", "", "/", 0)
		return x.skipped, err
	}
	err = x.entry(ctx, rel, path.Base(clean), clean, 0)
	return x.skipped, err
}

type writer struct {
	src     *os.Root
	tw      *tar.Writer
	visited map[[2]uint64]bool
	links   map[[2]uint64]string
	skipped []string
	buf     []byte
}

func key(fi fs.FileInfo) [2]uint64 {
	if s, ok := fi.Sys().(*syscall.Stat_t); ok {
		return [2]uint64{s.Dev, s.Ino}
	}
	return [2]uint64{}
}

func (x *writer) skip(src, why string) { x.skipped = append(x.skipped, src+": "+why) }

// entry writes rel (relative to the mount) as out (in the tar); src is its
// path in the file system, for messages.
func (x *writer) entry(ctx context.Context, rel, out, src string, depth int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fi, err := x.src.Lstat(rel)
	if err != nil {
		return fmt.Errorf("%s: %w", src, filerestore.UnwrapPath(err))
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	hdr := &tar.Header{Name: out, ModTime: fi.ModTime(), Format: tar.FormatPAX}
	if st != nil {
		hdr.Mode = int64(st.Mode & 0o7777)
	} else {
		hdr.Mode = int64(fi.Mode().Perm())
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
		hdr.Typeflag, hdr.Name = tar.TypeDir, out+"/"
		if err := x.tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
		return x.dirContents(ctx, rel, out, src, depth)
	case fi.Mode().IsRegular():
		k := key(fi)
		if first, ok := x.links[k]; ok {
			hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
			if err := x.tw.WriteHeader(hdr); err != nil {
				return fmt.Errorf("%s: %w", src, err)
			}
			return nil
		}
		if err := x.file(ctx, rel, src, hdr, fi.Size()); err != nil {
			return err
		}
		if st != nil && st.Nlink > 1 {
			x.links[k] = out
		}
		return nil
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := x.src.Readlink(rel)
		if err != nil {
			return fmt.Errorf("%s: %w", src, filerestore.UnwrapPath(err))
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		if err := x.tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
		return nil
	case fi.Mode()&fs.ModeNamedPipe != 0:
		hdr.Typeflag = tar.TypeFifo
	case fi.Mode()&fs.ModeCharDevice != 0:
		hdr.Typeflag = tar.TypeChar
	case fi.Mode()&fs.ModeDevice != 0:
		hdr.Typeflag = tar.TypeBlock
	default:
		x.skip(src, fmt.Sprintf("special file (mode %06o) not restored", hdr.Mode))
		return nil
	}
	if st != nil {
		hdr.Devmajor, hdr.Devminor = int64(major(st.Rdev)), int64(minor(st.Rdev))
	}
	if err := x.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	return nil
}

func major(d uint64) uint64 { return (d>>8)&0xfff | (d>>32)&^0xfff }
func minor(d uint64) uint64 { return d&0xff | (d>>12)&^0xff }

// dirContents writes the entries of directory rel, named under out.
func (x *writer) dirContents(ctx context.Context, rel, out, src string, depth int) error {
	d, err := x.src.Open(rel)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", src, filerestore.UnwrapPath(err))
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("read directory %s: %w", src, filerestore.UnwrapPath(err))
	}
	for _, n := range names {
		if n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\x00") {
			x.skip(fmt.Sprintf("%s/%q", src, n), "unsafe name")
			continue
		}
		if err := x.entry(ctx, path.Join(rel, n), path.Join(out, n), path.Join(src, n), depth+1); err != nil {
			return err
		}
	}
	return nil
}

// file writes the header and data of regular file rel.
func (x *writer) file(ctx context.Context, rel, src string, hdr *tar.Header, size int64) error {
	in, err := x.src.OpenFile(rel, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", src, filerestore.UnwrapPath(err))
	}
	defer in.Close()
	hdr.Typeflag, hdr.Size = tar.TypeReg, size
	if err := x.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := x.buf[:min(int64(len(x.buf)), size-off)]
		n, err := in.ReadAt(b, off)
		if n > 0 {
			if _, werr := x.tw.Write(b[:n]); werr != nil {
				return fmt.Errorf("%s: send: %w", src, werr)
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) && off < size {
			return fmt.Errorf("%s: the file ended at %d bytes, not %d", src, off, size)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("%s at offset %d: %w", src, off, filerestore.UnwrapPath(err))
		}
	}
	return nil
}
