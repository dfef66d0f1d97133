package repo

import (
	"context"
	"os"
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
