package api_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"

	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/workflows"
)

func i64(v int64) *int64 { return &v }

// TestQuotas: with the admin's quotas (alpha: 3 backups; beta: the bytes
// its backups store now), a backup start over a quota is refused with 413
// naming the quota, the usage and the limit, and no workflow is started
// (the Temporal dev server has none); under the quota it starts, and a
// running backup counts against the quota of backups; GET /v1/quotas shows
// limits and usage to the project's readers only.
func TestQuotas(t *testing.T) {
	tc := startTemporal(t)
	q := &api.Quotas{Default: api.Limits{Backups: i64(100)}}
	e := newEnv(t, lab.Options{}, tc, api.Config{Quotas: q}, nil)
	ctx := context.Background()
	alpha, beta := e.projects["alpha"], e.projects["beta"]
	// Beta's backups so far store nothing of their own (alpha's first
	// stored the chunks they share): one of new data.
	img := filepath.Join(t.TempDir(), "beta.img")
	data := make([]byte, 256<<10)
	_, _ = rand.Read(data)
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	backUp(t, e.repo, img, repo.BackupSpec{ID: "20261202-000000-beta", Labels: map[string]string{"workload": "db", "project": beta}})
	var betaBytes int64
	all, err := e.repo.ListBackups(ctx, repo.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range all {
		if api.BackupProject(b) == beta {
			betaBytes += b.Stats.BytesStored
		}
	}
	if betaBytes == 0 {
		t.Fatal("beta's backups store nothing")
	}
	q.Projects = map[string]api.Limits{alpha: {Backups: i64(3)}, beta: {Bytes: i64(betaBytes)}}
	aliceTok := e.token(t, alice, "alpha")
	bobTok := e.token(t, bob, "beta")
	ritaTok := e.token(t, rita, "alpha")

	var qv struct{ Quota api.QuotaView }
	if st, body := e.call(t, ritaTok, "GET", "/v1/quotas", nil, &qv); st != 200 || qv.Quota.ProjectID != alpha || qv.Quota.Repository != repoID ||
		qv.Quota.Backups != (api.QuotaUsage{Limit: 3, InUse: 3}) || qv.Quota.Bytes.Limit != -1 || qv.Quota.Bytes.InUse <= 0 {
		t.Errorf("alpha's quotas: %d %s", st, body)
	}
	if st, body := e.call(t, bobTok, "GET", "/v1/quotas", nil, &qv); st != 200 ||
		qv.Quota.Backups != (api.QuotaUsage{Limit: 100, InUse: 3}) || qv.Quota.Bytes != (api.QuotaUsage{Limit: betaBytes, InUse: betaBytes}) {
		t.Errorf("beta's quotas: %d %s", st, body)
	}
	st, body := e.call(t, bobTok, "GET", "/v1/quotas?project_id="+alpha, nil, nil)
	wantError(t, "bob shows alpha's quotas", st, body, 403, msgPolicy("quota:show"))

	start := func(tok, workload string) (int, []byte) {
		return e.call(t, tok, "POST", "/v1/backups", map[string]any{"backup": map[string]any{"workload": workload}}, nil)
	}
	st, body = start(aliceTok, "web")
	wantError(t, "alice over her quota of backups", st, body, 413,
		fmt.Sprintf("Quota exceeded for backups: project %s has 3 backups in repository main (running ones included), the limit is 3.", alpha))
	st, body = start(bobTok, "db")
	wantError(t, "bob over his quota of bytes", st, body, 413,
		fmt.Sprintf("Quota exceeded for bytes: project %s stores %d bytes in repository main, the limit is %d.", beta, betaBytes, betaBytes))
	// Nothing started: no workflow of either workload, none at all.
	for _, wid := range []string{workflows.BackupWorkflowID(alpha, "web"), workflows.BackupWorkflowID(beta, "db")} {
		var nf *serviceerror.NotFound
		if _, err := tc.DescribeWorkflowExecution(ctx, wid, ""); !errors.As(err, &nf) {
			t.Errorf("workflow %s after a refused start: %v, want not found", wid, err)
		}
	}
	if n, err := tc.CountWorkflow(ctx, &workflowservice.CountWorkflowExecutionsRequest{}); err != nil || n.GetCount() != 0 {
		t.Errorf("workflows after the refused starts: %v %v, want none", n.GetCount(), err)
	}

	// One backup fewer: the start goes through, and the running backup
	// counts, so a second workload's start is refused.
	if st, body := e.call(t, aliceTok, "DELETE", "/v1/backups/"+e.backups["alpha"][0], nil, nil); st != 204 {
		t.Fatalf("alice deletes a backup: %d %s", st, body)
	}
	var run struct {
		Run api.BackupRunView `json:"backup_run"`
	}
	if st, body := e.call(t, aliceTok, "POST", "/v1/backups", map[string]any{"backup": map[string]any{"workload": "web"}}, &run); st != 202 {
		t.Fatalf("alice starts under her quota: %d %s", st, body)
	}
	waitFor(t, "the running backup counted", func() bool {
		st, _ := e.call(t, aliceTok, "GET", "/v1/quotas", nil, &qv)
		return st == 200 && qv.Quota.Backups.InUse == 3
	})
	st, body = start(aliceTok, "app")
	wantError(t, "alice's second workload while the first runs", st, body, 413,
		fmt.Sprintf("Quota exceeded for backups: project %s has 3 backups in repository main (running ones included), the limit is 3.", alpha))
	if _, err := tc.DescribeWorkflowExecution(ctx, workflows.BackupWorkflowID(alpha, "app"), ""); err == nil {
		t.Error("the refused backup of app started a workflow")
	}
	if st, body := e.call(t, aliceTok, "POST", "/v1/backup-runs/"+run.Run.ID+"/cancel", nil, nil); st != 202 {
		t.Errorf("cancel: %d %s", st, body)
	}
	if !strings.Contains(e.log.String(), "Quota exceeded") {
		t.Error("the refusals are not in the log")
	}
	e.checkLogs(t)
}
