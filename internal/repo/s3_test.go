package repo

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend/open"
	"github.com/raksha-backup/raksha/internal/testenv/cephlab"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(kdfFaultsChildEnv); mode != "" {
		os.Exit(kdfFaultsChild(mode))
	}
	cephlab.Main(m)
}

// TestGCRaceS3 runs the forced gc race on a real radosgw (S3): ModTimes there
// come from the store's clock at one-second resolution.
func TestGCRaceS3(t *testing.T) {
	u, opts := cephlab.NewS3URL(t)
	opts.Log = quietLog()
	be, err := open.Open(context.Background(), u, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	testGCRace(t, be, 1100*time.Millisecond)
}

// TestRoundTripSwift backs up and restores through radosgw's Swift API.
func TestRoundTripSwift(t *testing.T) {
	u, opts := cephlab.NewSwiftURL(t)
	opts.Log = quietLog()
	be, err := open.Open(context.Background(), u, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	r := newRepoOn(t, be, InitOptions{ChunkSize: testCS, Password: "pw", KDF: cheapKDF})
	im := newImage(t, 31)
	im.create(20*testCS+99, map[int64][]byte{0: im.random(8 * testCS), 15 * testCS: im.random(testCS)})
	res := backupFile(t, r, im.path, nil, DiskOptions{})
	if fileHash(t, im.path) != fileHash(t, restoreFile(t, r, res.disk.ID)) {
		t.Fatal("restore through Swift differs")
	}
	if _, err := r.Verify(context.Background(), nil, nil); err != nil {
		t.Fatal(err)
	}
}

// TestGCConcurrentS3: two gc runs on one radosgw bucket, from two repository
// handles. While one holds the lease the other refuses; started at the same
// instant, at most one runs (with whole-second ModTimes, usually none); the backups stay whole and no
// lease is left behind.
func TestGCConcurrentS3(t *testing.T) {
	u, opts := cephlab.NewS3URL(t)
	opts.Log = quietLog()
	ctx := context.Background()
	be, err := open.Open(ctx, u, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	r1 := newRepoOn(t, be, InitOptions{ChunkSize: testCS, Password: "pw", KDF: cheapKDF})
	r2, err := Open(ctx, be, "pw", testOptions())
	if err != nil {
		t.Fatal(err)
	}
	im := newImage(t, 45)
	im.create(8*testCS, map[int64][]byte{0: im.random(8 * testCS)})
	kept := backupFile(t, r1, im.path, map[string]string{"n": "kept"}, DiskOptions{})
	gone := newImage(t, 46)
	gone.create(4*testCS, map[int64][]byte{0: gone.random(4 * testCS)})
	del := backupFile(t, r1, gone.path, map[string]string{"n": "gone"}, DiskOptions{})
	if err := r1.DeleteBackup(ctx, del.backup.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)

	// One holds the lease: the other refuses.
	inside, proceed := make(chan struct{}), make(chan struct{})
	o := GCOptions{testHook: func(step string) {
		if step == "sessions" {
			close(inside)
			<-proceed
		}
	}}
	errc := make(chan error, 1)
	go func() { _, err := r1.GC(ctx, o); errc <- err }()
	<-inside
	if _, err := r2.GC(ctx, GCOptions{}); !errors.Is(err, ErrGCRunning) {
		t.Errorf("gc while another holds the lease: %v, want ErrGCRunning", err)
	}
	close(proceed)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	// Started together, three times.
	for round := range 3 {
		time.Sleep(1100 * time.Millisecond)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, r := range []*Repository{r1, r2} {
			wg.Add(1)
			go func() { defer wg.Done(); _, errs[i] = r.GC(ctx, GCOptions{}) }()
		}
		wg.Wait()
		ran := 0
		for i, err := range errs {
			if err == nil {
				ran++
			} else if !errors.Is(err, ErrGCRunning) {
				t.Errorf("round %d, run %d: %v", round, i, err)
			}
		}
		if ran > 1 {
			t.Errorf("round %d: both runs went ahead", round)
		}
		t.Logf("round %d: %v", round, errs)
	}
	if n := countObjects(t, be, "gc/lease/"); n != 0 {
		t.Errorf("%d lease objects left", n)
	}
	time.Sleep(1100 * time.Millisecond)
	if _, err := r2.GC(ctx, GCOptions{}); err != nil {
		t.Fatalf("gc after the concurrent rounds: %v", err)
	}
	if fileHash(t, im.path) != fileHash(t, restoreFile(t, r2, kept.disk.ID)) {
		t.Fatal("the kept backup does not restore identically after concurrent gc runs")
	}
	if _, err := r2.Verify(ctx, nil, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if _, err := r1.GC(ctx, GCOptions{}); err != nil {
		t.Fatalf("gc that purges: %v", err)
	}
	if c, tr := countObjects(t, be, "chunks/"), countObjects(t, be, "trash/"); c != 8 || tr != 0 {
		t.Errorf("%d chunks and %d in the trash after the last gc, want the kept backup's 8 and 0", c, tr)
	}
}
