package workflows

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/testsuite"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

// memDisk is a disk.Source over bytes.
type memDisk []byte

func (m memDisk) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m)) {
		return 0, io.EOF
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (m memDisk) Size() int64                             { return int64(len(m)) }
func (m memDisk) Allocated() ([]disk.Extent, bool, error) { return nil, false, nil }
func (m memDisk) Close() error                            { return nil }

// topoDiscoverer is the cloud: the workload is whatever vms holds now.
type topoDiscoverer struct {
	mu  sync.Mutex
	vms []activities.VM
}

func (d *topoDiscoverer) Discover(context.Context, activities.Selector, string) ([]activities.VM, json.RawMessage, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.vms), json.RawMessage(`{"test":"topology"}`), nil
}

func topoVM(name string, disks ...string) activities.VM {
	vm := activities.VM{ID: "id-" + name, Name: name, Host: "h1", Instance: "instance-" + name}
	for _, d := range disks {
		vm.Disks = append(vm.Disks, activities.Disk{Name: d, Size: 1 << 20, Locator: activities.Locator("qemu:h1/instance-" + name + "/" + d)})
	}
	return vm
}

// TestTopologyChangeBetweenRuns runs WorkloadBackup three times over a real
// repository (the real Begin, Commit, Abort and Prune activities; the
// host's freeze, checkpoint, thaw and copy mocked, the copy writing real
// manifests): run 1 backs up db(vda) and web(vda); then web leaves the
// workload, cache(vda) joins and db gains vdb; run 2 copies the new disks
// in full, db/vda against run 1's manifest and bitmap, and its record has
// no web; run 3 (web back) diffs web/vda against run 1, its last backup.
func TestTopologyChangeBetweenRuns(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	be, err := local.Open(filepath.Join(dir, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Init(ctx, be, repo.InitOptions{Password: "secret", ChunkSize: repo.MinChunkSize}, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	disc := &topoDiscoverer{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	acts := activities.New(activities.Config{Discoverer: disc, Log: quiet,
		Repos: map[string]activities.RepoConfig{"main": {URL: "file://" + filepath.Join(dir, "repo"), PasswordFile: pw}}})

	type copied struct{ base, baseCheckpoint string }
	start := time.Date(2026, 11, 1, 2, 0, 0, 0, time.UTC)
	run := func(n int, vms ...activities.VM) (*BackupResult, map[string]copied, []string) {
		t.Helper()
		disc.mu.Lock()
		disc.vms = vms
		disc.mu.Unlock()
		var s testsuite.WorkflowTestSuite
		env := s.NewTestWorkflowEnvironment()
		env.SetStartTime(start.Add(time.Duration(n) * 24 * time.Hour))
		env.RegisterActivity(acts)
		env.RegisterWorkflow(CopyDisks)
		checkRoleQueues(t, env)
		var mu sync.Mutex
		copies := map[string]copied{}
		var released []string
		env.OnActivity(acts.Freeze, mock.Anything, mock.Anything).Return(&activities.FreezeResult{}, nil)
		env.OnActivity(acts.Thaw, mock.Anything, mock.Anything).Return(&activities.ThawResult{WasFrozen: true, Window: time.Second}, nil)
		env.OnActivity(acts.Checkpoint, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.CheckpointInput) (*activities.CheckpointResult, error) {
			return &activities.CheckpointResult{Bitmap: activities.NewBitmapName(in.BackupID)}, nil
		})
		env.OnActivity(acts.FinishCheckpoint, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.FinishInput) error {
			if in.Action == activities.FinishRelease {
				mu.Lock()
				released = append(released, in.Instance)
				mu.Unlock()
			}
			return nil
		})
		env.OnActivity(acts.CopyDisk, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.CopyInput) (*activities.CopyResult, error) {
			mu.Lock()
			copies[in.VM+"/"+in.Disk.Name] = copied{in.Disk.Base, in.Disk.BaseCheckpoint}
			mu.Unlock()
			s, err := r.JoinBackup(ctx, in.BackupID)
			if err != nil {
				return nil, err
			}
			data := make(memDisk, in.Disk.Size)
			for i := range data {
				data[i] = byte(n + i%7)
			}
			m, err := s.BackupDisk(ctx, in.VM, in.Disk.Name, data, repo.DiskOptions{Base: in.Disk.Base,
				Checkpoint: &repo.Checkpoint{Kind: "qemu-bitmap", Name: in.Checkpoint}})
			if err != nil {
				return nil, err
			}
			return &activities.CopyResult{Manifest: m.ID, Size: m.Size, BytesRead: m.Stats.BytesRead, Incremental: m.Base != ""}, nil
		})
		env.ExecuteWorkflow(WorkloadBackup, BackupRequest{Workload: "shop", Repository: "main", Consistency: "app"})
		if err := env.GetWorkflowError(); err != nil {
			t.Fatalf("run %d: %v", n, err)
		}
		var res BackupResult
		if err := env.GetWorkflowResult(&res); err != nil {
			t.Fatal(err)
		}
		slices.Sort(released)
		return &res, copies, released
	}
	recordDisks := func(id string) []string {
		t.Helper()
		b, err := r.LoadBackup(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range b.Disks {
			out = append(out, d.VM+"/"+d.Disk)
		}
		slices.Sort(out)
		return out
	}

	first, c1, _ := run(1, topoVM("db", "vda"), topoVM("web", "vda"))
	if b, err := r.LoadBackup(ctx, first.BackupID); err != nil || b.Consistency != "app" ||
		!maps.Equal(b.FreezeWindows, map[string]time.Duration{"db": time.Second, "web": time.Second}) {
		t.Errorf("run 1's record: consistency %q, freeze windows %v (%v)", b.Consistency, b.FreezeWindows, err)
	}
	for k, c := range c1 {
		if c != (copied{}) {
			t.Errorf("run 1: %s had a base %+v", k, c)
		}
	}

	second, c2, rel2 := run(2, topoVM("db", "vda", "vdb"), topoVM("cache", "vda"))
	want := map[string]copied{
		"db/vda":    {first.BackupID + "/db/vda", activities.NewBitmapName(first.BackupID)},
		"db/vdb":    {},
		"cache/vda": {},
	}
	if len(c2) != len(want) {
		t.Errorf("run 2 copied %v, want %v", c2, want)
	}
	for k, w := range want {
		if got, ok := c2[k]; !ok || got != w {
			t.Errorf("run 2, %s: base %+v (copied %v), want %+v", k, got, ok, w)
		}
	}
	for _, d := range second.Disks {
		if inc := d.Manifest == second.BackupID+"/db/vda"; d.Incremental != inc {
			t.Errorf("run 2, %s: incremental %v, want %v", d.Manifest, d.Incremental, inc)
		}
	}
	if got := recordDisks(second.BackupID); !slices.Equal(got, []string{"cache/vda", "db/vda", "db/vdb"}) {
		t.Errorf("run 2's record holds %v, want cache/vda db/vda db/vdb (web left the workload)", got)
	}
	if !slices.Equal(rel2, []string{"instance-cache", "instance-db"}) {
		t.Errorf("run 2 released the older checkpoints of %v, want cache and db only", rel2)
	}
	if got := recordDisks(first.BackupID); !slices.Equal(got, []string{"db/vda", "web/vda"}) {
		t.Errorf("run 1's record changed: %v", got)
	}

	third, c3, _ := run(3, topoVM("db", "vda", "vdb"), topoVM("web", "vda"))
	want = map[string]copied{
		"db/vda":  {second.BackupID + "/db/vda", activities.NewBitmapName(second.BackupID)},
		"db/vdb":  {second.BackupID + "/db/vdb", activities.NewBitmapName(second.BackupID)},
		"web/vda": {first.BackupID + "/web/vda", activities.NewBitmapName(first.BackupID)},
	}
	for k, w := range want {
		if got := c3[k]; got != w {
			t.Errorf("run 3, %s: base %+v, want %+v", k, got, w)
		}
	}
	if got := recordDisks(third.BackupID); !slices.Equal(got, []string{"db/vda", "db/vdb", "web/vda"}) {
		t.Errorf("run 3's record holds %v", got)
	}
}
