package appliance

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/filerestore"
)

// compromised returns an appliance whose guest is hostile: the real
// kernel and initramfs with a second initramfs archive appended (the
// kernel unpacks both, the later files winning) whose /init sends the tar
// stream instead of the agent's, then claims success.
func compromised(t *testing.T, img Image, stream []byte) Image {
	return compromisedThen(t, img, stream, "sleep 2\necho 'RAKSHA-RESULT {\"ok\":true}'\npoweroff -f")
}

// compromisedThen is compromised with the shell commands then run after
// sending.
func compromisedThen(t *testing.T, img Image, stream []byte, then string) Image {
	t.Helper()
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI: busybox (busybox-static) not installed: make test-deps installs it")
		}
		t.Skip("SKIPPED: busybox not installed: run make test-deps (busybox-static)")
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	script := `#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/load-order); do insmod /lib/modules/$m 2>/dev/null; done
sleep 1
for p in /sys/class/virtio-ports/*; do
  [ "$(cat $p/name)" = raksha.tar ] && cat /hostile.tar > /dev/${p##*/}
done
` + then + "\n"
	if err := os.WriteFile(filepath.Join(tree, "init"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "hostile.tar"), stream, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(busybox, "cpio", "-o", "-H", "newc")
	cmd.Dir, cmd.Stdin = tree, strings.NewReader("init\nhostile.tar\n")
	var cpio bytes.Buffer
	cmd.Stdout = &cpio
	if err := cmd.Run(); err != nil {
		t.Fatalf("cpio: %v", err)
	}
	base, err := os.ReadFile(img.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(cpio.Bytes())
	zw.Close()
	initrd := filepath.Join(dir, "initrd.gz")
	if err := os.WriteFile(initrd, append(base, gz.Bytes()...), 0o644); err != nil {
		t.Fatal(err)
	}
	return Image{Kernel: img.Kernel, Initrd: initrd}
}

// TestCompromisedAppliance: a guest that sends a tar built to escape
// (a symlink to a directory outside the target, then a file through it;
// a name climbing out with ".."; a file declaring a petabyte) is refused
// with the error naming the entry, and nothing lands outside the target.
func TestCompromisedAppliance(t *testing.T) {
	img := needImage(t)
	tmp := privateTmp(t)
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	mk := func(hdrs ...*tar.Header) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range hdrs {
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg && h.Size < 1<<20 {
				tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
			}
		}
		// (the petabyte's data is missing: Flush says so, the header is out)
		_ = tw.Flush()
		return b.Bytes()
	}
	for _, c := range []struct {
		name   string
		stream []byte
		want   error
		says   string
	}{
		{"symlink then file through it", mk(
			&tar.Header{Name: "app/", Typeflag: tar.TypeDir, Mode: 0o755},
			&tar.Header{Name: "app/s", Typeflag: tar.TypeSymlink, Linkname: outside},
			&tar.Header{Name: "app/s/pwned", Typeflag: tar.TypeReg, Size: 5, Mode: 0o644}),
			filerestore.ErrHostileArchive, `"app/s/pwned": its parent "app/s" is not a directory this restore made`},
		{"dot-dot", mk(&tar.Header{Name: "../outside/pwned", Typeflag: tar.TypeReg, Size: 5, Mode: 0o644}),
			filerestore.ErrHostileArchive, `".." in the path`},
		{"a petabyte", mk(&tar.Header{Name: "huge", Typeflag: tar.TypeReg, Size: 1 << 50, Mode: 0o644}),
			filerestore.ErrBudget, "more than"},
	} {
		t.Run(c.name, func(t *testing.T) {
			to := filepath.Join(base, "to")
			os.RemoveAll(to)
			_, err := Extract(context.Background(), compromised(t, img, c.stream), disk, "xfs", "/etc/app", to, Options{})
			var ae *Error
			if !errors.Is(err, c.want) || !errors.As(err, &ae) || ae.Stage != "unpack" || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("got %v, want %v saying %q", err, c.want, c.says)
			}
			if ents, _ := os.ReadDir(outside); len(ents) > 0 {
				t.Fatalf("written outside the target: %v", ents)
			}
			if _, err := os.Lstat(filepath.Join(to, "huge")); err == nil {
				t.Fatal("huge written")
			}
			t.Logf("refused: %v", strings.SplitN(err.Error(), "\n", 2)[0])
		})
	}
	noLeftovers(t, tmp)
}

// TestStalledAppliance: a guest that sends part of a file and then
// nothing is killed after the idle timeout, and the error says so.
func TestStalledAppliance(t *testing.T) {
	img := needImage(t)
	tmp := privateTmp(t)
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: "slow", Typeflag: tar.TypeReg, Size: 1 << 20, Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	tw.Write(make([]byte, 1000))
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Extract(context.Background(), compromisedThen(t, img, b.Bytes(), "sleep 3600"), disk, "xfs", "/slow", t.TempDir(), Options{IdleTimeout: 2 * time.Second})
	var ae *Error
	if !errors.As(err, &ae) || ae.Stage != "timeout" || !strings.Contains(err.Error(), "idle timeout (2s)") {
		t.Fatalf("got %v, want the idle timeout", err)
	}
	noLeftovers(t, tmp)
}
