// Package blockvm runs a QEMU process with qcow2 drives and no guest, for
// tests of the block layer: QMP, dirty bitmaps, fleecing and NBD exports are
// all real, and writes come through HMP's qemu-io, mirrored in a model of
// each disk so tests know what every point in time must read as.
package blockvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/disk/qemu"
)

// Require fails the test under CI, and skips it loudly elsewhere, when QEMU
// is not installed.
func Require(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			msg := fmt.Sprintf("%s not found (Debian packages qemu-system-x86, qemu-utils; run `make test-deps`)", tool)
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip("SKIPPED: " + msg)
		}
	}
}

// VM is a guestless QEMU with one drive: BlockBackend "drv0", format node
// "data0". Like a lab guest it has two QMP monitors: QMP (the socket given
// to Start) is left free for Raksha, the test talks on its own.
type VM struct {
	t   testing.TB
	Img string
	QMP string
	cmd *exec.Cmd
	Mon *qemu.Monitor
	// Model is what the disk holds, as far as the test's writes go.
	Model []byte
}

// CreateImage makes an empty qcow2 image of size bytes.
func CreateImage(t testing.TB, path string, size int64) {
	t.Helper()
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", path, fmt.Sprint(size)).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
}

// Start starts QEMU on img with its QMP socket at qmpSock. model is the
// disk's content so far (a new image: zeros of its size).
func Start(t testing.TB, img, qmpSock string, model []byte) *VM {
	t.Helper()
	os.MkdirAll(filepath.Dir(qmpSock), 0o755)
	os.Remove(qmpSock)
	testSock := qmpSock + ".test"
	os.Remove(testSock)
	cmd := exec.Command("qemu-system-x86_64", "-machine", "none", "-accel", "tcg", "-nodefaults", "-display", "none",
		"-qmp", "unix:"+qmpSock+",server=on,wait=off",
		"-qmp", "unix:"+testSock+",server=on,wait=off",
		"-drive", "if=none,id=drv0,node-name=data0,format=qcow2,file="+img)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	v := &VM{t: t, Img: img, QMP: qmpSock, cmd: cmd, Model: model}
	t.Cleanup(v.Kill)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		mon, err := qemu.DialMonitor(ctx, testSock)
		if err == nil {
			v.Mon = mon
			return v
		}
		if ctx.Err() != nil {
			t.Fatalf("QMP did not come up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill stops QEMU at once.
func (v *VM) Kill() {
	if v.cmd.ProcessState == nil {
		v.cmd.Process.Kill()
		v.cmd.Wait()
	}
}

// Quit asks QEMU to quit (bitmaps are written to the image) and waits.
func (v *VM) Quit() {
	v.Mon.Run(context.Background(), "quit", nil, nil)
	v.cmd.Wait()
}

// Write writes n bytes of pattern p at off in QEMU and in the model.
func (v *VM) Write(p byte, off, n int64) {
	v.t.Helper()
	out, err := v.Mon.HMP(context.Background(), fmt.Sprintf(`qemu-io drv0 "write -P 0x%02x %d %d"`, p, off, n))
	if err != nil || strings.Contains(out, "error") {
		v.t.Fatalf("qemu-io write: %v %s", err, out)
	}
	for i := off; i < off+n; i++ {
		v.Model[i] = p
	}
}
