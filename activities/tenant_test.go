package activities

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/testsuite"

	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/disk/file"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/labtest"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

// projectDiscoverer discovers one VM with one disk in a project.
type projectDiscoverer struct{ project string }

func (d projectDiscoverer) Discover(context.Context, Selector, string) ([]VM, json.RawMessage, error) {
	src, _ := json.Marshal(map[string]any{"name": "web", "project_id": d.project})
	return []VM{{ID: "s1", Name: "db", Host: "h1", Instance: "i-1", Disks: []Disk{{Name: "data", Locator: "qemu:h1/i-1/data"}}}}, src, nil
}

// tenantRepo is a repository holding backups of workload "web" in two
// projects (A and B), older records of A (no project label, or the project
// named by its name), and a record whose project cannot be told. It returns
// the activities using it and the ids by name.
func tenantRepo(t *testing.T, d Discoverer) (*Activities, *repo.Repository, map[string]string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	be, err := local.Open(filepath.Join(dir, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Init(ctx, be, repo.InitOptions{Password: "pw", ChunkSize: 64 << 10}, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "img")
	if err := os.WriteFile(img, []byte(strings.Repeat("data", 1000)), 0o644); err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	add := func(name string, labels map[string]string, project string) {
		var src json.RawMessage
		if project != "" {
			src, _ = json.Marshal(map[string]any{"name": "web", "project_id": project})
		}
		s, err := r.StartBackup(ctx, repo.BackupSpec{Labels: labels, Source: src})
		if err != nil {
			t.Fatal(err)
		}
		f, err := file.Open(img)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := s.BackupDisk(ctx, "db", "data", f, repo.DiskOptions{}); err != nil {
			t.Fatal(err)
		}
		b, err := s.Commit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = b.ID
		time.Sleep(10 * time.Millisecond) // their creation times order them
	}
	add("b-old", map[string]string{"workload": "web", "project": "B"}, "B")
	add("a-unlabelled", map[string]string{"workload": "web"}, "A")
	add("a-by-name", map[string]string{"workload": "web", "project": "tenant-a"}, "A")
	add("unknown", map[string]string{"workload": "web"}, "")
	add("b-new", map[string]string{"workload": "web", "project": "B"}, "B")
	add("a-new", map[string]string{"workload": "web", "project": "A"}, "A")
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := New(Config{Repos: map[string]RepoConfig{"main": {URL: "file://" + filepath.Join(dir, "repo"), PasswordFile: pw}}, Discoverer: d})
	return a, r, ids
}

// TestPruneKeyedByProject: project A's retention (last 1) over workload
// "web" removes A's older backups (those without a project label and those
// labelled by the project's name: their captured project is A) and keeps
// every backup of project B and the one whose project is unknown. A prune
// request without a project prunes nothing.
func TestPruneKeyedByProject(t *testing.T) {
	ctx := context.Background()
	a, r, ids := tenantRepo(t, nil)
	if _, err := a.Prune(ctx, PruneInput{Repository: "main", Labels: map[string]string{"workload": "web"}, Retention: Retention{Last: 1}}); err == nil ||
		!strings.Contains(err.Error(), "no project given") {
		t.Errorf("prune without a project: %v", err)
	}
	res, err := a.Prune(ctx, PruneInput{Repository: "main", Labels: map[string]string{"workload": "web"}, Retention: Retention{Last: 1},
		ByProject: true, Project: "A"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{ids["a-unlabelled"], ids["a-by-name"]}
	slices.Sort(want)
	slices.Sort(res.Removed)
	if !slices.Equal(res.Removed, want) {
		t.Errorf("removed %v, want A's older backups %v", res.Removed, want)
	}
	left, err := r.ListBackups(ctx, repo.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range left {
		got = append(got, b.ID)
	}
	for _, keep := range []string{"b-old", "b-new", "unknown", "a-new"} {
		if !slices.Contains(got, ids[keep]) {
			t.Errorf("%s (%s) was pruned by project A's retention", keep, ids[keep])
		}
	}
}

// TestBeginBaseFromOwnProject: a backup of workload "web" in project B
// takes its base from B's newest backup, never from A's newer one, and its
// record's project label is the captured project id whatever the request
// named the project by.
func TestBeginBaseFromOwnProject(t *testing.T) {
	ctx := context.Background()
	a, r, ids := tenantRepo(t, projectDiscoverer{project: "B"})
	res, err := a.Begin(ctx, BeginInput{Repository: "main", BackupID: "20300101-000000-abcdef", Workload: "web", Project: "tenant-b",
		Labels: map[string]string{"workload": "web", "project": "tenant-b"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.ProjectID != "B" {
		t.Errorf("project %q, want the captured B", res.ProjectID)
	}
	if base := res.VMs[0].Disks[0].Base; base != ids["b-new"]+"/db/data" {
		t.Errorf("base %s, want project B's newest %s/db/data (A's newest is %s)", base, ids["b-new"], ids["a-new"])
	}
	s, err := r.JoinBackup(ctx, "20300101-000000-abcdef")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	// Project A's base is A's newest.
	a2 := New(Config{Repos: a.cfg.Repos, Discoverer: projectDiscoverer{project: "A"}})
	res, err = a2.Begin(ctx, BeginInput{Repository: "main", BackupID: "20300101-000001-abcdef", Workload: "web", Labels: map[string]string{"workload": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	if base := res.VMs[0].Disks[0].Base; base != ids["a-new"]+"/db/data" {
		t.Errorf("base %s, want project A's newest %s/db/data", base, ids["a-new"])
	}
}

func TestCheckUserLabels(t *testing.T) {
	if err := CheckUserLabels(map[string]string{"team": "x", "env": "prod"}); err != nil {
		t.Errorf("user labels refused: %v", err)
	}
	for _, l := range []string{"workload", "project", "policy"} {
		err := CheckUserLabels(map[string]string{"team": "x", l: "y"})
		if err == nil || !strings.Contains(err.Error(), `"`+l+`"`) {
			t.Errorf("label %s: %v", l, err)
		}
	}
}

// TestResolveProjectThroughKeystone resolves a project named by name, by
// id and not at all through the lab's Keystone, as the workload lock does.
func TestResolveProjectThroughKeystone(t *testing.T) {
	ctx := context.Background()
	l := labtest.Start(t)
	demo, err := l.EnsureProject("demo")
	if err != nil {
		t.Fatal(err)
	}
	other, err := l.EnsureProject("other")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"demo", "other"} {
		if _, err := l.EnsureUser(lab.AdminUser, labtest.AdminPassword, p, "admin"); err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{"OS_AUTH_URL": l.AuthURL(), "OS_USERNAME": lab.AdminUser, "OS_PASSWORD": labtest.AdminPassword,
		"OS_PROJECT_NAME": "demo", "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default", "OS_REGION_NAME": "RegionOne"}
	c, err := cloud.Connect(ctx, cloud.ConfigFromEnv(func(k string) string { return env[k] }))
	if err != nil {
		t.Fatal(err)
	}
	var s testsuite.WorkflowTestSuite
	tenv := s.NewTestActivityEnvironment()
	RegisterRole(tenv, New(Config{Discoverer: &CloudDiscoverer{Client: c}}), RoleControl)
	for in, want := range map[string]string{"": demo, "demo": demo, "other": other, other: other} {
		v, err := tenv.ExecuteActivity("ResolveProject", ResolveProjectInput{Project: in})
		var got string
		if err == nil {
			err = v.Get(&got)
		}
		if err != nil || got != want {
			t.Errorf("resolve %q: %q %v, want %s", in, got, err, want)
		}
	}
	if _, err := tenv.ExecuteActivity("ResolveProject", ResolveProjectInput{Project: "nope"}); err == nil || !strings.Contains(err.Error(), `resolve project "nope"`) {
		t.Errorf("unknown project: %v", err)
	}
}
