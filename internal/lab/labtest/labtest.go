// Package labtest starts lab clouds for tests of API clients (internal/cloud
// and others) that need the lab's OpenStack API but not running guests.
//
// Its Compute records which instances "run" and copies attached disks with
// qemu-img instead of booting QEMU. It exists for tests only: `raksha lab`
// always runs real QEMU guests.
package labtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/raksha-backup/raksha/internal/lab"
)

// Compute is a lab.Compute that starts nothing.
type Compute struct {
	mu      sync.Mutex
	running map[lab.InstanceRef][]lab.Disk
}

// NewCompute returns a Compute with nothing running.
func NewCompute() *Compute { return &Compute{running: map[lab.InstanceRef][]lab.Disk{}} }

// Start records the instance as running after checking its disk files
// exist (RBD drives are not checked).
func (c *Compute) Start(ctx context.Context, inst lab.Instance) error {
	for _, d := range inst.Disks {
		if d.RBD != nil {
			continue
		}
		if _, err := os.Stat(d.Path); err != nil {
			return fmt.Errorf("start %s: disk %s: %w", inst.Name, d.Node, err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.running[inst.InstanceRef] = append([]lab.Disk(nil), inst.Disks...)
	return nil
}

// Stop records the instance as stopped.
func (c *Compute) Stop(ctx context.Context, ref lab.InstanceRef) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.running, ref)
	return nil
}

// Running tells whether Start was called last.
func (c *Compute) Running(ctx context.Context, ref lab.InstanceRef) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.running[ref]
	return ok, nil
}

// Attach records the disk.
func (c *Compute) Attach(ctx context.Context, ref lab.InstanceRef, d lab.Disk) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.running[ref]; !ok {
		return fmt.Errorf("attach %s to %s: not running", d.Node, ref)
	}
	c.running[ref] = append(c.running[ref], d)
	return nil
}

// Detach forgets the disk.
func (c *Compute) Detach(ctx context.Context, ref lab.InstanceRef, node string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var keep []lab.Disk
	for _, d := range c.running[ref] {
		if d.Node != node {
			keep = append(keep, d)
		}
	}
	c.running[ref] = keep
	return nil
}

// CopyDisk copies the attached disk's file with qemu-img convert (nothing
// writes to it here, so the copy is point-in-time).
func (c *Compute) CopyDisk(ctx context.Context, ref lab.InstanceRef, node, target string) error {
	c.mu.Lock()
	var src string
	for _, d := range c.running[ref] {
		if d.Node == node {
			src = d.Path
		}
	}
	c.mu.Unlock()
	if src == "" {
		return fmt.Errorf("copy %s of %s: no such drive", node, ref)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "qemu-img", "convert", "-q", "-O", "qcow2", src, target)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("copy %s of %s: qemu-img convert: %w: %s", node, ref, err, stderr.Bytes())
	}
	return nil
}

// AdminPassword is the lab admin's password in labs started by Start.
const AdminPassword = "labtest-admin"

// Start starts a lab in a temporary directory with this package's Compute
// and an admin user (lab.AdminUser / AdminPassword), closed when the test
// ends. It skips the test when qemu-img is missing, and fails it in CI.
func Start(t testing.TB) *lab.Lab { return StartWith(t, lab.Options{}) }

// StartWith is Start with options (Dir and Compute are set here).
func StartWith(t testing.TB, opts lab.Options) *lab.Lab {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("qemu-img missing in CI: run make test-deps (Debian package qemu-utils)")
		}
		t.Skip("SKIP: qemu-img not installed — run `make test-deps` (Debian package qemu-utils)")
	}
	opts.Dir, opts.Compute = t.TempDir(), NewCompute()
	l, err := lab.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	if _, err := l.EnsureUser(lab.AdminUser, AdminPassword, lab.AdminProject, "admin"); err != nil {
		t.Fatal(err)
	}
	return l
}
