package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/raksha-backup/raksha/internal/lab/vm"
)

// ErrNoQemuImg means qemu-img is not installed (Debian: qemu-utils).
var ErrNoQemuImg = errors.New("qemu-img not found (install the Debian package qemu-utils, or run make test-deps)")

// qemuImg runs qemu-img with args and returns its error output in the error.
func qemuImg(ctx context.Context, args ...string) error {
	bin, err := exec.LookPath("qemu-img")
	if err != nil {
		return ErrNoQemuImg
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("qemu-img %s: %w: %s", args[0], err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// createQcow2 creates an empty qcow2 image of sizeGB GiB at path.
func createQcow2(ctx context.Context, path string, sizeGB int) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create disk %s: %w", path, err)
	}
	if err := qemuImg(ctx, "create", "-q", "-f", "qcow2", path, strconv.Itoa(sizeGB)+"G"); err != nil {
		return fmt.Errorf("create disk %s: %w", path, err)
	}
	return nil
}

// copyQcow2 writes a standalone qcow2 copy of src (no backing file) at dst,
// grown to sizeGB GiB when that is larger. The copy is written to a
// temporary name and renamed, so dst never holds a partial image.
func copyQcow2(ctx context.Context, src, dst string, sizeGB int) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("copy disk %s: %w", src, err)
	}
	tmp := dst + ".part"
	if err := qemuImg(ctx, "convert", "-q", "-O", "qcow2", src, tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("copy disk %s: %w", src, err)
	}
	if sizeGB > 0 {
		vsize, err := virtualSize(ctx, tmp)
		if err != nil {
			os.Remove(tmp)
			return fmt.Errorf("copy disk %s: %w", src, err)
		}
		if want := int64(sizeGB) << 30; vsize < want {
			if err := qemuImg(ctx, "resize", "-q", tmp, strconv.Itoa(sizeGB)+"G"); err != nil {
				os.Remove(tmp)
				return fmt.Errorf("copy disk %s: grow to %d GiB: %w", src, sizeGB, err)
			}
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("copy disk %s: %w", src, err)
	}
	return nil
}

// virtualSize returns the virtual size of an image in bytes.
func virtualSize(ctx context.Context, path string) (int64, error) {
	bin, err := exec.LookPath("qemu-img")
	if err != nil {
		return 0, ErrNoQemuImg
	}
	out, err := exec.CommandContext(ctx, bin, "info", "-U", "--output=json", path).Output()
	if err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return info.VirtualSize, nil
}

// newDisk creates a blank disk, or, with format, one holding an empty ext4
// filesystem labelled label.
func newDisk(ctx context.Context, path string, sizeGB int, format bool, label string) error {
	if !format {
		return createQcow2(ctx, path, sizeGB)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create disk %s: %w", path, err)
	}
	return vm.CreateDisk(ctx, path, label, int64(sizeGB)<<30)
}

// volumeLabel is the filesystem label of a formatted volume.
func volumeLabel(name, id string) string {
	var b []byte
	for i := 0; i < len(name) && len(b) < 16; i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' {
			b = append(b, c)
		}
	}
	if len(b) == 0 {
		return "vol-" + id[:8]
	}
	return string(b)
}
