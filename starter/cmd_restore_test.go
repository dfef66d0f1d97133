package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ext4Image makes a 64 MiB ext4 image holding etc/app/{app.conf,big.bin,
// link} and returns its path and the staging directory.
func ext4Image(t *testing.T) (string, string) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("mkfs.ext4 missing in CI: run make test-deps (Debian package e2fsprogs)")
		}
		t.Skip("SKIPPED: mkfs.ext4 (e2fsprogs) not installed: run make test-deps")
	}
	staging := filepath.Join(t.TempDir(), "staging")
	app := filepath.Join(staging, "etc", "app")
	if err := os.MkdirAll(app, 0o755); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	for name, data := range map[string][]byte{"app.conf": []byte("port = 8080\n"), "big.bin": big} {
		if err := os.WriteFile(filepath.Join(app, name), data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("app.conf", filepath.Join(app, "link")); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "root.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", staging, img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return img, staging
}

func TestCLIRestoreFiles(t *testing.T) {
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "1MiB")
	img, staging := ext4Image(t)
	var b diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", img)), &b); err != nil {
		t.Fatal(err)
	}
	to := filepath.Join(t.TempDir(), "out")

	out := c.must("restore", "files", b.ID, "--vm", "local", "--disk", "root.img", "--path", "/etc/app/", "--to", to)
	if !strings.Contains(out, "2 files") || !strings.Contains(out, "1 symlinks") || !strings.Contains(out, "of 64 chunks") {
		t.Fatalf("output: %s", out)
	}
	for _, name := range []string{"app.conf", "big.bin"} {
		if sum(t, filepath.Join(to, "app", name)) != sum(t, filepath.Join(staging, "etc/app", name)) {
			t.Fatalf("%s differs", name)
		}
	}
	if target, err := os.Readlink(filepath.Join(to, "app", "link")); err != nil || target != "app.conf" {
		t.Fatalf("link: %q, %v", target, err)
	}

	// json, one file, the disk named as VM/DISK
	var res restoreFilesResult
	js := c.must("restore", "files", b.ID, "--disk", "local/root.img", "--path", "/etc/app/app.conf", "--to", filepath.Join(to, "json"), "-f", "json")
	if err := json.Unmarshal([]byte(js), &res); err != nil {
		t.Fatalf("%v: %s", err, js)
	}
	if res.Files != 1 || res.DiskChunks != 64 || res.Fetch.ChunksFetched == 0 || res.Fetch.ChunksFetched > 4 {
		t.Fatalf("json result: %s", js)
	}
	t.Logf("directory output:\n%s\none file: fetched %d of %d chunks", out, res.Fetch.ChunksFetched, res.DiskChunks)

	// errors: a missing path, a disk that is not there, missing flags
	_, _, err := c.run("restore", "files", b.ID, "--path", "/etc/nope", "--to", to)
	if err == nil || !strings.Contains(err.Error(), "no such file or directory in the backup: /etc/nope") ||
		!strings.Contains(err.Error(), b.ID) || exitCode(err) != 1 {
		t.Fatalf("missing path: %v", err)
	}
	_, _, err = c.run("restore", "files", b.ID, "--vm", "web", "--path", "/etc", "--to", to)
	if err == nil || !strings.Contains(err.Error(), "no disk matching") || exitCode(err) != 2 {
		t.Fatalf("wrong vm: %v", err)
	}
	_, _, err = c.run("restore", "files", b.ID, "--path", "/etc")
	if err == nil || exitCode(err) != 2 {
		t.Fatalf("no --to: %v", err)
	}
}

func TestCLIRestoreFilesNotExt4(t *testing.T) {
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "64KiB")
	img := writeImage(t, 1<<20)
	var b diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", img)), &b); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.run("restore", "files", b.ID, "--path", "/", "--to", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "not an ext2/3/4 file system") {
		t.Fatalf("random disk: %v", err)
	}
}
