package guestapp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
)

// CheckImage checks the record files on an ext4 disk image without mounting
// it: it copies the raksha-writer directory out with debugfs (e2fsprogs) and
// runs CheckDir on the copy. A qcow2 image is first converted to a temporary
// raw file with qemu-img (qemu-utils). Report.File names the path inside the
// image. It fails when the image holds no record file.
func CheckImage(ctx context.Context, image string, opts CheckOptions) ([]*Report, error) {
	tmp, err := os.MkdirTemp("", "guestapp-check-")
	if err != nil {
		return nil, fmt.Errorf("check image %s: %w", image, err)
	}
	defer os.RemoveAll(tmp)

	raw := image
	qcow, err := isQcow2(image)
	if err != nil {
		return nil, fmt.Errorf("check image %s: %w", image, err)
	}
	if qcow {
		raw = filepath.Join(tmp, "disk.raw")
		if err := run(ctx, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw); err != nil {
			return nil, fmt.Errorf("check image %s: %w", image, err)
		}
	}
	out := filepath.Join(tmp, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return nil, fmt.Errorf("check image %s: %w", image, err)
	}
	// debugfs reports a missing path on stderr yet exits 0: CheckDir then
	// finds nothing and says so.
	if err := run(ctx, "debugfs", "-R", "rdump /"+DirName+" "+out, raw); err != nil {
		return nil, fmt.Errorf("check image %s: %w", image, err)
	}
	reps, err := CheckDir(filepath.Join(out, DirName), opts)
	if err != nil {
		return nil, fmt.Errorf("check image %s: %w", image, err)
	}
	for _, r := range reps {
		r.File = "/" + DirName + "/" + filepath.Base(r.File)
	}
	return reps, nil
}

func isQcow2(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		return false, fmt.Errorf("read image header: %w", err)
	}
	return string(magic[:]) == "QFI\xfb", nil
}

func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}
