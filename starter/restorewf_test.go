package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raksha-backup/raksha/workflows"
)

// TestRestoreMapFile: the mapping file's entries, with the flags on top.
func TestRestoreMapFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "map.yaml")
	os.WriteFile(p, []byte("networks:\n  prod-net: staging-net\n  db-net: staging-db\nflavors: {m1.large: m1.small}\n"), 0o600)
	rf := restoreFlags{mapFile: p, networks: []string{"db-net=other"}}
	rf.req.Repository = "main"
	if err := rf.finish("b1"); err != nil {
		t.Fatal(err)
	}
	want := workflows.RestoreRequest{Repository: "main", BackupID: "b1"}
	if rf.req.Networks["prod-net"] != "staging-net" || rf.req.Networks["db-net"] != "other" || rf.req.Flavors["m1.large"] != "m1.small" ||
		rf.req.BackupID != want.BackupID {
		t.Errorf("request %+v", rf.req)
	}
}

// TestCLIRestoreAndCloneUsage checks the restore and clone commands' input
// errors: they fail before any Temporal connection, with exit code 2.
func TestCLIRestoreAndCloneUsage(t *testing.T) {
	c := &cli{t: t, env: map[string]string{"RAKSHA_TEMPORAL": "127.0.0.1:1"}}
	dir := t.TempDir()
	badKey := filepath.Join(dir, "bad-key.yaml")
	os.WriteFile(badKey, []byte("networks: {a: b}\nimages: {x: y}\n"), 0o600)
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, []byte("flavors: {m1: \"\"}\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"restore", "start", "b1"}, "--repository is required"},
		{[]string{"restore", "start", "b1", "--repository", "main", "--map-network", "nonet"}, `--map-network "nonet": want OLD=NEW`},
		{[]string{"restore", "start", "b1", "--repository", "main", "--map-flavor", "a="}, `--map-flavor "a=": want OLD=NEW`},
		{[]string{"restore", "start", "b1", "--repository", "main", "--in-place", "--to-project", "x"}, "--in-place rolls the captured servers back"},
		{[]string{"restore", "start", "--repository", "main"}, "accepts 1 arg"},
		{[]string{"clone", "start", "b1", "--repository", "main"}, "--to-project is required"},
		{[]string{"clone", "delete", "stg1"}, "--project is required"},
		{[]string{"restore", "start", "b1", "--repository", "main", "--map-file", badKey}, "line 2: field images not found"},
		{[]string{"restore", "start", "b1", "--repository", "main", "--map-file", empty}, "flavors: an empty name"},
		{[]string{"restore", "start", "b1", "--repository", "main", "--map-file", filepath.Join(dir, "missing.yaml")}, "missing.yaml"},
	} {
		_, _, err := c.run(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("raksha %v: %v, want %q", tc.args, err, tc.want)
			continue
		}
		if code := exitCode(err); code != 2 && !strings.Contains(tc.want, "accepts") {
			t.Errorf("raksha %v: exit code %d, want 2", tc.args, code)
		}
	}
}
