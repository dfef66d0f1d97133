package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/testenv/chaos"
	"github.com/raksha-backup/raksha/workflows"
)

// TestChaosKeystoneTokenExpires: the lab's Keystone issues tokens that live
// 4 s, far shorter than a restore, so the workers' tokens expire before a
// backup's discovery (its only cloud calls) and in the middle of a restore
// (volume creation and attachment, server creation, the waits for ACTIVE).
// Both must complete: the cloud client authenticates again on the 401 and
// retries.
func TestChaosKeystoneTokenExpires(t *testing.T) {
	const ttl = 4 * time.Second
	e := newLabEnvWith(t, labEnvOptions{TokenTTL: ttl})
	row := chaos.Row{Scenario: fmt.Sprintf("Keystone tokens expiring every %v, in the middle of a backup and of a restore as new servers", ttl),
		Components: "lab Keystone/Nova/Cinder, dev server, QEMU + qemu-ga", Rounds: 1}
	start := time.Now()
	b := e.backup()
	backupTook := time.Since(start)
	if b.Consistency != "app" || len(b.Disks) != 4 {
		t.Fatalf("backup with expiring tokens: %+v", b)
	}
	res, took, err := e.restore("restore/token-expiry", workflows.RestoreRequest{Repository: "main", BackupID: b.BackupID,
		VMs: []string{"demo-1"}, NamePrefix: "tok-"})
	if err != nil {
		row.FailedCleanly = 1
		chaos.Record(t, row)
		t.Fatalf("restore with expiring tokens: %v", err)
	}
	if len(res.Servers) != 1 || len(res.Disks) != 2 {
		t.Fatalf("restore result %+v", res)
	}
	if took < ttl {
		t.Errorf("the restore took %v, less than the token lifetime %v: no token expired during it", took, ttl)
	}
	out := e.guestCheck(res.Servers[0].Instance)
	// The socket layout backs up no root disk: the ephemeral disk and the
	// volume carry the writer's records.
	for _, dir := range []string{"/data/ephemeral0/", "/data/demo-1-data/"} {
		if !strings.Contains(out, "OK "+dir) {
			t.Errorf("restored demo-1: the in-guest check does not find %s intact:\n%s", dir, out)
		}
	}
	row.Completed = 1
	row.Recover = took
	row.Notes = fmt.Sprintf("backup %.1fs (its discovery on an expired token), restore %.1fs (tokens expired %d times during it)", backupTook.Seconds(), took.Seconds(), int(took/ttl))
	e.assertThawed(t)
	chaos.Record(t, row)
}
