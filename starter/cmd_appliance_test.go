package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/appliance"
	"github.com/raksha-backup/raksha/internal/loopfs/xfstest"
)

// needAppliance builds the appliance (cached by the script) and points
// RAKSHA_APPLIANCE at it, or fails under CI and skips loudly elsewhere.
func needAppliance(t *testing.T) {
	t.Helper()
	if err := appliance.Check(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip("SKIPPED: " + err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := appliance.BuildImage(ctx, appliance.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(appliance.EnvDir, filepath.Dir(img.Kernel))
}

// TestCLIRestoreFilesAppliance: by default an XFS disk and an ext4 disk
// whose journal needs recovery are mounted in the appliance, not on the
// host: the files come out intact (the journal's too), the JSON says where
// and what it took, and nothing is left mounted, attached or in TMPDIR.
// Without an appliance, XFS is refused naming what is missing and the way
// around, and ext4 falls back to raksha's reader with a warning.
func TestCLIRestoreFilesAppliance(t *testing.T) {
	needAppliance(t)
	tmp := xfstest.PrivateTmp(t)
	whole, _, staging := xfsDisks(t)
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "1MiB")
	var b diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", whole)), &b); err != nil {
		t.Fatal(err)
	}

	to := filepath.Join(t.TempDir(), "xfs")
	out, errs, err := c.run("restore", "files", b.ID, "--path", "/etc/app/", "--to", to, "-f", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, errs)
	}
	var res restoreFilesResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if res.FSType != "xfs" || res.MountIn != "appliance" || res.Appliance == nil || res.Appliance.BootMs == 0 || res.Files != 2 || res.Symlinks != 2 ||
		len(res.Skipped) != 1 || res.Skipped[0] != "/etc/app/fifo: special file (mode 010600) not restored" {
		t.Fatalf("json: %s\nstderr: %s", out, errs)
	}
	for _, name := range []string{"app.conf", "big.bin"} {
		if sum(t, filepath.Join(to, "app", name)) != sum(t, filepath.Join(staging, "etc/app", name)) {
			t.Fatalf("%s differs", name)
		}
	}
	if target, err := os.Readlink(filepath.Join(to, "app/evil")); err != nil || target != "../../../../../../../../etc/passwd" {
		t.Fatalf("evil: %q %v", target, err)
	}
	t.Logf("xfs through the appliance: %+v", *res.Appliance)
	xfstest.AssertNoLeftovers(t, tmp)

	id, recent := dirtyExt4Backup(t, c, "")
	to = filepath.Join(t.TempDir(), "ext4")
	out, errs, err = c.run("restore", "files", id, "--path", "/etc/app/recent.bin", "--to", to)
	if err != nil || !strings.Contains(out, "replayed by the appliance's kernel into a private overlay") || !strings.Contains(out, "mounted in the appliance (") ||
		strings.Contains(errs, "warning") || sum(t, filepath.Join(to, "recent.bin")) != sumBytes(recent) {
		t.Fatalf("%v\n%s\n%s", err, out, errs)
	}
	t.Logf("ext4 through the appliance: %s", strings.TrimSpace(out))
	xfstest.AssertNoLeftovers(t, tmp)

	// no appliance
	t.Setenv(appliance.EnvDir, "")
	_, errs, err = c.run("restore", "files", b.ID, "--path", "/etc/app/", "--to", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "no appliance image") || !strings.Contains(err.Error(), "build-appliance.sh") || !strings.Contains(err.Error(), "--mount-in host") {
		t.Fatalf("xfs without an appliance: %v\n%s", err, errs)
	}
	out, errs, err = c.run("restore", "files", id, "--path", "/etc/app/", "--to", t.TempDir(), "-f", "json")
	res = restoreFilesResult{}
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || res.Replay != "skipped" || !strings.Contains(res.ReplayNote, "no appliance image") ||
		!strings.Contains(errs, "recent writes") && !strings.Contains(errs, "may be missing") {
		t.Fatalf("ext4 without an appliance: %v\n%s\n%s", err, out, errs)
	}
	_, _, err = c.run("restore", "files", id, "--mount-in", "nowhere", "--path", "/", "--to", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), `--mount-in "nowhere"`) {
		t.Fatalf("--mount-in nowhere: %v", err)
	}
	xfstest.AssertNoLeftovers(t, tmp)
	if left, _ := filepath.Glob(filepath.Join(tmp, "raksha-appliance-*")); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}
