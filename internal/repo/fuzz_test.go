package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/raksha-backup/raksha/internal/repo/backend/mem"
)

// FuzzDecodePage feeds arbitrary bytes to the page decoder: it must never
// panic, and whatever it accepts must re-encode to the same bytes.
func FuzzDecodePage(f *testing.F) {
	f.Add(encodePage([]ChunkID{{1}, {}, {2, 3}}), 3)
	f.Add([]byte("RKP1\x01\x00\x00\x00"), 1)
	f.Add([]byte{}, 0)
	f.Fuzz(func(t *testing.T, data []byte, want int) {
		if want < 0 || want > PageEntries {
			return
		}
		ids, err := decodePage(data, want)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if !bytes.Equal(encodePage(ids), data) {
			t.Fatal("accepted page does not re-encode identically")
		}
	})
}

// FuzzLoadManifest stores arbitrary bytes as a sealed manifest header (as a
// buggy or malicious writer could) and loads it: never a panic, and any
// accepted manifest is self-consistent.
func FuzzLoadManifest(f *testing.F) {
	good, _ := json.Marshal(DiskManifest{Schema: 1, ID: "b/v/d", Size: 10, ChunkSize: testCS, Chunks: 1, Pages: 1})
	f.Add(good, false)
	f.Add([]byte(`{"schema":1,"id":"b/v/d","size":-1}`), false)
	f.Add([]byte("RK1E garbage"), true)
	be := mem.New()
	r, err := Init(context.Background(), be, InitOptions{ChunkSize: testCS, Password: "pw", KDF: cheapKDF}, testOptions())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, raw bool) {
		obj := data
		if !raw {
			obj = r.codec.seal(data, []byte("manifest:b/v/d"), nil)
		}
		if err := be.Save(context.Background(), headerName("b/v/d"), obj); err != nil {
			t.Fatal(err)
		}
		m, err := r.LoadManifest(context.Background(), "b/v/d")
		if err != nil {
			return
		}
		cs := int64(m.ChunkSize)
		if m.Size < 0 || m.Chunks != (m.Size+cs-1)/cs || int64(m.Pages)*PageEntries < m.Chunks {
			t.Fatalf("accepted an inconsistent manifest: %+v", m)
		}
	})
}
