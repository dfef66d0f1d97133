package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.temporal.io/sdk/worker"
	"gopkg.in/yaml.v3"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/api/apiclient"
	"github.com/raksha-backup/raksha/internal/disk/file"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/labtest"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/testenv/repotest"
	"github.com/raksha-backup/raksha/workflows"
)

// apiCloud is a raksha-api on the lab's Keystone (listed in its catalog as
// data-protection), a Temporal dev server with a worker that runs the
// workflows but no activity, and a repository with backups of two
// projects; clouds.yaml has an entry per user.
type apiCloud struct {
	clouds   string
	projects map[string]string   // name → id
	backups  map[string][]string // project name → backup ids, oldest first
	file     []byte              // /etc/app.conf in alpha's "app" backup
}

func startAPICloud(t *testing.T) *apiCloud {
	t.Helper()
	srv := startDevServerWithSA(t)
	w := worker.New(srv.Client(), activities.ControlQueue, worker.Options{})
	w.RegisterWorkflow(workflows.WorkloadBackup)
	w.RegisterWorkflow(workflows.Semaphore)
	w.RegisterWorkflow(workflows.Restore)
	w.RegisterWorkflow(workflows.Clone)
	w.RegisterWorkflow(workflows.CloneDelete)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)

	l := labtest.Start(t)
	c := &apiCloud{projects: map[string]string{}, backups: map[string][]string{}}
	for _, p := range []string{"alpha", "beta"} {
		var err error
		if c.projects[p], err = l.EnsureProject(p); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []struct{ user, project, role string }{{"alice", "alpha", "member"}, {"bob", "beta", "member"}, {"rita", "alpha", "reader"}} {
		if _, err := l.EnsureUser(u.user, u.user+"-pw", u.project, u.role); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	r := repotest.NewLocal(t, filepath.Join(dir, "repo"), 64<<10)
	pwFile := filepath.Join(dir, "password")
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(pwFile, []byte(repotest.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, []byte(strings.Repeat("raksha", 20000)), 0o600); err != nil {
		t.Fatal(err)
	}
	// alpha's "app" backup is of an ext4 file system with a file in it.
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	c.file = []byte(strings.Repeat("the app's configuration\n", 5000))
	if err := os.WriteFile(filepath.Join(tree, "etc", "app.conf"), c.file, 0o644); err != nil {
		t.Fatal(err)
	}
	ext4 := filepath.Join(dir, "ext4.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, ext4, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 (e2fsprogs, make test-deps): %v\n%s", err, out)
	}
	for i, b := range []struct{ project, workload string }{{"alpha", "web"}, {"beta", "db"}, {"alpha", "web"}, {"alpha", "app"}} {
		id := fmt.Sprintf("20261201-0000%02d-%s", i, b.project)
		pid := c.projects[b.project]
		src, _ := json.Marshal(map[string]any{"name": b.workload, "project_id": pid,
			"servers": []any{map[string]any{"id": "srv-" + b.project, "name": b.workload + "-1"}}})
		s, err := r.StartBackup(context.Background(), repo.BackupSpec{ID: id, Labels: map[string]string{"workload": b.workload, "project": pid}, Source: src})
		if err != nil {
			t.Fatal(err)
		}
		disk := img
		if b.workload == "app" {
			disk = ext4
		}
		d, err := file.Open(disk)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.BackupDisk(context.Background(), "vm1", "root", d, repo.DiskOptions{}); err != nil {
			t.Fatal(err)
		}
		d.Close()
		if _, err := s.Commit(context.Background()); err != nil {
			t.Fatal(err)
		}
		c.backups[b.project] = append(c.backups[b.project], id)
	}
	s, err := api.New(api.Config{
		Identity: api.NewKeystone(api.ServiceCredentials{AuthURL: l.AuthURL(), Username: lab.AdminUser,
			Password: labtest.AdminPassword, ProjectName: lab.AdminProject}, nil),
		AuthURL: l.AuthURL(), Temporal: srv.Client(), DefaultRepository: "main",
		Repos: api.NewRegistry(map[string]activities.RepoConfig{"main": {URL: "file://" + filepath.Join(dir, "repo"), PasswordFile: pwFile}}, nil),
		Log:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	l.AddService(apiclient.ServiceType, "raksha", hs.URL)

	clouds := map[string]any{}
	for _, u := range []struct{ user, project string }{{"alice", "alpha"}, {"bob", "beta"}, {"rita", "alpha"}} {
		clouds[u.user] = map[string]any{"auth": map[string]any{"auth_url": l.AuthURL(), "username": u.user, "password": u.user + "-pw",
			"project_name": u.project, "user_domain_name": "Default", "project_domain_name": "Default"}, "identity_api_version": 3}
	}
	data, _ := yaml.Marshal(map[string]any{"clouds": clouds})
	c.clouds = filepath.Join(dir, "clouds.yaml")
	if err := os.WriteFile(c.clouds, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCLIThroughAPI: with a cloud named (--os-cloud, or OS_CLOUD without
// an operator's --repo or --temporal), raksha lists, shows, restores and
// cancels through raksha-api, found in the Keystone catalog, as the
// project's user: it sees its project's backups only, and the API's
// refusals reach the user with their status and message. -f json, yaml
// and value and -c shape the output.
func TestCLIThroughAPI(t *testing.T) {
	c := startAPICloud(t)
	alpha, beta := c.backups["alpha"], c.backups["beta"]
	as := func(user string) *cli {
		return &cli{t: t, env: map[string]string{"OS_CLIENT_CONFIG_FILE": c.clouds, "OS_CLOUD": user,
			"TEMPORAL_CONFIG_FILE": filepath.Join(t.TempDir(), "none")}}
	}

	// alice's list: alpha's backups, newest first, nothing of beta's.
	out := as("alice").must("backup", "list", "-f", "value", "-c", "id")
	if got := strings.Fields(out); !slices.Equal(got, []string{alpha[2], alpha[1], alpha[0]}) {
		t.Errorf("alice's backup list: %q, want alpha's %v newest first", got, alpha)
	}
	// The same through --os-cloud, as JSON with two columns.
	var rows []map[string]any
	out = (&cli{t: t, env: map[string]string{"OS_CLIENT_CONFIG_FILE": c.clouds}}).must("--os-cloud", "bob", "backup", "list", "-f", "json", "-c", "id", "-c", "workload")
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 || rows[0]["id"] != beta[0] || rows[0]["workload"] != "db" || len(rows[0]) != 2 {
		t.Errorf("bob's list as JSON: %v %s", err, out)
	}
	// Pages: --limit 2 prints where to go on.
	_, errs, err := as("alice").run("backup", "list", "--limit", "2", "-f", "value", "-c", "id")
	if err != nil || !strings.Contains(errs, "more: --marker "+alpha[1]) {
		t.Errorf("alice's first page: %v, stderr %q: want the marker %s", err, errs, alpha[1])
	}
	out = as("alice").must("backup", "list", "--marker", alpha[1], "-f", "value", "-c", "id")
	if strings.TrimSpace(out) != alpha[0] {
		t.Errorf("alice's page after %s: %q, want %s", alpha[1], out, alpha[0])
	}

	// show, as YAML; another project's backup is not found.
	var shown map[string]any
	out = as("alice").must("backup", "show", alpha[0], "-f", "yaml")
	if err := yaml.Unmarshal([]byte(out), &shown); err != nil || shown["id"] != alpha[0] || shown["project_id"] != c.projects["alpha"] {
		t.Errorf("alice shows %s as YAML: %v\n%s", alpha[0], err, out)
	}
	_, _, err = as("alice").run("backup", "show", beta[0])
	var ae *apiclient.Error
	if !errors.As(err, &ae) || ae.Status != 404 || ae.Message != "Backup "+beta[0]+" could not be found." {
		t.Errorf("alice shows beta's backup: %v, want a 404 not found", err)
	}

	// A restore: started, listed, shown, cancelled; a reader may not.
	var started map[string]any
	out = as("alice").must("restore", "start", alpha[0], "--name-prefix", "r-", "-f", "json")
	if err := json.Unmarshal([]byte(out), &started); err != nil || started["backup_id"] != alpha[0] || started["project_id"] != c.projects["alpha"] {
		t.Fatalf("alice's restore: %v\n%s", err, out)
	}
	rid := started["id"].(string)
	if out := as("alice").must("restore", "list", "-f", "value", "-c", "id", "-c", "backup_id"); !strings.Contains(out, rid+" "+alpha[0]) {
		t.Errorf("alice's restore list: %q, want %s %s", out, rid, alpha[0])
	}
	if out := as("bob").must("restore", "list", "-f", "value", "-c", "id"); strings.Contains(out, rid) {
		t.Errorf("bob sees alice's restore: %q", out)
	}
	if out := as("alice").must("restore", "show", rid, "-c", "status", "-f", "value"); strings.TrimSpace(out) != "RUNNING" {
		t.Errorf("alice's restore status: %q", out)
	}
	_, _, err = as("rita").run("restore", "start", alpha[0])
	if !errors.As(err, &ae) || ae.Status != 403 {
		t.Errorf("rita (reader) starts a restore: %v, want 403", err)
	}
	_, _, err = as("bob").run("restore", "cancel", rid)
	if !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("bob cancels alice's restore: %v, want 404", err)
	}
	if out := as("alice").must("restore", "cancel", rid, "-f", "value", "-c", "status"); strings.TrimSpace(out) != "CANCEL_REQUESTED" {
		t.Errorf("alice cancels her restore: %q", out)
	}

	// A backup of alice's workload: started, refused while it runs,
	// cancelled by her and not by bob (his "web" is beta's).
	var run map[string]any
	out = as("alice").must("backup", "start", "--workload", "web", "-f", "json")
	if err := json.Unmarshal([]byte(out), &run); err != nil || run["id"] != "backup~"+c.projects["alpha"]+"~web" || run["status"] != "RUNNING" {
		t.Fatalf("alice's backup start: %v\n%s", err, out)
	}
	_, _, err = as("alice").run("backup", "start", "--workload", "web")
	if !errors.As(err, &ae) || ae.Status != 409 || ae.Message != "A backup of workload web is already running." {
		t.Errorf("alice's second backup start: %v, want 409 already running", err)
	}
	_, _, err = as("bob").run("backup", "cancel", "web")
	if !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("bob cancels web: %v, want 404 (beta has no running backup of web)", err)
	}
	if out := as("alice").must("backup", "cancel", "web", "-f", "value", "-c", "status"); strings.TrimSpace(out) != "CANCEL_REQUESTED" {
		t.Errorf("alice cancels her backup: %q", out)
	}

	// Protect, delete, files, quotas, workloads.
	if out := as("alice").must("backup", "protect", alpha[1], "-f", "value"); strings.TrimSpace(out) != alpha[1]+" true" {
		t.Errorf("alice protects %s: %q", alpha[1], out)
	}
	_, _, err = as("alice").run("backup", "delete", alpha[1])
	if !errors.As(err, &ae) || ae.Status != 409 {
		t.Errorf("alice deletes her protected backup: %v, want 409", err)
	}
	_, _, err = as("bob").run("backup", "unprotect", alpha[1])
	if !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("bob unprotects alice's backup: %v, want 404", err)
	}
	as("alice").must("backup", "unprotect", alpha[1])
	if out := as("alice").must("backup", "delete", alpha[1]); strings.TrimSpace(out) != "deleted "+alpha[1] {
		t.Errorf("alice deletes %s: %q", alpha[1], out)
	}
	if out := as("alice").must("backup", "list", "-f", "value", "-c", "id"); strings.Contains(out, alpha[1]) {
		t.Errorf("the deleted backup is still listed: %q", out)
	}
	if out := as("alice").must("backup", "ls", alpha[2], "vm1~root", "/etc", "-f", "value", "-c", "name", "-c", "type", "-c", "size"); strings.TrimSpace(out) != fmt.Sprintf("app.conf file %d", len(c.file)) {
		t.Errorf("alice lists /etc of %s: %q", alpha[2], out)
	}
	got := filepath.Join(t.TempDir(), "app.conf")
	as("alice").must("backup", "get", alpha[2], "vm1~root", "/etc/app.conf", "-o", got)
	if data, err := os.ReadFile(got); err != nil || string(data) != string(c.file) {
		t.Errorf("the downloaded file differs from the backed-up one (%d of %d bytes, %v)", len(data), len(c.file), err)
	}
	if _, _, err := as("alice").run("backup", "get", alpha[2], "vm1~root", "/etc/app.conf", "-o", got); err == nil || !strings.Contains(err.Error(), "file exists") {
		t.Errorf("a download over an existing file: %v, want it refused", err)
	}
	_, _, err = as("bob").run("backup", "get", alpha[2], "vm1~root", "/etc/app.conf")
	if !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("bob downloads from alice's backup: %v, want 404", err)
	}
	if out := as("alice").must("quota", "show", "-f", "json"); !strings.Contains(out, c.projects["alpha"]) {
		t.Errorf("alice's quotas: %s", out)
	}
	_, _, err = as("alice").run("workload", "list")
	if !errors.As(err, &ae) || ae.Status != 501 {
		t.Errorf("workload list on an API without a cloud: %v, want 501", err)
	}
	if _, _, err := (&cli{t: t, env: map[string]string{}}).run("workload", "list"); err == nil || !strings.Contains(err.Error(), "works through raksha-api") {
		t.Errorf("workload list without a cloud: %v", err)
	}

	// A clone: into a project where alice holds no role, refused; into her
	// own, started, listed and cancelled.
	_, _, err = as("alice").run("clone", "start", alpha[0], "--name", "stg", "--to-project", c.projects["beta"])
	if !errors.As(err, &ae) || ae.Status != 403 {
		t.Errorf("alice clones into beta: %v, want 403", err)
	}
	var clone map[string]any
	out = as("alice").must("clone", "start", alpha[0], "--name", "stg", "--to-project", c.projects["alpha"], "--name-prefix", "stg-", "-f", "json")
	if err := json.Unmarshal([]byte(out), &clone); err != nil || clone["name"] != "stg" || clone["project_id"] != c.projects["alpha"] {
		t.Fatalf("alice's clone: %v\n%s", err, out)
	}
	if out := as("alice").must("clone", "list", "-f", "value", "-c", "name"); strings.TrimSpace(out) != "stg" {
		t.Errorf("alice's clones: %q", out)
	}
	if out := as("alice").must("clone", "cancel", clone["id"].(string), "-f", "value", "-c", "status"); strings.TrimSpace(out) != "CANCEL_REQUESTED" {
		t.Errorf("alice cancels her clone: %q", out)
	}

	// What only an operator has is refused, naming it.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"backup", "list", "--label", "a=b"}, "--label is not offered through raksha-api"},
		{[]string{"restore", "start", alpha[0], "--wait"}, "--wait is not offered through raksha-api"},
		{[]string{"backup", "list", "-c", "nope"}, "-c nope: no such column"},
		{[]string{"backup", "start", "--workload", "web", "--tag", "x"}, "--tag is not offered through raksha-api"},
		{[]string{"backup", "cancel", "web", "--project", "p"}, "--project is not offered through raksha-api"},
		{[]string{"clone", "start", alpha[0], "--to-project", "p", "--post-hook", "true"}, "--post-hook is not offered through raksha-api"},
		{[]string{"--os-cloud", "alice", "repo", "check"}, "raksha repo check is not offered through raksha-api"},
	} {
		if _, _, err := as("alice").run(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("raksha %v: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
	// An operator's --repo wins over OS_CLOUD: the repository is read, not
	// the API (which yaml output is refused for).
	if _, _, err := as("alice").run("backup", "list", "--repo", "file:///nonexistent", "-f", "yaml"); err == nil || !strings.Contains(err.Error(), "-f yaml: only through raksha-api") {
		t.Errorf("backup list --repo -f yaml with OS_CLOUD: %v", err)
	}
}
