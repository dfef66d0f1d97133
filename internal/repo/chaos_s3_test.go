package repo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/open"
	"github.com/raksha-backup/raksha/internal/repo/backend/retry"
	"github.com/raksha-backup/raksha/internal/testenv/cephlab"
	"github.com/raksha-backup/raksha/internal/testenv/chaos"
	"github.com/raksha-backup/raksha/internal/testenv/faultproxy"
)

// chaosCS is the chunk size of the chaos scenarios' repositories.
const chaosCS = 256 << 10

// chaosImage is a disk image of a few MiB for the chaos scenarios: random
// data, a block repeated (dedup), holes; each round rewrites random parts.
type chaosImage struct {
	*image
	size int64
}

func newChaosImage(t *testing.T, rng *rand.Rand, dir string) *chaosImage {
	im := newImage(t, rng.Uint64())
	if dir != "" {
		im.path = filepath.Join(dir, "disk.img")
	}
	ci := &chaosImage{image: im, size: 6 << 20}
	rep := im.random(chaosCS)
	writes := map[int64][]byte{0: im.random(3 << 20)}
	for i := int64(0); i < 4; i++ {
		writes[(3<<20)+i*chaosCS] = rep
	}
	im.create(ci.size, writes)
	return ci
}

// change rewrites n random chunk-sized regions (incompressible new data).
func (ci *chaosImage) change(rng *rand.Rand, n int) {
	for range n {
		off := rng.Int64N(ci.size/chaosCS) * chaosCS
		ci.write(off, ci.random(chaosCS))
	}
}

// restoreTo restores diskID to a new file under dir and returns its SHA-256,
// or the restore's error.
func restoreTo(ctx context.Context, r *Repository, diskID, dir string) (string, error) {
	m, err := r.LoadManifest(ctx, diskID)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, fmt.Sprintf("restored-%d.img", time.Now().UnixNano()))
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer os.Remove(path)
	if err := f.Truncate(m.Size); err != nil {
		f.Close()
		return "", err
	}
	dw := NewDirectWriter(f)
	_, err = r.RestoreDisk(ctx, diskID, dw, RestoreOptions{})
	if cerr := dw.Close(); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	return fileHashErr(path)
}

// leftovers counts what a failed backup left visible: its record, its
// manifests, its session marker.
func leftovers(ctx context.Context, t *testing.T, r *Repository, id string) (n int, what []string) {
	t.Helper()
	for _, prefix := range []string{backupName(id), "manifests/" + id + "/", "sessions/" + id} {
		err := r.be.List(ctx, prefix, func(in backend.Info) error {
			n++
			what = append(what, in.Name)
			return nil
		})
		if err != nil {
			t.Fatalf("list %s: %v", prefix, err)
		}
	}
	return n, what
}

