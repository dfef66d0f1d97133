package activities

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/disk/file"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

// restoreRepo makes a repository with a workload backup of two servers
// (db: a volume and an ephemeral disk; web, booted from an image: its root
// disk, a swap disk and an ephemeral disk) and a plain
// disk-image backup, and returns the activities of a worker using it.
func restoreRepo(t *testing.T, password string) (*Activities, string, string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	be, err := local.Open(filepath.Join(dir, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Init(ctx, be, repo.InitOptions{Password: "right", ChunkSize: 64 << 10}, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "img")
	os.WriteFile(img, []byte(strings.Repeat("data", 40000)), 0o644)
	w := cloud.Workload{ProjectID: "p1", Servers: []cloud.ServerMeta{
		{ID: "s1", Name: "db", Volumes: []cloud.VolumeMeta{{ID: "v1", Name: "db-data", SizeGB: 1, Type: "ssd"}}, Ephemeral: []cloud.EphemeralMeta{{Index: 0, SizeGB: 1}}},
		{ID: "s2", Name: "web", Ephemeral: []cloud.EphemeralMeta{{Index: 0, SizeGB: 1}}, Image: &cloud.ImageMeta{ID: "img-1"}, Root: &cloud.RootDiskMeta{SizeGB: 1},
			Swap: &cloud.SwapDiskMeta{SizeMB: 64}},
	}}
	src, _ := json.Marshal(w)
	backup := func(spec repo.BackupSpec, disks map[string][]string) string {
		s, err := r.StartBackup(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		for vm, names := range disks {
			for _, n := range names {
				f, err := file.Open(img)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := s.BackupDisk(ctx, vm, n, f, repo.DiskOptions{}); err != nil {
					t.Fatal(err)
				}
				f.Close()
			}
		}
		b, err := s.Commit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return b.ID
	}
	wl := backup(repo.BackupSpec{Labels: map[string]string{"workload": "demo"}, Source: src}, map[string][]string{"db": {"vol-v1", "disk0"}, "web": {"root", "swap", "disk0"}})
	plain := backup(repo.BackupSpec{}, map[string][]string{"vm": {"disk"}})
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte(password+"\n"), 0o600)
	a := New(Config{Repos: map[string]RepoConfig{"main": {URL: "file://" + filepath.Join(dir, "repo"), PasswordFile: pw}}})
	return a, wl, plain
}

func TestPlanRestore(t *testing.T) {
	ctx := context.Background()
	a, wl, plain := restoreRepo(t, "right")
	p, err := a.PlanRestore(ctx, PlanRestoreInput{Repository: "main", BackupID: wl})
	if err != nil {
		t.Fatal(err)
	}
	if p.Project != "p1" || p.Workload != "demo" || len(p.VMs) != 2 || len(p.VMs[0].Disks) != 2 || len(p.VMs[1].Disks) != 3 {
		t.Fatalf("plan %+v", p)
	}
	for _, d := range p.VMs[0].Disks {
		switch d.Disk {
		case "vol-v1":
			if d.VolumeID != "v1" || d.VolumeName != "db-data" || d.VolumeType != "ssd" || d.SizeGB != 1 || d.Ephemeral != -1 {
				t.Errorf("volume disk %+v", d)
			}
		case "disk0":
			if d.VolumeID != "" || d.Ephemeral != 0 || d.SizeGB != 1 {
				t.Errorf("ephemeral disk %+v", d)
			}
		}
	}
	// Root, swap and ephemeral disks are written into their instance files.
	for _, d := range p.VMs[1].Disks {
		want := map[string]string{"root": "disk", "swap": "disk.swap", "disk0": "disk.eph0"}[d.Disk]
		if d.File != want || d.InstanceFile() != want || d.VolumeID != "" || d.SizeGB != 1 {
			t.Errorf("web disk %+v: file %q, want %q", d, d.File, want)
		}
	}
	if old := (RestorePlanDisk{Ephemeral: 0}); old.InstanceFile() != "disk.eph0" {
		t.Errorf("a plan made before root disks: file %q", old.InstanceFile())
	}
	// Selections: a VM by captured id, one volume by name.
	if p, err := a.PlanRestore(ctx, PlanRestoreInput{Repository: "main", BackupID: wl, VMs: []string{"s2"}}); err != nil || len(p.VMs) != 1 || p.VMs[0].Name != "web" {
		t.Errorf("select by id: %+v %v", p, err)
	}
	if p, err := a.PlanRestore(ctx, PlanRestoreInput{Repository: "main", BackupID: wl, Volumes: []string{"db-data"}}); err != nil || len(p.VMs) != 1 || len(p.VMs[0].Disks) != 1 || p.VMs[0].Disks[0].VolumeID != "v1" {
		t.Errorf("select a volume: %+v %v", p, err)
	}

	for _, tc := range []struct {
		in   PlanRestoreInput
		typ  string
		want string
	}{
		{PlanRestoreInput{Repository: "main", BackupID: wl, VMs: []string{"db", "cache"}}, ErrInvalid, "has no vm cache; it holds the servers db (s1), web (s2)"},
		{PlanRestoreInput{Repository: "main", BackupID: wl, Volumes: []string{"v9"}}, ErrInvalid, "has no volume v9"},
		{PlanRestoreInput{Repository: "main", BackupID: plain}, ErrInvalid, "holds no OpenStack servers"},
		{PlanRestoreInput{Repository: "main", BackupID: "20000101-000000-abcdef"}, ErrNotFound, "backup 20000101-000000-abcdef: not in repository main"},
		{PlanRestoreInput{Repository: "other", BackupID: wl}, ErrInvalid, `repository "other" is not in this worker's registry`},
	} {
		_, err := a.PlanRestore(ctx, tc.in)
		var ae *temporal.ApplicationError
		if !errors.As(err, &ae) || ae.Type() != tc.typ || !strings.Contains(err.Error(), tc.want) || !ae.NonRetryable() {
			t.Errorf("%+v: %v, want non-retryable %s with %q", tc.in, err, tc.typ, tc.want)
		}
	}

	// A worker with the wrong password: refused, not retried, repository named.
	b, wl2, _ := restoreRepo(t, "wrong")
	_, err = b.PlanRestore(ctx, PlanRestoreInput{Repository: "main", BackupID: wl2})
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != ErrUnauthorized || !ae.NonRetryable() || !strings.Contains(err.Error(), `repository "main"`) ||
		!strings.Contains(err.Error(), "password") || !strings.Contains(err.Error(), "backup "+wl2) {
		t.Errorf("wrong password: %v", err)
	}
	// WriteDisk names the disk (BACKUP/VM/DISK) with the password error.
	_, err = b.WriteDisk(ctx, WriteDiskInput{Repository: "main", Manifest: wl2 + "/db/vol-v1", Target: WriteTarget{Kind: "image", Path: "/nonexistent"}})
	if !errors.As(err, &ae) || ae.Type() != ErrUnauthorized || !strings.Contains(err.Error(), wl2+"/db/vol-v1") {
		t.Errorf("WriteDisk with the wrong password: %v", err)
	}
}
