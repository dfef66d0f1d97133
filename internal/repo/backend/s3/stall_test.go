package s3_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/s3"
)

// TestLoadStallMidBody: a store that sends an object's headers and part of
// its body, then stalls, fails the Load within RequestTimeout with a
// transient error (retried by backend/retry) instead of hanging: the
// transport's ResponseHeaderTimeout does not cover a body.
func TestLoadStallMidBody(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead || r.URL.Path == "/stall-bucket" || r.URL.Path == "/stall-bucket/" {
			w.WriteHeader(http.StatusOK) // HeadBucket
			return
		}
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(make([]byte, 100))
		w.(http.Flusher).Flush()
		select { // the rest never comes
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	ctx := context.Background()
	be, err := s3.Open(ctx, "stall-bucket", "repo", s3.Config{
		Endpoint:       srv.URL,
		PathStyle:      true,
		Credentials:    credentials.NewStaticCredentialsProvider("k", "s", ""),
		RequestTimeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	done := make(chan error, 1)
	t0 := time.Now()
	go func() { _, err := be.Load(ctx, "chunks/ab/cd"); done <- err }()
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Load of a body that stalls did not return within 20s (RequestTimeout 300ms)")
	}
	t.Logf("Load returned after %v: %v", time.Since(t0).Round(time.Millisecond), err)
	if err == nil {
		t.Fatal("Load of a stalled body succeeded")
	}
	if !errors.Is(err, s3.ErrRequestTimeout) || backend.IsPermanent(err) {
		t.Fatalf("Load of a stalled body: %v; want a transient ErrRequestTimeout", err)
	}
}