// TestChaosS3Faults: backups and restores through a fault-injecting proxy in
// front of a real radosgw. Every round changes the disk and backs it up
// incrementally with faults on (a fault rate drawn per round); a backup that
// commits must restore byte-identically and verify with faults off, one that
// fails must fail with an error and leave nothing visible after its Abort
// (no listed backup, no manifests, no marker; Check, gc and the next backup
// work). Then the last good backup is restored with faults on: it completes
// identically or fails with an error, never with wrong bytes.
func TestChaosS3Faults(t *testing.T) {
	c := cephlab.Require(t)
	rng := chaos.NewRand(t)
	rounds := chaos.Rounds(t, 2)
	px, err := faultproxy.Start(c.S3Endpoint, rng.Uint64())
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	u, _ := cephlab.NewS3URL(t)
	const reqTimeout = 2 * time.Second
	opts := open.Options{S3Endpoint: px.URL(), S3PathStyle: true, S3RequestTimeout: reqTimeout,
		Retry: retry.Policy{Attempts: 4, Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond}, Log: quietLog()}
	ctx := context.Background()
	be, err := open.Open(ctx, u, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	r := newRepoOn(t, be, InitOptions{ChunkSize: chaosCS, Password: "pw", KDF: cheapKDF})
	im := newChaosImage(t, rng, "")
	work := t.TempDir()

	var bk, rs chaos.Row
	bk.Rounds, rs.Rounds = rounds, rounds
	var lastDisk, lastHash string
	rates := []float64{0.1, 0.3, 0.6}
	for round := range rounds {
		im.change(rng, 1+rng.IntN(8))
		want := fileHash(t, im.path)
		rate := rates[rng.IntN(len(rates))]
		fr := faultproxy.Uniform(rate)
		fr.StallFor = chaos.Jitter(rng, reqTimeout+500*time.Millisecond, 2*reqTimeout)
		fr.SlowBytesPerSec = 512 << 10
		before := px.Injected()

		// The backup, faults on.
		id := NewBackupID(time.Now())
		t0 := time.Now()
		px.SetRates(fr)
		var m *DiskManifest
		s, err := r.StartBackup(ctx, BackupSpec{ID: id})
		if err == nil {
			fs, ferr := openFile(im.path)
			if ferr != nil {
				t.Fatal(ferr)
			}
			m, err = s.BackupDisk(ctx, "vm", "disk", fs, DiskOptions{Base: lastDisk})
			fs.Close()
			if err == nil {
				_, err = s.Commit(ctx)
			}
		}
		took := time.Since(t0)
		px.Off() // the fault is lifted
		bk.Recover = max(bk.Recover, took)
		t.Logf("round %d: fault rate %.1f, %d faults injected, backup %s after %v: %v",
			round, rate, px.Injected()-before, id, took.Round(time.Millisecond), err)

		if err == nil {
			bk.Completed++
			got, rerr := restoreTo(ctx, r, m.ID, work)
			if rerr != nil || got != want {
				t.Errorf("round %d: committed backup %s does not restore identically: %v", round, id, rerr)
				bk.BytesLost += im.size
				bk.WronglyGood++
			} else if rep, verr := r.Verify(ctx, []string{id}, nil); verr != nil {
				t.Errorf("round %d: verify of committed backup %s: %v (%+v)", round, id, verr, rep)
				bk.WronglyGood++
			}
			lastDisk, lastHash = m.ID, want
		} else {
			clean := strings.Contains(err.Error(), id) // the error names the backup
			if !clean {
				t.Errorf("round %d: the failed backup's error does not name it: %v", round, err)
			}
			if s != nil {
				if aerr := s.Abort(ctx); aerr != nil {
					t.Errorf("round %d: abort after the fault was lifted: %v", round, aerr)
					clean = false
				}
			}
			if n, what := leftovers(ctx, t, r, id); n > 0 {
				t.Errorf("round %d: the failed backup %s left %v", round, id, what)
				bk.Orphans += n
				clean = false
			}
			bs, lerr := r.ListBackups(ctx, Filter{})
			if lerr != nil || slices.ContainsFunc(bs, func(b *Backup) bool { return b.ID == id }) {
				t.Errorf("round %d: failed backup %s listed (%v)", round, id, lerr)
				bk.WronglyGood++
				clean = false
			}
			if rep, cerr := r.Check(ctx); cerr != nil {
				t.Errorf("round %d: check after the failed backup: %v (%v)", round, cerr, rep)
				clean = false
			}
			if _, gerr := r.GC(ctx, GCOptions{}); gerr != nil {
				t.Errorf("round %d: gc after the failed backup: %v", round, gerr)
				clean = false
			}
			if clean {
				bk.FailedCleanly++
			}
		}

		// A restore of the last good backup, faults on.
		if lastDisk == "" {
			rs.Rounds-- // nothing committed yet to restore
			continue
		}
		px.SetRates(fr)
		t0 = time.Now()
		got, rerr := restoreTo(ctx, r, lastDisk, work)
		took = time.Since(t0)
		px.Off()
		rs.Recover = max(rs.Recover, took)
		t.Logf("round %d: restore of %s under faults after %v: %v", round, lastDisk, took.Round(time.Millisecond), rerr)
		switch {
		case rerr == nil && got == lastHash:
			rs.Completed++
		case rerr == nil:
			t.Errorf("round %d: restore under faults reported success with wrong bytes", round)
			rs.BytesLost += im.size
		case strings.Contains(rerr.Error(), strings.Split(lastDisk, "/")[0]):
			rs.FailedCleanly++
		default:
			t.Errorf("round %d: the failed restore's error does not name the backup: %v", round, rerr)
		}
	}
	// After all rounds, with faults off: a last backup and gc work.
	res := backupFile(t, r, im.path, nil, DiskOptions{Base: lastDisk})
	if got, err := restoreTo(ctx, r, res.disk.ID, work); err != nil || got != fileHash(t, im.path) {
		t.Errorf("backup after the chaos rounds does not restore identically: %v", err)
	}
	if _, err := r.GC(ctx, GCOptions{}); err != nil {
		t.Errorf("gc after the chaos rounds: %v", err)
	}
	if rep, err := r.Check(ctx); err != nil {
		t.Errorf("check after the chaos rounds: %v (%v)", err, rep)
	}
	counts, reqs := px.Counts()
	injected := faultCounts(counts)
	const comps = "radosgw (cephlab) behind testenv/faultproxy; S3 backend with retries, request timeout 2s"
	bk.Scenario, bk.Components = "S3 faults at the HTTP level: backup", comps
	bk.Notes = fmt.Sprintf("%d requests, injected %s; fault rate per round 0.1/0.3/0.6; failed backups aborted after the fault is lifted; recovery = slowest backup under faults to its commit or error", reqs, injected)
	rs.Scenario, rs.Components = "S3 faults at the HTTP level: restore", comps
	rs.Notes = "restore of the last committed backup with the round's faults on; a failure is an error naming the backup, disk and chunk; recovery = slowest restore under faults to its end"
	chaos.Record(t, bk)
	chaos.Record(t, rs)
}

// faultCounts renders the proxy's counts, fault by fault.
func faultCounts(c map[faultproxy.Fault]int) string {
	var parts []string
	for _, f := range faultproxy.Faults {
		parts = append(parts, fmt.Sprintf("%d %s", c[f], f))
	}
	return strings.Join(parts, ", ")
}

// fileHashErr is fileHash returning its error.
func fileHashErr(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
