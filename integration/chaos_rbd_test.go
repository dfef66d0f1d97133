//go:build ceph

package integration

import (
	"context"
	"crypto/rand"
	"testing"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/disk/rbd"
	"github.com/raksha-backup/raksha/internal/testenv/cephlab"
	"github.com/raksha-backup/raksha/internal/testenv/chaos"
)

// TestChaosDataWorkerKilledMidRBDCopy SIGKILLs the data worker (a separate
// raksha-worker process) while it copies an RBD image from its snapshot,
// starts a new one, and checks that the backup completes from the saved
// position with a byte-identical restore and the RBD snapshot kept as the
// next diff base (nothing else left).
func TestChaosDataWorkerKilledMidRBDCopy(t *testing.T) {
	cl := cephlab.Require(t)
	c, addr := startTemporal(t)
	ctx := context.Background()
	conn, err := rbd.Connect(ctx, rbd.Config{CephConf: cl.CephConf})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const size = 512 << 20
	image := cephlab.UniqueName("vol")
	tg, err := conn.CreateImage(ctx, "rbd", image, size)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	rand.Read(data)
	for off := 0; off < size; off += 4 << 20 {
		if _, err := tg.WriteAt(data[off:off+4<<20], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tg.Close(); err != nil {
		t.Fatal(err)
	}
	row := &chaos.Row{Scenario: "data worker SIGKILLed during an RBD copy, restarted", Components: "dev server, raksha-worker data process, Ceph RBD (512 MiB image, snapshot), local repository"}
	res := killMidCopy{dir: t.TempDir(), data: data, instance: "i-1", locator: "rbd:rbd/" + image, role: "data", cephConf: cl.CephConf, row: row}.run(t, c, addr)
	snaps, err := conn.Snapshots(ctx, "rbd", image)
	if err != nil || len(snaps) != 1 || snaps[0].Name != activities.RBDSnapshotName(res.BackupID) {
		t.Errorf("snapshots after the backup: %+v %v; want only %s", snaps, err, activities.RBDSnapshotName(res.BackupID))
		row.Orphans += max(len(snaps)-1, 0)
	}
	chaos.Record(t, *row)
}
