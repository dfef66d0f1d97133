package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raksha-backup/raksha/internal/repo"
)

// cli runs raksha in-process with its own environment and returns stdout,
// stderr and the error main would print.
type cli struct {
	t   *testing.T
	env map[string]string
}

func newCLI(t *testing.T) *cli {
	dir := t.TempDir()
	return &cli{t: t, env: map[string]string{"RAKSHA_PASSWORD": "pw", "RAKSHA_REPO": "file://" + filepath.Join(dir, "repo")}}
}

func (c *cli) run(args ...string) (string, string, error) {
	var out, errb bytes.Buffer
	a := newApp(&out, &errb, func(k string) string { return c.env[k] })
	cmd := a.root()
	cmd.SetArgs(append([]string{"--progress", "none"}, args...))
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func (c *cli) must(args ...string) string {
	c.t.Helper()
	out, errs, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("raksha %v: %v\nstderr: %s", args, err, errs)
	}
	return out
}

func writeImage(t *testing.T, size int) string {
	p := filepath.Join(t.TempDir(), "vol.img")
	data := make([]byte, size)
	if _, err := rand.Read(data[:size/2]); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func sum(t *testing.T, p string) [32]byte {
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

func TestCLIBackupIncrementalRestore(t *testing.T) {
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "64KiB")
	img := writeImage(t, 1<<20+4321)
	var first diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "--label", "vm=a", "-f", "json", img)), &first); err != nil {
		t.Fatal(err)
	}
	if first.Base != "" || first.Stats.ChunksNew == 0 {
		t.Fatalf("first backup: %+v", first)
	}
	// change 10 bytes in chunk 3 and say so
	f, _ := os.OpenFile(img, os.O_WRONLY, 0)
	f.WriteAt([]byte("0123456789"), 3*65536+5)
	f.Close()
	ext := filepath.Join(t.TempDir(), "ext.json")
	os.WriteFile(ext, []byte(`[{"offset": 196613, "length": 10}]`), 0o600)
	var second diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "--label", "vm=a", "--changed-extents", ext, "-f", "json", img)), &second); err != nil {
		t.Fatal(err)
	}
	if second.Base != first.Disk || second.Stats.BytesRead != 65536 || second.Stats.ChunksNew != 1 {
		t.Fatalf("incremental: base %q (want %q), read %d (want 65536), new %d (want 1)", second.Base, first.Disk, second.Stats.BytesRead, second.Stats.ChunksNew)
	}
	// A different label set does not use the first as base.
	var other diskBackupResult
	json.Unmarshal([]byte(c.must("disk", "backup", "--label", "vm=b", "-f", "json", img)), &other)
	if other.Base != "" {
		t.Errorf("backup with other labels used base %q", other.Base)
	}
	out := filepath.Join(t.TempDir(), "restored.img")
	c.must("disk", "restore", second.ID, out)
	if sum(t, out) != sum(t, img) {
		t.Fatal("restored image differs")
	}
	if _, _, err := c.run("disk", "restore", second.ID, out); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("restore over an existing file: %v", err)
	}
	list := c.must("backup", "list", "--label", "vm=a")
	if strings.Count(list, "\n") != 3 || !strings.Contains(list, first.ID) || strings.Contains(list, other.ID) {
		t.Errorf("list --label vm=a:\n%s", list)
	}
	var all []repo.Backup
	json.Unmarshal([]byte(c.must("backup", "list", "-f", "json")), &all)
	if len(all) != 3 {
		t.Errorf("json list has %d backups, want 3", len(all))
	}
	if !strings.Contains(c.must("backup", "show", first.ID), "full") {
		t.Error("show does not say the first backup was a full read")
	}
	c.must("backup", "protect", first.ID)
	if _, _, err := c.run("backup", "delete", first.ID); !errors.Is(err, repo.ErrProtected) {
		t.Errorf("delete of a protected backup: %v", err)
	}
	// vm=a keeps its newest by --keep-last 1 and the first as protected.
	dry := c.must("repo", "prune", "--keep-last", "1", "--dry-run")
	if strings.Contains(dry, "would remove ") || !strings.Contains(dry, "[protected]") || !strings.Contains(dry, "0 would be removed") {
		t.Errorf("prune --dry-run output:\n%s", dry)
	}
	c.must("backup", "unprotect", first.ID)
	dry = c.must("repo", "prune", "--keep-last", "1", "--dry-run")
	if !strings.Contains(dry, first.ID+"  ") || !strings.Contains(dry, "1 would be removed") {
		t.Errorf("prune --dry-run output after unprotect:\n%s", dry)
	}
	json.Unmarshal([]byte(c.must("backup", "list", "-f", "json")), &all)
	if len(all) != 3 {
		t.Fatalf("--dry-run removed backups: %d left", len(all))
	}
	c.must("repo", "prune", "--keep-last", "1")
	json.Unmarshal([]byte(c.must("backup", "list", "-f", "json")), &all)
	if len(all) != 2 || all[0].ID == first.ID {
		t.Errorf("after prune: %d backups, want 2", len(all))
	}
	c.must("repo", "gc", "--grace", "0s")
	c.must("repo", "verify")
	c.must("repo", "check")
}

func TestCLIErrors(t *testing.T) {
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "64KiB")
	img := writeImage(t, 200000)
	ext := filepath.Join(t.TempDir(), "ext.json")
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want string
		code int
	}{
		{"no repo", map[string]string{"RAKSHA_REPO": ""}, []string{"backup", "list"}, "give --repo URL", 2},
		{"bad url", map[string]string{"RAKSHA_REPO": "/abs/path"}, []string{"backup", "list"}, "file:///abs/path", 1},
		{"wrong password", map[string]string{"RAKSHA_PASSWORD": "nope"}, []string{"backup", "list"}, "wrong password", 1},
		{"bad label", nil, []string{"disk", "backup", "--label", "novalue", img}, `--label "novalue"`, 2},
		{"bad chunk size", nil, []string{"repo", "init", "--chunk-size", "3MB"}, "--chunk-size", 2},
		{"missing image", nil, []string{"disk", "backup", "/nonexistent/disk.img"}, "/nonexistent/disk.img", 1},
		{"extents past end", nil, []string{"disk", "backup", "--changed-extents", ext, img}, "past the end of the disk", 2},
		{"unknown backup", nil, []string{"backup", "show", "20000101-000000-abcdef"}, "20000101-000000-abcdef", 1},
		{"bad format", nil, []string{"-f", "xml", "backup", "list"}, "-f \"xml\"", 2},
	}
	os.WriteFile(ext, []byte(`[{"offset": 199999, "length": 2}]`), 0o600)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cc := &cli{t: t, env: map[string]string{}}
			for k, v := range c.env {
				cc.env[k] = v
			}
			for k, v := range tc.env {
				cc.env[k] = v
			}
			_, _, err := cc.run(tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
			if got := exitCode(err); got != tc.code {
				t.Errorf("exit code %d, want %d", got, tc.code)
			}
		})
	}
	// Nothing was stored by the failed commands.
	var all []repo.Backup
	json.Unmarshal([]byte(c.must("backup", "list", "-f", "json")), &all)
	if len(all) != 0 {
		t.Errorf("%d backups after only failed commands", len(all))
	}
}
