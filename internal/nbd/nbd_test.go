package nbd_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/nbd"
)

// requireTools fails under CI and skips loudly elsewhere when QEMU's tools
// are missing.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			msg := fmt.Sprintf("%s not found (Debian package qemu-utils; run `make test-deps`)", tool)
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip("SKIPPED: " + msg)
		}
	}
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}

// serve exports img with qemu-nbd on a unix socket for the test's duration.
func serve(t *testing.T, img string, args ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	all := append([]string{"--socket=" + sock, "--format=qcow2", "--read-only", "--shared=4", "--persistent"}, args...)
	cmd := exec.Command("qemu-nbd", append(all, img)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
	}
	t.Fatal("qemu-nbd did not create its socket")
	return ""
}

func TestReadAndBlockStatusAgainstQemuNBD(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-io", "qemu-nbd")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 10M 3M", img)
	run(t, "qemu-img", "bitmap", "--add", img, "b1")
	// after the bitmap: 4 KiB at 20M and 100 KiB straddling 30M
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x33 20M 4k", "-c", "write -P 0x44 31407K 100K", img)
	raw := filepath.Join(dir, "disk.raw")
	run(t, "qemu-img", "convert", "-O", "raw", img, raw)
	want, _ := os.ReadFile(raw)

	sock := serve(t, img, "-B", "b1")
	ctx := context.Background()
	c, err := nbd.Dial(ctx, "unix", sock, "", []string{"base:allocation", "qemu:dirty-bitmap:b1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != 64<<20 {
		t.Fatalf("size %d", c.Size())
	}
	got := make([]byte, c.Size())
	for off := int64(0); off < c.Size(); off += 5 << 20 { // odd-sized reads across clusters and holes
		n := min(5<<20, c.Size()-off)
		if _, err := c.ReadAt(got[off:off+n], off); err != nil {
			t.Fatal(err)
		}
	}
	if sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatal("bytes read over NBD differ from qemu-img convert's")
	}

	alloc, err := c.BlockStatus("base:allocation", 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	var data int64
	for _, e := range alloc {
		if e.Flags&nbd.StateZero == 0 {
			data += e.Length
		}
	}
	if data < 4<<20+4<<10 || data > 5<<20 {
		t.Errorf("allocation reports %d data bytes, want about the 4.1 MiB written: %+v", data, alloc)
	}
	dirty, err := c.BlockStatus("qemu:dirty-bitmap:b1", 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	var d []nbd.Extent
	for _, e := range dirty {
		if e.Flags&nbd.StateDirty != 0 {
			d = append(d, e)
		}
	}
	// bitmap granularity is 64 KiB
	wantDirty := []nbd.Extent{{Offset: 20 << 20, Length: 64 << 10, Flags: 1}, {Offset: 31360 << 10, Length: 192 << 10, Flags: 1}}
	if fmt.Sprint(d) != fmt.Sprint(wantDirty) {
		t.Errorf("dirty extents %+v, want %+v", d, wantDirty)
	}
	// A server error does not break the connection.
	if _, err := c.ReadAt(make([]byte, 10), c.Size()-5); err == nil {
		t.Error("read past the end succeeded")
	}
	buf := make([]byte, 4)
	if _, err := c.ReadAt(buf, 20<<20); err != nil || !bytes.Equal(buf, []byte{0x33, 0x33, 0x33, 0x33}) {
		t.Errorf("read after an error: %v %x", err, buf)
	}
}

func TestMissingBitmapIsNoContext(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd")
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "1M")
	sock := serve(t, img)
	c, err := nbd.Dial(context.Background(), "unix", sock, "", []string{"qemu:dirty-bitmap:nope"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.HasContext("qemu:dirty-bitmap:nope") {
		t.Fatal("server claims a bitmap that does not exist")
	}
	if _, err := c.BlockStatus("qemu:dirty-bitmap:nope", 0, 1<<20); !errors.Is(err, nbd.ErrNoContext) {
		t.Fatalf("block status of a missing bitmap: %v, want ErrNoContext", err)
	}
}
