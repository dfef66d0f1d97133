package guestapp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
)

// CheckImage checks the record files on an ext4 disk image (raw or qcow2)
// without mounting or changing it: it converts the image to a temporary raw
// copy (qemu-img, from qemu-utils), replays the journal on the copy (e2fsck
// -E journal_only), copies the raksha-writer directory out with debugfs
// (e2fsprogs) and runs CheckDir on that. Report.File names the path inside
// the image. It fails when the image holds no record file.
func CheckImage(ctx context.Context, image string, opts CheckOptions) ([]*Report, error) {
	tmp, err := os.MkdirTemp("", "guestapp-check-")
	if err != nil {
		return nil, fmt.Errorf("check image %s: %w", image, err)
	}
	defer os.RemoveAll(tmp)

	// Work on a temporary raw copy: the journal may hold the latest
	// records' metadata (a guest that was stopped or snapshotted without an
	// unmount), and debugfs does not replay it; e2fsck does, on the copy.
	fmtName := "raw"
	if qcow, err := isQcow2(image); err != nil {
		return nil, fmt.Errorf("check image %s: %w", image, err)
	} else if qcow {
		fmtName = "qcow2"
	}
	raw := filepath.Join(tmp, "disk.raw")
	if err := run(ctx, "qemu-img", "convert", "-f", fmtName, "-O", "raw", image, raw); err != nil {
		return nil, fmt.Errorf("check image %s: %w", image, err)
	}
	if err := run(ctx, "e2fsck", "-E", "journal_only", "-y", raw); err != nil && exitCode(err) > 1 {
		return nil, fmt.Errorf("check image %s: replay the journal: %w", image, err)
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

// exitCode is the exit status in err (-1 when err is not an exit status).
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
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
