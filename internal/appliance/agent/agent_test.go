package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/raksha-backup/raksha/internal/filerestore"
)

// TestWriteRoundTrip: what Write sends, filerestore.ExtractTar writes as
// filerestore.Extract would: data intact, setuid stripped (or kept), hard
// links once, symlinks as symlinks (also in the looked-up path), FIFOs
// skipped.
func TestWriteRoundTrip(t *testing.T) {
	src := t.TempDir()
	app := filepath.Join(src, "etc/app")
	if err := os.MkdirAll(filepath.Join(app, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 300000)
	big = append(big, make([]byte, 1<<20)...) // a zero tail: a hole in the target
	for n, b := range map[string][]byte{"big": big, "suid": []byte("x"), "sub/a": []byte("a")} {
		if err := os.WriteFile(filepath.Join(app, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(app, "suid"), fs.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(app, "big"), filepath.Join(app, "sub/big2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/app", filepath.Join(src, "conf")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(app, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, keep := range []bool{false, true} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		skipped, err := Write(context.Background(), root, "/conf", tw)
		if err != nil {
			t.Fatal(err)
		}
		// "/conf" is a symlink as the last component: written as one
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		if len(skipped) != 0 {
			t.Errorf("skipped %v", skipped)
		}
		buf.Reset()
		tw = tar.NewWriter(&buf)
		if _, err := Write(context.Background(), root, "/conf/", tw); err != nil {
			t.Fatal(err)
		}
		tw.Close()
		to := t.TempDir()
		st, err := filerestore.ExtractTar(context.Background(), &buf, to, "/", filerestore.ExtractOptions{KeepSpecialBits: keep})
		if err != nil {
			t.Fatal(err)
		}
		// "/conf/" cleans to "/conf": the symlink itself
		if l, err := os.Readlink(filepath.Join(to, "conf")); err != nil || l != "/etc/app" || st.Symlinks != 1 {
			t.Fatalf("conf: %q %v %+v", l, err, st)
		}
		// the tree under its own name
		buf.Reset()
		tw = tar.NewWriter(&buf)
		if _, err := Write(context.Background(), root, "/etc/app", tw); err != nil {
			t.Fatal(err)
		}
		tw.Close()
		to = t.TempDir()
		st, err = filerestore.ExtractTar(context.Background(), &buf, to, "/", filerestore.ExtractOptions{KeepSpecialBits: keep})
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(to, "app/big"))
		if err != nil || sha256.Sum256(b) != sha256.Sum256(big) {
			t.Fatalf("big: %v", err)
		}
		a, _ := os.Stat(filepath.Join(to, "app/big"))
		c, _ := os.Stat(filepath.Join(to, "app/sub/big2"))
		if !os.SameFile(a, c) || st.Hardlinks != 1 {
			t.Errorf("big and sub/big2 are not one file: %+v", st)
		}
		if s, ok := a.Sys().(*syscall.Stat_t); ok && s.Blocks*512 >= int64(len(big)) {
			t.Errorf("big: %d bytes allocated for %d: the zero tail is not a hole", s.Blocks*512, len(big))
		}
		fi, _ := os.Stat(filepath.Join(to, "app/suid"))
		if got := fi.Mode()&fs.ModeSetuid != 0; got != keep {
			t.Errorf("keep %v: suid mode %v", keep, fi.Mode())
		}
		if !keep && st.SpecialBitsStripped != 1 {
			t.Errorf("stripped %d", st.SpecialBitsStripped)
		}
		if len(st.Skipped) != 1 || !strings.Contains(st.Skipped[0], "fifo") {
			t.Errorf("skipped %v", st.Skipped)
		}
	}
}

// TestRequest: the request survives the kernel command line; the result
// is found in a console log.
func TestRequest(t *testing.T) {
	w, err := EncodeRequest(Request{FSType: "xfs", Path: "/a b/\"c\"\n"})
	if err != nil {
		t.Fatal(err)
	}
	req, err := DecodeRequest("console=ttyS0 quiet " + w + " panic=-1")
	if err != nil || req.Path != "/a b/\"c\"\n" || req.FSType != "xfs" {
		t.Fatalf("%+v %v", req, err)
	}
	if _, err := EncodeRequest(Request{FSType: "ntfs", Path: "/"}); err == nil {
		t.Error("ntfs accepted")
	}
	if _, err := EncodeRequest(Request{FSType: "xfs", Path: strings.Repeat("a", MaxPath+1)}); err == nil {
		t.Error("a long path accepted")
	}
	res, ok := ParseResult([]byte("boot\n[ 1.0] x\n" + ResultPrefix + `{"ok":false,"stage":"path","not_found":true}` + "\r\n[ 2.0] reboot\n"))
	if !ok || res.Stage != "path" || !res.NotFound {
		t.Errorf("%+v %v", res, ok)
	}
}
