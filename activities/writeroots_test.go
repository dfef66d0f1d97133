package activities

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.temporal.io/sdk/testsuite"
)

// TestWriteDiskOnlyUnderWriteRoots restores a disk with WriteDisk into an
// image under the worker's write roots (written), then into images outside
// them: a path elsewhere, one escaping through "..", and one reached
// through a symlink inside a root that points out. Each is refused naming
// the path and the roots, and the file outside is left untouched.
func TestWriteDiskOnlyUnderWriteRoots(t *testing.T) {
	ctx := context.Background()
	base, wl, _ := restoreRepo(t, "right")
	dir := t.TempDir()
	root, outside := filepath.Join(dir, "volumes"), filepath.Join(dir, "elsewhere")
	for _, d := range []string{root, outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a := New(Config{Repos: base.cfg.Repos, WriteRoots: []string{root}})
	write := func(a *Activities, in WriteDiskInput) error {
		var s testsuite.WorkflowTestSuite
		env := s.NewTestActivityEnvironment()
		RegisterRole(env, a, RoleHost)
		_, err := env.ExecuteActivity("WriteDisk", in)
		return err
	}
	manifest := wl + "/db/vol-v1"
	m, err := base.repoNaming(ctx, "main", "test")
	if err != nil {
		t.Fatal(err)
	}
	dm, err := m.LoadManifest(ctx, manifest)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(p string) {
		if err := os.WriteFile(p, bytes.Repeat([]byte{0xee}, int(dm.Size)), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	inside := filepath.Join(root, "volume-1.raw")
	mk(inside)
	if err := write(a, WriteDiskInput{Repository: "main", Manifest: manifest, Target: WriteTarget{Kind: "image", Path: inside, Format: "raw"}}); err != nil {
		t.Fatalf("write under the root: %v", err)
	}
	if got, _ := os.ReadFile(inside); !bytes.HasPrefix(got, []byte("data")) {
		t.Errorf("the image under the root was not written: %q", got[:8])
	}

	victim := filepath.Join(outside, "host-file.raw")
	mk(victim)
	if err := os.Symlink(victim, filepath.Join(root, "link.raw")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{victim, filepath.Join(root, "..", "elsewhere", "host-file.raw"), filepath.Join(root, "link.raw"), root} {
		err := write(a, WriteDiskInput{Repository: "main", Manifest: manifest, Target: WriteTarget{Kind: "image", Path: p, Format: "raw"}})
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), root) {
			t.Errorf("write to %s: %v, want refused naming the path and the root %s", p, err, root)
		}
	}
	if got, _ := os.ReadFile(victim); !bytes.Equal(got, bytes.Repeat([]byte{0xee}, int(dm.Size))) {
		t.Error("the file outside the roots was written")
	}

	// A worker without roots (a data worker by default) writes no file.
	d := New(Config{Repos: base.cfg.Repos})
	err = write(d, WriteDiskInput{Repository: "main", Manifest: manifest, Target: WriteTarget{Kind: "image", Path: inside, Format: "raw"}})
	if err == nil || !strings.Contains(err.Error(), "no write roots") {
		t.Errorf("write on a worker without roots: %v", err)
	}
	if got := DefaultWriteRoots(Config{HostDir: "/lab/hosts/h1"}); len(got) != 2 || filepath.Clean(got[1]) != "/lab/volumes" {
		t.Errorf("default roots of the socket layout %v", got)
	}
}
