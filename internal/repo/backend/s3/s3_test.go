package s3_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/backendtest"
	"github.com/raksha-backup/raksha/internal/repo/backend/open"
	"github.com/raksha-backup/raksha/internal/repo/backend/s3"
	"github.com/raksha-backup/raksha/internal/testenv/cephlab"
)

func TestMain(m *testing.M) { cephlab.Main(m) }

// rgwConfig returns a Config for the cluster's radosgw with its test user's
// keys given explicitly, and list pages of two keys so that every List pages.
func rgwConfig(c *cephlab.Cluster) s3.Config {
	return s3.Config{
		Endpoint:     c.S3Endpoint,
		PathStyle:    true,
		Credentials:  credentials.NewStaticCredentialsProvider(c.AccessKey, c.SecretKey, ""),
		ListPageSize: 2,
	}
}

func TestConformance(t *testing.T) {
	c := cephlab.Require(t)
	t.Logf("Ceph cluster start took %v", c.StartDuration.Round(time.Millisecond))
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		be, err := s3.Open(context.Background(), cephlab.UniqueName("raksha-test"), "repo/x", rgwConfig(c))
		if err != nil {
			t.Fatal(err)
		}
		return be
	})
}

// TestConformanceNoPrefix stores objects at the top of the bucket.
func TestConformanceNoPrefix(t *testing.T) {
	c := cephlab.Require(t)
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		be, err := s3.Open(context.Background(), cephlab.UniqueName("raksha-test"), "", rgwConfig(c))
		if err != nil {
			t.Fatal(err)
		}
		return be
	})
}

// TestOpenURL opens a repository through its URL, with credentials from the
// environment, as the CLI and the workers do.
func TestOpenURL(t *testing.T) {
	ctx := context.Background()
	u, opts := cephlab.NewS3URL(t)
	be, err := open.Open(ctx, u, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	if !strings.HasPrefix(be.Location(), strings.TrimSuffix(u, "/")) {
		t.Errorf("Location %q does not start with %q", be.Location(), u)
	}
	if err := be.Save(ctx, "config", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	// A second open of the same URL finds the bucket and the object.
	be2, err := open.Open(ctx, u, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer be2.Close()
	if got, err := be2.Load(ctx, "config"); err != nil || string(got) != "hello" {
		t.Fatalf("Load through a second open = %q, %v", got, err)
	}
}

func TestWrongSecret(t *testing.T) {
	c := cephlab.Require(t)
	cfg := rgwConfig(c)
	cfg.Credentials = credentials.NewStaticCredentialsProvider(c.AccessKey, "not-the-secret", "")
	start := time.Now()
	_, err := s3.Open(context.Background(), cephlab.UniqueName("raksha-test"), "repo", cfg)
	if err == nil {
		t.Fatal("Open with a wrong secret succeeded")
	}
	t.Logf("error: %v", err)
	if !backend.IsPermanent(err) {
		t.Errorf("wrong secret: error is not permanent: %v", err)
	}
	if !strings.Contains(err.Error(), "access denied") {
		t.Errorf("wrong secret: error does not say access denied: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("wrong secret took %v to fail: something retried", d)
	}
}

func TestInvalidBucketName(t *testing.T) {
	for _, name := range []string{"Upper", "a", "under_score", "-dash", "dots..dots"} {
		_, err := s3.Open(context.Background(), name, "", s3.Config{Endpoint: "http://127.0.0.1:1", PathStyle: true})
		if err == nil || !backend.IsPermanent(err) || !strings.Contains(err.Error(), "invalid bucket name") {
			t.Errorf("bucket %q: err = %v, want a permanent invalid bucket name error", name, err)
		}
	}
}

// TestUnreachable checks that a store that does not answer gives a
// transient error (the retry wrapper retries it), naming the operation.
func TestUnreachable(t *testing.T) {
	cfg := s3.Config{
		Endpoint:    "http://127.0.0.1:1",
		PathStyle:   true,
		Credentials: credentials.NewStaticCredentialsProvider("a", "b", ""),
	}
	_, err := s3.Open(context.Background(), "raksha-unreachable", "", cfg)
	if err == nil {
		t.Fatal("Open of an unreachable endpoint succeeded")
	}
	if backend.IsPermanent(err) {
		t.Errorf("connection refused must be transient: %v", err)
	}
	if !strings.Contains(err.Error(), "s3 open") {
		t.Errorf("error does not name the operation: %v", err)
	}
}

// BenchmarkSaveParallel measures many parallel small PUTs, the repository's
// main load (go test -run=NONE -bench=. ./internal/repo/backend/s3/).
func BenchmarkSaveParallel(b *testing.B) {
	c := cephlab.Require(b)
	be, err := s3.Open(context.Background(), cephlab.UniqueName("raksha-bench"), "repo", rgwConfig(c))
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
