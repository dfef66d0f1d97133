package integration

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/testsuite"

	"github.com/raksha-backup/raksha/internal/temporalx"
)

// TestSearchAttributeSetup registers Raksha's search attributes on a dev
// server started without them, and finds nothing to add the second time.
func TestSearchAttributeSetup(t *testing.T) {
	bin := filepath.Join(repoRoot(t), "bin", "temporal")
	require(t, "the temporal CLI", bin)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{ExistingPath: bin, LogLevel: "error",
		ClientOptions: &client.Options{Namespace: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	added, err := temporalx.EnsureSearchAttributes(ctx, srv.Client(), "default")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(added, temporalx.SearchAttributes) {
		t.Fatalf("added %v, want %v", added, temporalx.SearchAttributes)
	}
	again, err := temporalx.EnsureSearchAttributes(ctx, srv.Client(), "default")
	if err != nil || len(again) != 0 {
		t.Fatalf("second setup added %v (%v), want nothing", again, err)
	}
}
