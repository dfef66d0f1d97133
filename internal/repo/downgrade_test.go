package repo

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

// editConfig rewrites the plaintext config object of the repository in dir
// as whoever can write its bucket could.
func editConfig(t *testing.T, dir string, edit func(map[string]any)) {
	t.Helper()
	p := filepath.Join(dir, "config")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if data, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestEncryptionDowngradeRefused: an encrypted repository whose plaintext
// config is rewritten to `encryption: none` (by whoever can write the
// bucket) is refused when opened with its password, with nothing written;
// so is any other change to the config (it differs from its sealed copy);
// an unencrypted repository is refused where the registry requires
// encryption; a repository from before sealed configs gets its copy.
func TestEncryptionDowngradeRefused(t *testing.T) {
	ctx := context.Background()
	r, dir := newLocalRepo(t)
	im := newImage(t, 21)
	im.create(2*testCS, map[int64][]byte{0: im.random(2 * testCS)})
	backupFile(t, r, im.path, nil, DiskOptions{})
	be, _ := local.Open(dir)
	if _, err := os.Stat(filepath.Join(dir, sealedConfigName)); err != nil {
		t.Fatalf("init wrote no sealed config: %v", err)
	}
	orig, _ := os.ReadFile(filepath.Join(dir, "config"))
	restore := func() { os.WriteFile(filepath.Join(dir, "config"), orig, 0o600) }

	// Downgrade to plaintext: refused, nothing written.
	editConfig(t, dir, func(m map[string]any) { m["encryption"], m["chunk_id_hash"] = "none", "sha256" })
	before := snapshotObjects(t, be)
	_, err := Open(ctx, be, "secret", testOptions())
	if !errors.Is(err, ErrDowngrade) || !strings.Contains(err.Error(), `"none"`) || !strings.Contains(err.Error(), dir) {
		t.Errorf("open of a downgraded config with the password: %v; want ErrDowngrade naming the repository and the encryption", err)
	}
	if after := snapshotObjects(t, be); len(after) != len(before) {
		t.Errorf("objects written by a refused open: %d before, %d after", len(before), len(after))
	}
	restore()

	// Any other change: the config differs from its sealed copy.
	for _, tc := range []struct {
		name string
		edit func(map[string]any)
	}{
		{"compression off", func(m map[string]any) { m["compression"] = "none" }},
		{"chunk size", func(m map[string]any) { m["chunk_size"] = float64(2 * testCS) }},
		{"plain chunk ids", func(m map[string]any) { m["chunk_id_hash"] = "sha256" }},
	} {
		editConfig(t, dir, tc.edit)
		if _, err := Open(ctx, be, "secret", testOptions()); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: open: %v, want ErrCorrupt", tc.name, err)
		}
		restore()
	}
	if _, err := Open(ctx, be, "secret", testOptions()); err != nil {
		t.Fatalf("open of the unaltered repository: %v", err)
	}

	// A repository from before sealed configs: opened, and sealed then.
	if err := os.Remove(filepath.Join(dir, sealedConfigName)); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, be, "secret", testOptions()); err != nil {
		t.Fatalf("open without a sealed config: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, sealedConfigName)); err != nil {
		t.Errorf("the sealed config was not written on open: %v", err)
	}

	// An unencrypted repository: opened without a password, refused with
	// one or where encryption is required.
	pdir := t.TempDir()
	pbe, _ := local.Open(pdir)
	newRepoOn(t, pbe, InitOptions{ChunkSize: testCS, NoEncryption: true})
	if _, err := Open(ctx, pbe, "", testOptions()); err != nil {
		t.Fatalf("open of an unencrypted repository: %v", err)
	}
	if _, err := Open(ctx, pbe, "secret", testOptions()); !errors.Is(err, ErrDowngrade) || !strings.Contains(err.Error(), "password was given") {
		t.Errorf("open of an unencrypted repository with a password: %v, want ErrDowngrade", err)
	}
	req := testOptions()
	req.RequireEncryption = true
	if _, err := Open(ctx, pbe, "", req); !errors.Is(err, ErrDowngrade) || !strings.Contains(err.Error(), "requires encryption") {
		t.Errorf("open of an unencrypted repository where encryption is required: %v, want ErrDowngrade", err)
	}
}

// TestKeyFileKDFCapped: a key file (writable by whoever can write the
// bucket) that asks for more argon2id memory, passes or lanes than allowed
// is refused before any derivation, naming the cost.
func TestKeyFileKDFCapped(t *testing.T) {
	mk := newMasterKey()
	for _, p := range []KDFParams{
		{Time: 1, Memory: MaxKDFMemory + 1, Threads: 1},
		{Time: MaxKDFTime + 1, Memory: 1024, Threads: 1},
		{Time: 1, Memory: 1024, Threads: MaxKDFThreads + 1},
	} {
		kf, err := wrapKey(mk, "pw", KDFParams{Time: 1, Memory: 1024, Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(kf, &m)
		m["params"] = map[string]any{"time": p.Time, "memory_kib": p.Memory, "threads": p.Threads}
		kf, _ = json.Marshal(m)
		_, err = unwrapKey(kf, "pw")
		if err == nil || !strings.Contains(err.Error(), "more KDF cost than Raksha allows") {
			t.Errorf("key file asking for %+v: %v, want a refusal naming the cost", p, err)
		}
	}
	kf, _ := wrapKey(mk, "pw", KDFParams{Time: 1, Memory: 1024, Threads: 1})
	if _, err := unwrapKey(kf, "pw"); err != nil {
		t.Errorf("a key file within the limits: %v", err)
	}
}
