package activities

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/testsuite"

	"github.com/raksha-backup/raksha/internal/freezerec"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/testenv/repotest"
)

// staticDiscoverer hands Begin a fixed VM list (the cloud is not what
// these tests are about).
type staticDiscoverer struct{ vms []VM }

func (s staticDiscoverer) Discover(context.Context, Selector, string) ([]VM, json.RawMessage, error) {
	return s.vms, json.RawMessage(`{}`), nil
}

// TestLibvirtHostActivities runs the host activities of a backup against a
// real libvirt guest with two disks: Begin, Freeze, Checkpoint, Thaw,
// CopyDisk, FinishCheckpoint (cleanup), Commit, FinishCheckpoint
// (release), twice. The second backup's copies run on a new Activities
// value (a host worker that restarted after the checkpoint): it finds the
// libvirt job from its record and copies incrementally. Manifests record
// the mode and the reason; no checkpoint metadata, job or record stays; the
// restored second backup holds a clean file system with the file written
// between the backups.
func TestLibvirtHostActivities(t *testing.T) {
	c := libvirttest.Conn(t)
	img := vmtest.Image(t)
	d := libvirttest.Boot(t, c, img, libvirttest.Spec{Labels: []string{"d1", "d2"}, NoWriter: true})
	dir := t.TempDir()
	r := repotest.NewLocal(t, filepath.Join(dir, "repo"), 1<<20)
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte(repotest.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	vm := VM{ID: d.UUID, Name: "db", Host: "h1", Instance: d.Name, Disks: []Disk{
		{Name: "vol-a", Locator: Locator("libvirt:h1/" + d.UUID + "/target=vda"), Size: 64 << 20},
		{Name: "vol-b", Locator: Locator("libvirt:h1/" + d.UUID + "/target=vdb"), Size: 64 << 20},
	}}
	work, locks := filepath.Join(dir, "work"), filepath.Join(dir, "locks")
	freezes, err := freezerec.Open(filepath.Join(dir, "freezes"))
	if err != nil {
		t.Fatal(err)
	}
	newActs := func() (*Activities, *testsuite.TestActivityEnvironment) {
		a := New(Config{Repos: map[string]RepoConfig{"main": {URL: "file://" + filepath.Join(dir, "repo"), PasswordFile: pw}},
			Discoverer: staticDiscoverer{[]VM{vm}}, WorkDir: work, Libvirt: c, LockDir: locks, Freezes: freezes})
		env := (&testsuite.WorkflowTestSuite{}).NewTestActivityEnvironment()
		env.RegisterActivity(a)
		return a, env
	}
	run := func(env *testsuite.TestActivityEnvironment, fn, in, out any) {
		t.Helper()
		v, err := env.ExecuteActivity(fn, in)
		if err != nil {
			t.Fatal(err)
		}
		if out != nil {
			if err := v.Get(out); err != nil {
				t.Fatal(err)
			}
		}
	}
	backup := func(id string, restartBeforeCopy bool) map[string]*CopyResult {
		t.Helper()
		a, env := newActs()
		var begin BeginResult
		run(env, a.Begin, BeginInput{Repository: "main", BackupID: id, Workload: "w", Labels: map[string]string{"workload": "w"}}, &begin)
		v := begin.VMs[0]
		var fr FreezeResult
		run(env, a.Freeze, FreezeInput{Instance: v.Instance, Timeout: time.Minute}, &fr)
		if fr.NoAgent {
			t.Fatal("freeze: the agent did not answer through libvirt")
		}
		// The freeze is recorded for the watchdog while it lasts.
		if rec, err := freezes.Read("libvirt-" + d.UUID); err != nil || rec.Route.Domain != d.UUID || rec.Route.LockDir != locks || !rec.Deadline.Equal(fr.Deadline.UTC()) {
			t.Fatalf("freeze record: %+v, %v", rec, err)
		}
		var cr CheckpointResult
		run(env, a.Checkpoint, CheckpointInput{BackupID: id, Instance: v.Instance, Disks: v.Disks, Repository: "main"}, &cr)
		var tr ThawResult
		run(env, a.Thaw, ThawInput{Instance: v.Instance}, &tr)
		if !tr.WasFrozen || tr.GuardThawed || tr.Lost != "" {
			t.Fatalf("thaw: %+v", tr)
		}
		if keys, err := freezes.Keys(); err != nil || len(keys) != 0 {
			t.Fatalf("freeze records after the thaw: %v, %v", keys, err)
		}
		if restartBeforeCopy {
			a, env = newActs()
		}
		res := map[string]*CopyResult{}
		var manifests []string
		for _, dk := range v.Disks {
			var out CopyResult
			run(env, a.CopyDisk, CopyInput{Repository: "main", BackupID: id, VM: v.Name, Instance: v.Instance, Disk: dk, Checkpoint: cr.Bitmap, VMDisks: v.Disks}, &out)
			res[dk.Name] = &out
			manifests = append(manifests, out.Manifest)
		}
		run(env, a.FinishCheckpoint, FinishInput{BackupID: id, Instance: v.Instance, Disks: v.Disks, Action: FinishCleanup}, nil)
		run(env, a.Commit, CommitInput{Repository: "main", BackupID: id, Consistency: "app", Manifests: manifests}, nil)
		run(env, a.FinishCheckpoint, FinishInput{BackupID: id, Instance: v.Instance, Disks: v.Disks, Action: FinishRelease}, nil)
		// Idempotent: a retried release finds nothing left to do.
		run(env, a.FinishCheckpoint, FinishInput{BackupID: id, Instance: v.Instance, Disks: v.Disks, Action: FinishRelease}, nil)
		if names, err := c.CheckpointNames(context.Background(), d.Dom); err != nil || len(names) > 0 {
			t.Fatalf("checkpoint metadata left: %v %v", names, err)
		}
		if active, err := c.JobActive(context.Background(), d.Dom); err != nil || active {
			t.Fatalf("job left: %v %v", active, err)
		}
		if left, _ := filepath.Glob(filepath.Join(work, "libvirt", d.UUID, "*")); len(left) > 0 {
			t.Fatalf("left in the work directory: %v", left)
		}
		return res
	}
	checkMode := func(manifest, mode, reason string) {
		t.Helper()
		m, err := r.LoadManifest(context.Background(), manifest)
		if err != nil {
			t.Fatal(err)
		}
		if m.Checkpoint == nil || m.Checkpoint.Kind != libvirt.CheckpointKind || m.Checkpoint.Mode != mode || !strings.Contains(m.Checkpoint.Reason, reason) {
			t.Fatalf("manifest %s checkpoint %+v, want %s (%q)", manifest, m.Checkpoint, mode, reason)
		}
	}

	first := backup("b1", false)

	// A Thaw on a worker that holds no freeze of the guest (the one that
	// froze it is gone) reports the thaw as lost, never as a clean one.
	{
		a, env := newActs()
		var tr ThawResult
		run(env, a.Thaw, ThawInput{Instance: d.Name}, &tr)
		if !tr.GuardThawed || !strings.Contains(tr.Lost, "found thawed already") {
			t.Fatalf("thaw without the freeze: %+v; want a lost thaw", tr)
		}
	}
	for _, n := range []string{"vol-a", "vol-b"} {
		if first[n].Incremental {
			t.Fatalf("first backup of %s incremental", n)
		}
		checkMode(first[n].Manifest, "full", "no base checkpoint")
	}

	ag := libvirttest.Agent(t, c, d)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if r, err := ag.Run(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", "dd if=/dev/urandom of=/data/d1/blob bs=64k count=32 conv=fsync 2>/dev/null && sync"}}); err != nil || r.ExitCode != 0 {
		t.Fatalf("write in the guest: %v %+v", err, r)
	}
	ag.Close()

	second := backup("b2", true)
	for _, n := range []string{"vol-a", "vol-b"} {
		if !second[n].Incremental {
			t.Fatalf("second backup of %s not incremental: %+v", n, second[n])
		}
		checkMode(second[n].Manifest, "incremental", "")
	}
	if got := second["vol-a"].BytesRead; got < 2<<20 || got > 6<<20 {
		t.Fatalf("vol-a incremental read %d bytes for a 2 MiB write", got)
	}
	if got := second["vol-b"].BytesRead; got > 2<<20 {
		t.Fatalf("vol-b incremental read %d bytes with nothing written to it", got)
	}
	t.Logf("first: %d + %d bytes read; second: %d + %d", first["vol-a"].BytesRead, first["vol-b"].BytesRead, second["vol-a"].BytesRead, second["vol-b"].BytesRead)

	// The second backup's vda: a clean file system holding the 2 MiB file.
	out := filepath.Join(dir, "vda.img")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.RestoreDisk(context.Background(), second["vol-a"].Manifest, f, repo.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if o, err := exec.Command("e2fsck", "-fn", out).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck of the restored disk: %v\n%s", err, o)
	}
	o, err := exec.Command("debugfs", "-R", "stat /blob", out).CombinedOutput()
	if err != nil || !strings.Contains(string(o), "Size: 2097152") {
		t.Fatalf("debugfs stat /blob: %v\n%s", err, o)
	}
}

// TestLibvirtFreezeNoAgent: a domain that is not running is reported as
// having no agent (nothing frozen), as on the socket path.
func TestLibvirtFreezeNoAgent(t *testing.T) {
	c := libvirttest.Conn(t)
	img := vmtest.Image(t)
	d := libvirttest.Boot(t, c, img, libvirttest.Spec{Labels: []string{"d1"}, NoWriter: true})
	if err := c.Libvirt().DomainDestroy(d.Dom); err != nil {
		t.Fatal(err)
	}
	a := New(Config{WorkDir: t.TempDir(), Libvirt: c, LockDir: t.TempDir()})
	env := (&testsuite.WorkflowTestSuite{}).NewTestActivityEnvironment()
	env.RegisterActivity(a)
	v, err := env.ExecuteActivity(a.Freeze, FreezeInput{Instance: d.Name, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var fr FreezeResult
	if err := v.Get(&fr); err != nil || !fr.NoAgent {
		t.Fatalf("freeze of a stopped domain: %+v, %v; want NoAgent", fr, err)
	}
	if _, err := env.ExecuteActivity(a.Freeze, FreezeInput{Instance: "../x", Timeout: time.Minute}); err == nil || !strings.Contains(err.Error(), "invalid instance name") {
		t.Fatalf("freeze of a bad instance name: %v", err)
	}
}
