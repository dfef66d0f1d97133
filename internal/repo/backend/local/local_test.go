package local_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/backendtest"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		be, err := local.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return be
	})
}

func TestLargeObjectsRoundTrip(t *testing.T) {
	be, err := local.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	big := make([]byte, 5<<20+8192)
	for i := range big {
		big[i] = byte(i*7 + i>>12)
	}
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"aligned-64k", big[:64<<10]},
		{"aligned-odd", big[:1<<20+123]},
		{"aligned-4m", big[:4<<20]},
		{"unaligned", big[1 : 3<<20+1]},
		{"small", big[:100]},
	} {
		if err := be.Save(ctx, "chunks/ab/"+tc.name, tc.data); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, err := be.Load(ctx, "chunks/ab/"+tc.name)
		if err != nil || !bytes.Equal(got, tc.data) {
			t.Fatalf("%s: loaded %d bytes (%v), saved %d", tc.name, len(got), err, len(tc.data))
		}
	}
}
