// Package appliance contains the kernel mounts of tenants' file systems:
// instead of loop-mounting a backed-up XFS or ext4 volume in the operator's
// kernel (internal/loopfs), it boots a throwaway QEMU guest — the
// appliance: a kernel and a small busybox initramfs built by
// scripts/build-appliance.sh — that gets the volume as its only disk
// behind a copy-on-write snapshot (journal or log replay writes land in a
// temporary overlay, never in the backup), mounts it read-only with its
// own kernel and streams the requested tree back as a tar over a
// virtio-serial port (package agent). The host unpacks that tar with
// filerestore.ExtractTar, which treats it as hostile: a compromised
// appliance kernel can send any bytes, and none lands outside the target.
//
// The guest has no network, 256 MiB of memory by default, one CPU, KVM
// when /dev/kvm can be opened (TCG otherwise), QEMU's seccomp sandbox, and
// a boot timeout, an idle timeout and an overall one. QEMU is killed and its private
// directory (sockets, console log, the snapshot overlay) removed whatever
// happens.
package appliance

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Image is a built appliance: its kernel and initramfs.
type Image struct {
	Kernel, Initrd string
}

// EnvDir names the environment variable that may hold the directory of a
// built appliance (what scripts/build-appliance.sh prints as dir=).
const EnvDir = "RAKSHA_APPLIANCE"

// ErrNoImage is returned (wrapped) when no appliance image is found.
var ErrNoImage = errors.New("no appliance image")

// FindImage returns the appliance in dir (vmlinuz and initrd.gz), or in
// the directory EnvDir names when dir is "". The error says how to build
// one.
func FindImage(dir string) (Image, error) {
	from := "--appliance"
	if dir == "" {
		dir, from = os.Getenv(EnvDir), EnvDir
	}
	if dir == "" {
		return Image{}, fmt.Errorf("%w: build one with scripts/build-appliance.sh (it prints dir=DIR) and give --appliance DIR or set %s=DIR", ErrNoImage, EnvDir)
	}
	img := Image{Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.gz")}
	for _, p := range []string{img.Kernel, img.Initrd} {
		if _, err := os.Stat(p); err != nil {
			return Image{}, fmt.Errorf("%w in %s (%s): %v; build one with scripts/build-appliance.sh", ErrNoImage, dir, from, err)
		}
	}
	return img, nil
}

// BuildOptions configure BuildImage.
type BuildOptions struct {
	// RepoRoot is this repository's root (found upwards from the working
	// directory and this source file when empty).
	RepoRoot string
	// CacheDir is where builds are cached (<RepoRoot>/.cache/appliance
	// when empty).
	CacheDir string
}

// BuildImage runs scripts/build-appliance.sh, which builds the appliance
// or reuses the cached build whose inputs are unchanged, and returns it.
// It is for tests and development; an installed raksha is given a built
// appliance (FindImage).
func BuildImage(ctx context.Context, opts BuildOptions) (Image, error) {
	root := opts.RepoRoot
	if root == "" {
		var err error
		if root, err = repoRoot(); err != nil {
			return Image{}, fmt.Errorf("build the appliance: %w", err)
		}
	}
	args := []string{filepath.Join(root, "scripts", "build-appliance.sh")}
	if opts.CacheDir != "" {
		args = append(args, opts.CacheDir)
	}
	cmd := exec.CommandContext(ctx, "bash", args...)
	cmd.Dir = root
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return Image{}, fmt.Errorf("build the appliance: scripts/build-appliance.sh: %w: %s", err, tail(stderr.Bytes(), 2000))
	}
	var img Image
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "kernel":
			img.Kernel = v
		case "initrd":
			img.Initrd = v
		}
	}
	if img.Kernel == "" || img.Initrd == "" {
		return Image{}, fmt.Errorf("build the appliance: scripts/build-appliance.sh printed no kernel= and initrd= lines: %s", tail(stdout.Bytes(), 500))
	}
	return img, nil
}

func repoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for d := dir; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "scripts", "build-appliance.sh")); err == nil {
				return d, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", errors.New("repository root with scripts/build-appliance.sh not found")
}

// tail returns the last n bytes of b, trimmed.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}

// Check names what the appliance needs and is missing here: QEMU.
func Check() error {
	if _, err := exec.LookPath(qemuBinary); err != nil {
		return fmt.Errorf("the appliance needs %s (Debian package qemu-system-x86): %w", qemuBinary, err)
	}
	return nil
}

const qemuBinary = "qemu-system-x86_64"

// kvm reports whether /dev/kvm can be opened for QEMU.
func kvm() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// DefaultMemoryMiB is the appliance's memory unless Options say otherwise.
const DefaultMemoryMiB = 256

// Default timeouts: until the appliance has mounted the volume and starts
// sending (BootTimeout, longer without KVM), between two reads of its tar
// (IdleTimeout), and for the whole extraction.
const (
	DefaultBootTimeout    = 60 * time.Second
	DefaultBootTimeoutTCG = 300 * time.Second
	DefaultIdleTimeout    = 5 * time.Minute
	DefaultTimeout        = 6 * time.Hour
)
