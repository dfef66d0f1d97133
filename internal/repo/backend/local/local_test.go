package local_test

import (
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
