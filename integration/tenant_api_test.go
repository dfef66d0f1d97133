package integration

import (
	"bytes"
	"context"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/api/apiclient"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/demo"
	"github.com/raksha-backup/raksha/internal/lab/guestapp"
)

// lockedBuffer is a log sink written from many goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestTenantJourneyThroughAPI: a tenant (the lab's demo user, a member of
// the demo project and of staging) goes through raksha-api only — the Go
// client the CLI uses, Keystone tokens, the API in the catalog — on real
// guests: lists its workloads, backs one up, lists and downloads a file out
// of the backup (checked record by record), restores a server, clones into
// staging and deletes the clone. No token or password appears in the API's
// log or in any workflow history.
func TestTenantJourneyThroughAPI(t *testing.T) {
	e := newLabEnv(t)
	ctx := context.Background()
	staging, err := e.lab.EnsureProject("staging")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.lab.EnsureUser(demo.DemoUser, "pw-"+demo.DemoUser, "staging", "member"); err != nil {
		t.Fatal(err)
	}
	clouds := filepath.Join(e.dir, "clouds.yaml")
	adminCl, err := cloud.Connect(ctx, cloud.Config{Cloud: demo.AdminCloud, CloudsFile: clouds})
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	srv, err := api.New(api.Config{
		Identity: api.NewKeystone(api.ServiceCredentials{AuthURL: e.lab.AuthURL(), Username: lab.AdminUser,
			Password: "pw-" + lab.AdminUser, ProjectName: lab.AdminProject}, nil),
		AuthURL: e.lab.AuthURL(), Temporal: e.temporal, DefaultRepository: "main",
		Repos:     api.NewRegistry(map[string]activities.RepoConfig{"main": {URL: "file://" + e.repoDir, PasswordFile: filepath.Join(e.dir, "repo-pw")}}, nil),
		Workloads: &api.CloudWorkloads{Client: adminCl},
		Log:       slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	e.lab.AddService(apiclient.ServiceType, "raksha", hs.URL)
	c, err := apiclient.New(ctx, apiclient.Options{Cloud: cloud.Config{Cloud: demo.DemoCloud, CloudsFile: clouds}})
	if err != nil {
		t.Fatal(err)
	}

	// 1. The project's workloads, as discovery finds them.
	ws, err := c.ListWorkloads(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || ws[0].Name != "demo" || len(ws[0].Servers) != 2 {
		t.Fatalf("the demo user's workloads: %+v, want demo with 2 servers", ws)
	}

	// 2. A backup of it, followed to its end.
	run, err := c.StartBackup(ctx, apiclient.BackupStartOpts{Workload: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	eventually(t, 5*time.Minute, "the backup did not end", func() bool {
		r, err := c.GetBackupRun(ctx, run.ID)
		if err != nil {
			t.Fatal(err)
		}
		run = r
		return r.Status != "RUNNING"
	})
	if run.Status != "COMPLETED" {
		t.Fatalf("backup run %s ended %s", run.ID, run.Status)
	}
	t.Logf("backup through the API in %v", time.Since(start).Round(time.Millisecond))
	bs, _, err := c.ListBackups(ctx, apiclient.ListOpts{})
	if err != nil || len(bs) != 1 || bs[0].Workload != "demo" {
		t.Fatalf("the demo user's backups: %+v %v", bs, err)
	}
	b := bs[0]

	// 3. A record file of the writer, listed and downloaded out of the
	// backup's volume disk, checked record by record.
	var disk string
	for _, d := range b.Disks {
		if d.VM == "demo-1" && strings.HasPrefix(d.Disk, "vol-") {
			disk = d.ID
		}
	}
	if disk == "" {
		t.Fatalf("no volume disk of demo-1 in %+v", b.Disks)
	}
	var recs []string
	var walk func(dir string, depth int)
	walk = func(dir string, depth int) {
		fs, err := c.ListFiles(ctx, apiclient.FileOpts{BackupID: b.ID, Disk: disk, Path: dir})
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fs {
			p := strings.TrimSuffix(dir, "/") + "/" + f.Name
			switch {
			case f.Type == "directory" && depth < 3 && f.Name != "lost+found":
				walk(p, depth+1)
			case f.Type == "file" && strings.HasSuffix(f.Name, ".rec") && f.Size > 0:
				recs = append(recs, p)
			}
		}
	}
	walk("/", 0)
	if len(recs) == 0 {
		t.Fatalf("no record file in disk %s of backup %s", disk, b.ID)
	}
	var buf bytes.Buffer
	if _, err := c.DownloadFile(ctx, apiclient.FileOpts{BackupID: b.ID, Disk: disk, Path: recs[0]}, &buf); err != nil {
		t.Fatal(err)
	}
	rep, err := guestapp.Check(&buf, guestapp.CheckOptions{})
	if err != nil || !rep.OK() || rep.Good == 0 {
		t.Errorf("downloaded %s: %v %v", recs[0], rep, err)
	}

	// 4. One server restored as a new one in the project.
	rs, err := c.StartRestore(ctx, apiclient.RestoreStartOpts{BackupID: b.ID, VMs: []string{"demo-1"}, NamePrefix: "r-"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 6*time.Minute, "the restore did not end", func() bool {
		r, err := c.GetRestore(ctx, rs.ID)
		if err != nil {
			t.Fatal(err)
		}
		rs = r
		return r.Status != "RUNNING"
	})
	if rs.Status != "COMPLETED" {
		t.Fatalf("restore %s ended %s", rs.ID, rs.Status)
	}
	restored := e.serverByName("r-demo-1")
	e.guestCheck(restored.InstanceRef.Name)

	// 5. A clone into staging (a project where the user also holds a
	// role), its network remapped, then deleted.
	cl, err := c.StartClone(ctx, apiclient.CloneStartOpts{Name: "tenant-stg", BackupID: b.ID, ProjectID: staging,
		VMs: []string{"demo-2"}, NamePrefix: "stg-", Networks: map[string]string{lab.Network: lab.Network2}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 6*time.Minute, "the clone did not end", func() bool {
		var list []api.CloneView
		list, _, err = c.ListClones(ctx, apiclient.ListOpts{ProjectID: staging})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range list {
			if v.ID == cl.ID {
				cl.Status = v.Status
			}
		}
		return cl.Status != "RUNNING"
	})
	if cl.Status != "COMPLETED" {
		t.Fatalf("clone %s ended %s", cl.ID, cl.Status)
	}
	e.guestCheck(e.serverByName("stg-demo-2").InstanceRef.Name)
	if _, err := c.DeleteClone(ctx, cl.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Minute, "the clone's servers are still there", func() bool {
		return !slices.ContainsFunc(e.lab.Servers(), func(s lab.ServerInfo) bool { return s.Name == "stg-demo-2" })
	})

	// 6. No secret in the API's log or in any history the journey made.
	secrets := []string{"pw-" + demo.DemoUser, "pw-" + lab.AdminUser}
	for _, tok := range []string{c.Token()} {
		secrets = append(secrets, tok, tok[:16])
	}
	l := logs.String()
	if !strings.Contains(l, "api request") {
		t.Fatal("the API logged no request")
	}
	resp, err := e.temporal.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var hist strings.Builder
	for _, ex := range resp.GetExecutions() {
		h := history(t, e.temporal, ex.GetExecution().GetWorkflowId(), ex.GetExecution().GetRunId())
		data, err := protojson.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		hist.Write(data)
	}
	if len(resp.GetExecutions()) < 4 {
		t.Errorf("only %d workflows: want the backup, restore, clone and clone delete at least", len(resp.GetExecutions()))
	}
	for _, s := range secrets {
		if strings.Contains(l, s) {
			t.Errorf("the API's log holds a secret (%d bytes)", len(s))
		}
		if strings.Contains(hist.String(), s) {
			t.Errorf("a workflow history holds a secret (%d bytes)", len(s))
		}
	}
}
