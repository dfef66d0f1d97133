package swift_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/backendtest"
	"github.com/raksha-backup/raksha/internal/repo/backend/open"
	"github.com/raksha-backup/raksha/internal/repo/backend/swift"
	"github.com/raksha-backup/raksha/internal/testenv/cephlab"
)

func TestMain(m *testing.M) { cephlab.Main(m) }

// rgwConfig returns a Config for the cluster's radosgw with its Swift user
// given explicitly, and list pages of two names so that every List pages.
func rgwConfig(c *cephlab.Cluster) swift.Config {
	return swift.Config{
		V1:           &swift.V1Auth{URL: c.SwiftAuthURL, User: c.SwiftUser, Key: c.SwiftKey},
		ListPageSize: 2,
	}
}

func TestConformance(t *testing.T) {
	c := cephlab.Require(t)
	t.Logf("Ceph cluster start took %v", c.StartDuration.Round(time.Millisecond))
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		be, err := swift.Open(context.Background(), cephlab.UniqueName("raksha-test"), "repo/x", rgwConfig(c))
		if err != nil {
			t.Fatal(err)
		}
		return be
	})
}

// TestConformanceNoPrefix stores objects at the top of the container.
func TestConformanceNoPrefix(t *testing.T) {
	c := cephlab.Require(t)
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		be, err := swift.Open(context.Background(), cephlab.UniqueName("raksha-test"), "", rgwConfig(c))
		if err != nil {
			t.Fatal(err)
		}
		return be
	})
}

// TestOpenURL opens a repository through its URL, with credentials from the
// environment (ST_AUTH, ST_USER, ST_KEY), as the CLI and the workers do.
func TestOpenURL(t *testing.T) {
	ctx := context.Background()
	u, opts := cephlab.NewSwiftURL(t)
	be, err := open.Open(ctx, u, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	if !strings.HasPrefix(be.Location(), u) {
		t.Errorf("Location %q does not start with %q", be.Location(), u)
	}
	if err := be.Save(ctx, "config", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	be2, err := open.Open(ctx, u, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer be2.Close()
	if got, err := be2.Load(ctx, "config"); err != nil || string(got) != "hello" {
		t.Fatalf("Load through a second open = %q, %v", got, err)
	}
}

func TestWrongKey(t *testing.T) {
	c := cephlab.Require(t)
	cfg := rgwConfig(c)
	cfg.V1.Key = "not-the-key"
	_, err := swift.Open(context.Background(), cephlab.UniqueName("raksha-test"), "repo", cfg)
	if err == nil {
		t.Fatal("Open with a wrong key succeeded")
	}
	t.Logf("error: %v", err)
	if !backend.IsPermanent(err) || !strings.Contains(err.Error(), "access denied") {
		t.Errorf("wrong key: want a permanent access denied error, got %v", err)
	}
}

// TestExpiredToken checks that a refused token is renewed transparently.
func TestExpiredToken(t *testing.T) {
	c := cephlab.Require(t)
	ctx := context.Background()
	be, err := swift.Open(ctx, cephlab.UniqueName("raksha-test"), "repo", rgwConfig(c))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	swift.SetTokenForTest(be, "AUTH_rgwtk_expired")
	if err := be.Save(ctx, "x", []byte("x")); err != nil {
		t.Fatalf("Save with an expired token: %v", err)
	}
}

func TestNoCredentials(t *testing.T) {
	for _, k := range []string{"ST_AUTH", "OS_CLOUD", "OS_AUTH_URL"} {
		t.Setenv(k, "")
	}
	_, err := swift.Open(context.Background(), "c", "", swift.Config{})
	if err == nil || !backend.IsPermanent(err) || !strings.Contains(err.Error(), "ST_AUTH") {
		t.Errorf("no credentials: err = %v, want a permanent error naming ST_AUTH", err)
	}
}

// BenchmarkSaveParallel measures many parallel small PUTs, the repository's
// main load (go test -run=NONE -bench=. ./internal/repo/backend/swift/).
func BenchmarkSaveParallel(b *testing.B) {
	c := cephlab.Require(b)
	be, err := swift.Open(context.Background(), cephlab.UniqueName("raksha-bench"), "repo", rgwConfig(c))
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	data := make([]byte, 64<<10)
	b.SetBytes(int64(len(data)))
	b.SetParallelism(16)
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := be.Save(context.Background(), fmt.Sprintf("chunks/%d", n.Add(1)), data); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
