package integration

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
	"github.com/raksha-backup/raksha/internal/testenv/chaos"
)

// TestLibvirtHostWorkerKilledMidCopyResumes is the kill test on a libvirt
// host: the host worker (raksha-worker --libvirt-uri, a separate process)
// is SIGKILLed while it copies a 1 GiB disk of a libvirt domain through the
// pull-mode export; a new worker finds the libvirt job from its record and
// the copy completes from the saved position; the restore is byte-identical
// and no checkpoint metadata or job is left on the domain.
func TestChaosLibvirtHostWorkerKilledMidCopy(t *testing.T) {
	conn := libvirttest.Conn(t)
	img := vmtest.Image(t)
	c, addr := startTemporal(t)
	dir := t.TempDir()
	data, disk := randomDisk(t, dir, 1<<30)
	d := libvirttest.Boot(t, conn, img, libvirttest.Spec{Images: []string{disk}, NoWriter: true})
	row := &chaos.Row{Scenario: "host worker SIGKILLed during a backup's copy (libvirt), restarted", Components: "dev server, raksha-worker process, libvirtd (checkpoints, pull backup, 1 GiB disk), local repository"}
	killMidCopy{dir: dir, data: data, instance: d.Name, locator: "libvirt:h1/" + d.UUID + "/target=vda",
		reach: []string{"--libvirt-uri", "qemu:///system", "--lock-dir", filepath.Join(dir, "locks")}, row: row}.run(t, c, addr)
	ctx := context.Background()
	if names, err := conn.CheckpointNames(ctx, d.Dom); err != nil || len(names) > 0 {
		t.Errorf("checkpoint metadata left: %v %v", names, err)
		row.Orphans += len(names)
	}
	if active, err := conn.JobActive(ctx, d.Dom); err != nil || active {
		t.Errorf("job left: %v %v", active, err)
		row.Orphans++
	}
	chaos.Record(t, *row)
}
