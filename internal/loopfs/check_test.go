package loopfs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestCheckNamesWhatIsMissing(t *testing.T) {
	dir := t.TempDir()
	fsList := filepath.Join(dir, "filesystems")
	must(t, os.WriteFile(fsList, []byte("nodev\tproc\n\text4\n"), 0o644))
	h := host{euid: 1000, loopControl: filepath.Join(dir, "loop-control"), filesystems: fsList,
		fuse: func() error { return errors.New("FUSE is not available: /dev/fuse: no such file or directory") }}
	err := h.check("xfs")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("%v", err)
	}
	for _, want := range []string{"an XFS mount needs root", "the loop driver (" + h.loopControl + ": no such file or directory)",
		"xfs in the kernel (not in " + fsList, "FUSE is not available"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	// a module the kernel would load is enough
	mods := filepath.Join(dir, "modules")
	must(t, os.MkdirAll(mods, 0o755))
	must(t, os.WriteFile(filepath.Join(mods, "modules.dep"), []byte("kernel/fs/xfs/xfs.ko.zst: kernel/lib/libcrc32c.ko.zst\n"), 0o644))
	must(t, os.WriteFile(h.loopControl, nil, 0o600))
	h = host{euid: 0, loopControl: h.loopControl, filesystems: fsList, modulesDir: mods, fuse: func() error { return nil }}
	if err := h.check("xfs"); err != nil {
		t.Fatal(err)
	}
	if err := h.check("btrfs"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("btrfs: %v", err)
	}
}

func TestCheckExt4(t *testing.T) {
	dir := t.TempDir()
	fsList := filepath.Join(dir, "filesystems")
	must(t, os.WriteFile(fsList, []byte("nodev\tproc\n\txfs\n"), 0o644))
	ctl := filepath.Join(dir, "loop-control")
	must(t, os.WriteFile(ctl, nil, 0o600))
	h := host{euid: 0, loopControl: ctl, filesystems: fsList, fuse: func() error { return nil }}
	if err := h.check("ext4"); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "an EXT4 mount needs ext4 in the kernel") {
		t.Fatalf("%v", err)
	}
	must(t, os.WriteFile(fsList, []byte("nodev\tproc\n\text4\n"), 0o644))
	if err := h.check("ext4"); err != nil {
		t.Fatal(err)
	}
	if r := mountData["ext4"].recover; strings.Contains(r, "noload") || strings.Contains(r, "norecovery") || !strings.HasPrefix(mountData["ext4"].norecover, "noload") {
		t.Fatalf("ext4 options: %+v (the mount with recovery must replay the journal)", mountData["ext4"])
	}
}
