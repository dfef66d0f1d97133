//go:build appliancecost

package appliance

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/filerestore"
	"github.com/raksha-backup/raksha/internal/loopfs"
	"github.com/raksha-backup/raksha/internal/loopfs/xfstest"
	"github.com/raksha-backup/raksha/internal/mountfs"
)

// TestCost measures what the appliance costs beside a loop mount on the
// host: 200 MiB in 200 files (and 2000 small ones) out of an XFS image,
// with the boot time (a one-file restore) and QEMU's peak memory. It is a
// measurement, not a check, and is built only with the appliancecost tag
// (make appliance-cost; a few minutes under TCG); the figures are in
// DESIGN.md.
func TestCost(t *testing.T) {
	img := needImage(t)
	xfstest.Need(t)
	disk := filepath.Join(t.TempDir(), "xfs.img")
	const files, size = 200, 1 << 20
	xfstest.Image(t, disk, 512<<20, func(dir string) {
		r := rand.NewChaCha8([32]byte{1})
		buf := make([]byte, size)
		for _, d := range []string{"big", "small"} {
			if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for i := range files {
			r.Read(buf)
			if err := os.WriteFile(filepath.Join(dir, "big", strings.Repeat("f", 1+i%8)+string(rune('a'+i%26))+time.Duration(i).String()), buf, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 2000 {
			if err := os.WriteFile(filepath.Join(dir, "small", time.Duration(i).String()), buf[:1000], 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
	ctx := context.Background()
	mib := func(st filerestore.Stats, d time.Duration) float64 {
		return float64(st.Bytes) / (1 << 20) / d.Seconds()
	}

	// the host's kernel: loop mount (through loopfs's FUSE view) + copy
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	start := time.Now()
	m, err := loopfs.Open(f, fi.Size(), "xfs", "", loopfs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mounted := time.Since(start)
	st, err := loopfs.Extract(ctx, m.Dir, "/", filepath.Join(t.TempDir(), "host"), filerestore.ExtractOptions{})
	if cerr := m.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	host := time.Since(start)
	t.Logf("host loop mount: mounted in %v, %d files %d MiB in %v (%.0f MiB/s)", mounted.Round(time.Millisecond), st.Files, st.Bytes>>20, host.Round(time.Millisecond), mib(st, host))

	// the appliance: boot (one small file), then everything, from the
	// file and through a FUSE view as 'restore files' does
	res, err := Extract(ctx, img, disk, "xfs", "/small/0s", filepath.Join(t.TempDir(), "one"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("appliance, one small file: accel %s, first byte after %v, done in %v, QEMU peak RSS %d MiB", res.Accel, res.Boot.Round(time.Millisecond), res.Duration.Round(time.Millisecond), res.PeakRSS>>20)
	res, err = Extract(ctx, img, disk, "xfs", "/", filepath.Join(t.TempDir(), "all"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("appliance from the file: %d files %d MiB in %v (first byte after %v; %.0f MiB/s overall, %.0f MiB/s after boot), QEMU peak RSS %d MiB",
		res.Files, res.Bytes>>20, res.Duration.Round(time.Millisecond), res.Boot.Round(time.Millisecond), mib(res.Stats, res.Duration), mib(res.Stats, res.Duration-res.Boot), res.PeakRSS>>20)

	vdir := t.TempDir()
	view, err := mountfs.MountRaw(vdir, []mountfs.RawFile{{Name: "disk.img", R: f, Size: fi.Size()}}, mountfs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer view.Unmount()
	res, err = Extract(ctx, img, filepath.Join(vdir, "disk.img"), "xfs", "/", filepath.Join(t.TempDir(), "fuse"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("appliance through a FUSE view: %d files %d MiB in %v (first byte after %v; %.0f MiB/s overall, %.0f MiB/s after boot), QEMU peak RSS %d MiB",
		res.Files, res.Bytes>>20, res.Duration.Round(time.Millisecond), res.Boot.Round(time.Millisecond), mib(res.Stats, res.Duration), mib(res.Stats, res.Duration-res.Boot), res.PeakRSS>>20)
}
