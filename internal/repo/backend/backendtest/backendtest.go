// Package backendtest is the conformance suite every backend.Backend passes.
// Each backend's own test calls Run with a constructor for a fresh, empty store.
package backendtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

// Run runs the whole suite. newBackend must return an empty backend; the suite
// closes it at the end of each subtest.
func Run(t *testing.T, newBackend func(t *testing.T) backend.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, be backend.Backend)
	}{
		{"SaveLoad", testSaveLoad},
		{"Overwrite", testOverwrite},
		{"NotFound", testNotFound},
		{"Stat", testStat},
		{"Delete", testDelete},
		{"List", testList},
		{"Concurrent", testConcurrent},
		{"Cancelled", testCancelled},
		{"Copy", testCopy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			be := newBackend(t)
			defer func() {
				if err := be.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			}()
			if be.Location() == "" {
				t.Fatal("Location is empty")
			}
			tc.fn(t, be)
		})
	}
}

func randBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func mustSave(t *testing.T, be backend.Backend, name string, data []byte) {
	t.Helper()
	if err := be.Save(context.Background(), name, data); err != nil {
		t.Fatalf("Save(%s): %v", name, err)
	}
}

func mustLoad(t *testing.T, be backend.Backend, name string) []byte {
	t.Helper()
	data, err := be.Load(context.Background(), name)
	if err != nil {
		t.Fatalf("Load(%s): %v", name, err)
	}
	return data
}

func testSaveLoad(t *testing.T, be backend.Backend) {
	cases := map[string][]byte{
		"config":                   []byte(`{"v":1}`),
		"empty":                    {},
		"chunks/ab/ab0123456789":   randBytes(t, 4<<20+17),
		"manifests/b1/vm/disk/p/0": randBytes(t, 1000),
	}
	for name, data := range cases {
		mustSave(t, be, name, data)
	}
	for name, data := range cases {
		if got := mustLoad(t, be, name); !bytes.Equal(got, data) {
			t.Errorf("Load(%s): got %d bytes, want %d identical bytes", name, len(got), len(data))
		}
	}
}

func testOverwrite(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	mustSave(t, be, "obj", []byte("first version"))
	before, err := be.Stat(ctx, "obj")
	if err != nil {
		t.Fatal(err)
	}
	// Stores keep ModTime at one-second resolution or better.
	time.Sleep(1100 * time.Millisecond)
	mustSave(t, be, "obj", []byte("second"))
	if got := mustLoad(t, be, "obj"); string(got) != "second" {
		t.Fatalf("after overwrite Load = %q, want %q", got, "second")
	}
	after, err := be.Stat(ctx, "obj")
	if err != nil {
		t.Fatal(err)
	}
	if after.Size != 6 {
		t.Errorf("after overwrite Size = %d, want 6", after.Size)
	}
	if !after.ModTime.After(before.ModTime) {
		t.Errorf("overwrite did not advance ModTime: before %v after %v", before.ModTime, after.ModTime)
	}
}

func testNotFound(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	if _, err := be.Load(ctx, "chunks/00/missing"); !backend.IsNotFound(err) {
		t.Errorf("Load missing: err = %v, want IsNotFound", err)
	}
	if _, err := be.Stat(ctx, "missing"); !backend.IsNotFound(err) {
		t.Errorf("Stat missing: err = %v, want IsNotFound", err)
	}
	if err := be.Delete(ctx, "missing"); !backend.IsNotFound(err) {
		t.Errorf("Delete missing: err = %v, want IsNotFound", err)
	}
	if _, err := be.Load(ctx, "missing"); !backend.IsPermanent(err) {
		t.Errorf("not-found must be permanent (never retried): %v", err)
	}
}

func testStat(t *testing.T, be backend.Backend) {
	data := randBytes(t, 12345)
	start := time.Now()
	mustSave(t, be, "keys/k1", data)
	in, err := be.Stat(context.Background(), "keys/k1")
	if err != nil {
		t.Fatal(err)
	}
	if in.Name != "keys/k1" || in.Size != 12345 {
		t.Errorf("Stat = %+v, want name keys/k1 size 12345", in)
	}
	// The store's clock may differ from ours, but not by hours.
	if d := in.ModTime.Sub(start); d < -time.Hour || d > time.Hour {
		t.Errorf("Stat ModTime %v is %v away from now", in.ModTime, d)
	}
}

