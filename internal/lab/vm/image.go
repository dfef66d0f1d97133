package vm

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

// Image is a built lab guest: kernel, initramfs and root disk image
// (scripts/build-guest.sh).
type Image struct {
	// Kernel and Initrd are the paths of vmlinuz and initrd.gz. Booted
	// without root= on the kernel command line, the guest runs from the
	// initramfs alone.
	Kernel, Initrd string
	// Root is the path of root.img: a sparse raw ext4 image labelled "root"
	// holding the initramfs's tree (and the marker /etc/raksha-rootfs). Boot
	// it, or a qcow2 overlay on it, as the first virtio disk with
	// "root=/dev/vda" on the kernel command line (Config.ExtraAppend), as
	// Nova boots an AMI-style image: the initramfs's /init mounts it
	// read-write as / and switch_roots into it, and the guest also mounts it
	// at /data/root, where the record writer writes too. The file is the
	// cached build: boot copies or overlays of it, never the file itself.
	Root string
	// Key is the hash of the image's inputs.
	Key string
	// BuildDuration is how long BuildImage took (a cache hit is quick).
	BuildDuration time.Duration
}

// ImageOptions configures BuildImage.
type ImageOptions struct {
	// RepoRoot is this repository's root (found with RepoRoot when empty).
	RepoRoot string
	// CacheDir is where builds are cached (<RepoRoot>/.cache/guest when empty).
	CacheDir string
}

// BuildImage runs scripts/build-guest.sh, which builds the lab guest from
// Debian packages or reuses the cached build whose inputs are unchanged,
// and returns the image's paths. It fails with the script's output when the
// script fails (e.g. busybox-static or qemu-guest-agent not installed).
func BuildImage(ctx context.Context, opts ImageOptions) (*Image, error) {
	start := time.Now()
	root := opts.RepoRoot
	if root == "" {
		var err error
		if root, err = RepoRoot(); err != nil {
			return nil, fmt.Errorf("build guest image: %w", err)
		}
	}
	args := []string{filepath.Join(root, "scripts", "build-guest.sh")}
	if opts.CacheDir != "" {
		args = append(args, opts.CacheDir)
	}
	cmd := exec.CommandContext(ctx, "bash", args...)
	cmd.Dir = root
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("build guest image: scripts/build-guest.sh: %w: %s", err, tail(stderr.Bytes(), 2000))
	}
	img := &Image{}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "kernel":
			img.Kernel = v
		case "initrd":
			img.Initrd = v
		case "root":
			img.Root = v
		case "key":
			img.Key = v
		}
	}
	if img.Kernel == "" || img.Initrd == "" || img.Root == "" {
		return nil, fmt.Errorf("build guest image: scripts/build-guest.sh printed no kernel=, initrd= and root= lines: %s", tail(stdout.Bytes(), 500))
	}
	img.BuildDuration = time.Since(start)
	return img, nil
}

// RepoRoot returns the directory of this module's go.mod that holds
// scripts/build-guest.sh, searched upwards from the working directory (a
// test runs in its package's directory) and then from this source file.
func RepoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for d := dir; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "scripts", "build-guest.sh")); err == nil {
				if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
					return d, nil
				}
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", errors.New("repository root with scripts/build-guest.sh not found above the working directory")
}

// tail returns the last n bytes of b, trimmed.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}