func testDelete(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	mustSave(t, be, "backups/x", []byte("x"))
	mustSave(t, be, "backups/y", []byte("y"))
	if err := be.Delete(ctx, "backups/x"); err != nil {
		t.Fatal(err)
	}
	if _, err := be.Load(ctx, "backups/x"); !backend.IsNotFound(err) {
		t.Errorf("deleted object still loads: %v", err)
	}
	if got := mustLoad(t, be, "backups/y"); string(got) != "y" {
		t.Errorf("Delete removed a neighbour: %q", got)
	}
}

func list(t *testing.T, be backend.Backend, prefix string) []string {
	t.Helper()
	var names []string
	err := be.List(context.Background(), prefix, func(in backend.Info) error {
		names = append(names, in.Name)
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	sort.Strings(names)
	return names
}

func testList(t *testing.T, be backend.Backend) {
	for _, n := range []string{"chunks/aa/aa1", "chunks/aa/aa2", "chunks/ab/ab1", "chunksx", "backups/b1", "config"} {
		mustSave(t, be, n, []byte(n))
	}
	want := func(prefix string, exp ...string) {
		t.Helper()
		got := list(t, be, prefix)
		if fmt.Sprint(got) != fmt.Sprint(exp) {
			t.Errorf("List(%q) = %v, want %v", prefix, got, exp)
		}
	}
	want("chunks/", "chunks/aa/aa1", "chunks/aa/aa2", "chunks/ab/ab1")
	want("chunks/aa/", "chunks/aa/aa1", "chunks/aa/aa2")
	want("chunks/ab/ab", "chunks/ab/ab1")
	want("nothing/")
	want("", "backups/b1", "chunks/aa/aa1", "chunks/aa/aa2", "chunks/ab/ab1", "chunksx", "config")
	// List reports sizes.
	err := be.List(context.Background(), "config", func(in backend.Info) error {
		if in.Size != int64(len("config")) {
			t.Errorf("List size of config = %d", in.Size)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// fn's error stops the listing and is returned.
	stop := errors.New("stop here")
	calls := 0
	err = be.List(context.Background(), "chunks/", func(backend.Info) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("List with failing fn: err=%v calls=%d, want stop after 1 call", err, calls)
	}
}

func testConcurrent(t *testing.T, be backend.Backend) {
	const n = 24
	blobs := make([][]byte, n)
	for i := range blobs {
		blobs[i] = randBytes(t, 64<<10+i)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- be.Save(context.Background(), fmt.Sprintf("chunks/%02x/c%d", i%4, i), blobs[i])
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if got := mustLoad(t, be, fmt.Sprintf("chunks/%02x/c%d", i%4, i)); !bytes.Equal(got, blobs[i]) {
			t.Errorf("object %d differs after concurrent saves", i)
		}
	}
	if got := len(list(t, be, "chunks/")); got != n {
		t.Errorf("listed %d objects, want %d", got, n)
	}
}

func testCancelled(t *testing.T, be backend.Backend) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := be.Save(ctx, "cancelled", []byte("x")); err == nil {
		t.Error("Save with a cancelled context succeeded")
	}
	if _, err := be.Load(context.Background(), "cancelled"); !backend.IsNotFound(err) {
		t.Errorf("a cancelled Save left an object behind: %v", err)
	}
}

func testCopy(t *testing.T, be backend.Backend) {
	data := randBytes(t, 100000)
	mustSave(t, be, "chunks/cc/c1", data)
	if err := backend.Copy(context.Background(), be, "chunks/cc/c1", "trash/cc/c1"); err != nil {
		t.Fatal(err)
	}
	if got := mustLoad(t, be, "trash/cc/c1"); !bytes.Equal(got, data) {
		t.Error("copy differs from original")
	}
	if err := backend.Copy(context.Background(), be, "chunks/cc/missing", "x"); !backend.IsNotFound(err) {
		t.Errorf("copy of a missing object: %v, want IsNotFound", err)
	}
}
