package api_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/workflows"
)

type backupList struct {
	Backups []api.BackupView `json:"backups"`
	Links   []api.Link       `json:"backups_links"`
}

type restoreList struct {
	Restores []api.RestoreView `json:"restores"`
	Links    []api.Link        `json:"restores_links"`
}

func ids(bs []api.BackupView) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.ID)
	}
	return out
}

const (
	msgUnauth  = "The request you have made requires authentication."
	msgInPlace = "An in-place restore needs a token scoped to the backup's project."
)

func msgPolicy(action string) string { return "Policy doesn't allow " + action + " to be performed." }

// TestTenantAPI runs raksha-api against the lab's Keystone (real tokens of
// users with different roles in two projects), a Temporal dev server and
// a local repository with backups of both projects, and checks who can do
// what, each refusal by status and message, and that no token reaches the
// log.
func TestTenantAPI(t *testing.T) {
	tc := startTemporal(t)
	e := newEnv(t, lab.Options{}, tc, api.Config{}, nil)
	alpha, beta := e.projects["alpha"], e.projects["beta"]
	aliceTok := e.token(t, alice, "alpha")
	bobTok := e.token(t, bob, "beta")
	carolAlpha := e.token(t, carol, "alpha")
	carolBeta := e.token(t, carol, "beta")
	ritaTok := e.token(t, rita, "alpha")
	adminTok := e.token(t, admin, lab.AdminProject)
	alphaB, betaB := e.backups["alpha"], e.backups["beta"]

	t.Run("tokens", func(t *testing.T) {
		st, body := e.call(t, "", "GET", "/v1/backups", nil, nil)
		wantError(t, "no token", st, body, 401, msgUnauth)
		st, body = e.call(t, "gAAAAABforged-"+strings.Repeat("x", 180), "GET", "/v1/backups", nil, nil)
		wantError(t, "forged token", st, body, 401, msgUnauth)
		unscoped := e.token(t, uma, "")
		st, body = e.call(t, unscoped, "GET", "/v1/backups", nil, nil)
		wantError(t, "unscoped token", st, body, 401, msgUnauth)
		// A token Keystone revoked before the API ever saw it.
		revoked := e.token(t, alice, "alpha")
		req, _ := http.NewRequest("DELETE", e.lab.AuthURL()+"/auth/tokens", nil)
		req.Header.Set("X-Auth-Token", revoked)
		req.Header.Set("X-Subject-Token", revoked)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 204 {
			t.Fatalf("revoke: %v %v", err, resp)
		}
		resp.Body.Close()
		st, body = e.call(t, revoked, "GET", "/v1/backups", nil, nil)
		wantError(t, "revoked token", st, body, 401, msgUnauth)
		if st, _ := e.call(t, aliceTok, "GET", "/v1/openapi.json", nil, nil); st != 200 {
			t.Errorf("openapi.json: %d", st)
		}
		st, body = e.call(t, aliceTok, "DELETE", "/v1/backups", nil, nil)
		wantError(t, "a method a path does not take", st, body, 405, "The method DELETE is not allowed on /v1/backups.")
		st, body = e.call(t, aliceTok, "GET", "/v2/backups", nil, nil)
		wantError(t, "an unknown path", st, body, 404, "The resource could not be found.")
	})

	t.Run("list and show are per project", func(t *testing.T) {
		var l backupList
		if st, body := e.call(t, aliceTok, "GET", "/v1/backups", nil, &l); st != 200 {
			t.Fatalf("alice lists: %d %s", st, body)
		}
		want := slices.Clone(alphaB)
		slices.Reverse(want)
		if got := ids(l.Backups); !slices.Equal(got, want) {
			t.Errorf("alice sees %v, want alpha's %v newest first", got, want)
		}
		for _, b := range l.Backups {
			if b.ProjectID != alpha || b.Repository != "main" || len(b.Disks) != 1 {
				t.Errorf("backup %+v", b)
			}
		}
		if st, _ := e.call(t, bobTok, "GET", "/v1/backups", nil, &l); st != 200 || !slices.Equal(ids(l.Backups), []string{betaB[1], betaB[0]}) {
			t.Errorf("bob sees %d %v, want beta's", st, ids(l.Backups))
		}
		st, body := e.call(t, aliceTok, "GET", "/v1/backups/"+betaB[0], nil, nil)
		wantError(t, "alice shows beta's backup", st, body, 404, "Backup "+betaB[0]+" could not be found.")
		st, body = e.call(t, aliceTok, "GET", "/v1/backups/no-such-backup", nil, nil)
		wantError(t, "alice shows a backup that does not exist", st, body, 404, "Backup no-such-backup could not be found.")
		st, body = e.call(t, aliceTok, "GET", "/v1/backups?project_id="+beta, nil, nil)
		wantError(t, "alice lists beta's backups", st, body, 403, msgPolicy("backup:list"))
		var one struct{ Backup api.BackupView }
		if st, body := e.call(t, aliceTok, "GET", "/v1/backups/"+alphaB[0], nil, &one); st != 200 || one.Backup.ID != alphaB[0] || one.Backup.Workload != "web" {
			t.Errorf("alice shows her backup: %d %s", st, body)
		}
		// The reader reads; carol reads beta with a token of alpha, through
		// her role assignment on beta; the admin reads any project.
		if st, _ := e.call(t, ritaTok, "GET", "/v1/backups/"+alphaB[1], nil, nil); st != 200 {
			t.Errorf("rita shows alpha's backup: %d", st)
		}
		if st, _ := e.call(t, carolAlpha, "GET", "/v1/backups?project_id="+beta, nil, &l); st != 200 || len(l.Backups) != 2 {
			t.Errorf("carol lists beta with an alpha token: %d %v", st, ids(l.Backups))
		}
		if st, _ := e.call(t, adminTok, "GET", "/v1/backups?project_id="+beta, nil, &l); st != 200 || len(l.Backups) != 2 {
			t.Errorf("admin lists beta: %d %v", st, ids(l.Backups))
		}
	})

	t.Run("pagination", func(t *testing.T) {
		var p1, p2 backupList
		if st, body := e.call(t, aliceTok, "GET", "/v1/backups?limit=2", nil, &p1); st != 200 || len(p1.Backups) != 2 || len(p1.Links) != 1 {
			t.Fatalf("page 1: %d %s", st, body)
		}
		if st, body := e.call(t, aliceTok, "GET", p1.Links[0].Href, nil, &p2); st != 200 || len(p2.Backups) != 1 || len(p2.Links) != 0 {
			t.Fatalf("page 2 (%s): %d %s", p1.Links[0].Href, st, body)
		}
		if all := append(ids(p1.Backups), ids(p2.Backups)...); len(all) != 3 || all[2] != alphaB[0] {
			t.Errorf("pages %v", all)
		}
		st, body := e.call(t, aliceTok, "GET", "/v1/backups?marker="+betaB[0], nil, nil)
		wantError(t, "another project's backup as marker", st, body, 400, "Marker "+betaB[0]+" could not be found.")
		st, body = e.call(t, aliceTok, "GET", "/v1/backups?limit=0", nil, nil)
		wantError(t, "limit 0", st, body, 400, `Invalid limit "0": want an integer from 1 to 1000.`)
	})

	var aliceRestore api.RestoreView
	t.Run("restores", func(t *testing.T) {
		restore := func(tok string, fields map[string]any) (int, []byte, api.RestoreView) {
			var out struct{ Restore api.RestoreView }
			st, body := e.call(t, tok, "POST", "/v1/restores", map[string]any{"restore": fields}, &out)
			return st, body, out.Restore
		}
		st, body, _ := restore(aliceTok, map[string]any{"backup_id": betaB[0]})
		wantError(t, "alice restores beta's backup", st, body, 404, "Backup "+betaB[0]+" could not be found.")
		st, body, _ = restore(aliceTok, map[string]any{"backup_id": alphaB[0], "project_id": beta})
		wantError(t, "alice restores into beta", st, body, 403, msgPolicy("restore:start"))
		st, body, _ = restore(ritaTok, map[string]any{"backup_id": alphaB[0]})
		wantError(t, "the reader restores", st, body, 403, msgPolicy("restore:start"))
		st, body = e.call(t, aliceTok, "POST", "/v1/restores", `{"restore": {"backup_id": "`+alphaB[0]+`", "post_hooks": [{"path": "/bin/sh"}]}}`, nil)
		wantError(t, "a tenant's hook", st, body, 400, `Malformed request body: json: unknown field "post_hooks"`)
		st, body, _ = restore(carolBeta, map[string]any{"backup_id": alphaB[0], "in_place": true})
		wantError(t, "in place with another project's token", st, body, 403, msgInPlace)

		// A member of both projects restores beta's backup into alpha with
		// an alpha token, and alpha's into beta with the same token.
		st, body, r1 := restore(carolAlpha, map[string]any{"backup_id": betaB[1]})
		if st != 202 || r1.ProjectID != alpha || r1.SourceProjectID != beta || r1.BackupID != betaB[1] || !strings.HasPrefix(r1.ID, "restore~"+betaB[1]+"~") {
			t.Fatalf("carol restores beta into alpha: %d %s", st, body)
		}
		st, body, r2 := restore(carolAlpha, map[string]any{"backup_id": alphaB[0], "project_id": beta})
		if st != 202 || r2.ProjectID != beta || r2.SourceProjectID != alpha {
			t.Fatalf("carol restores alpha into beta: %d %s", st, body)
		}
		st, body, aliceRestore = restore(aliceTok, map[string]any{"backup_id": alphaB[2], "vms": []string{"app-1"}, "name_prefix": "r-"})
		if st != 202 {
			t.Fatalf("alice restores: %d %s", st, body)
		}

		// Listing and showing: each project sees the restores into it.
		var l restoreList
		waitFor(t, "alice's restores listed", func() bool {
			st, _ := e.call(t, aliceTok, "GET", "/v1/restores", nil, &l)
			return st == 200 && len(l.Restores) == 2
		})
		got := []string{l.Restores[0].ID, l.Restores[1].ID}
		if !slices.Contains(got, r1.ID) || !slices.Contains(got, aliceRestore.ID) {
			t.Errorf("alpha's restores %v, want %s and %s", got, r1.ID, aliceRestore.ID)
		}
		var p1, p2 restoreList
		if st, body := e.call(t, aliceTok, "GET", "/v1/restores?limit=1", nil, &p1); st != 200 || len(p1.Restores) != 1 || len(p1.Links) != 1 {
			t.Fatalf("restores page 1: %d %s", st, body)
		}
		if st, body := e.call(t, aliceTok, "GET", p1.Links[0].Href, nil, &p2); st != 200 || len(p2.Restores) != 1 || p2.Restores[0].ID == p1.Restores[0].ID {
			t.Fatalf("restores page 2: %d %s", st, body)
		}
		waitFor(t, "bob's restores listed", func() bool {
			st, _ := e.call(t, bobTok, "GET", "/v1/restores", nil, &l)
			return st == 200 && len(l.Restores) == 1 && l.Restores[0].ID == r2.ID
		})
		st, body = e.call(t, bobTok, "GET", "/v1/restores/"+aliceRestore.ID, nil, nil)
		wantError(t, "bob shows alice's restore", st, body, 404, "Restore "+aliceRestore.ID+" could not be found.")
		st, body = e.call(t, bobTok, "POST", "/v1/restores/"+aliceRestore.ID+"/cancel", nil, nil)
		wantError(t, "bob cancels alice's restore", st, body, 404, "Restore "+aliceRestore.ID+" could not be found.")
		st, body = e.call(t, aliceTok, "GET", "/v1/restores?project_id="+beta, nil, nil)
		wantError(t, "alice lists beta's restores", st, body, 403, msgPolicy("restore:list"))
		// A show without progress is what a failed query gives (the dev
		// server's queries can fail transiently): wait for one with it.
		var one struct{ Restore api.RestoreView }
		waitFor(t, "rita shows alice's restore with its progress", func() bool {
			st, _ := e.call(t, ritaTok, "GET", "/v1/restores/"+aliceRestore.ID, nil, &one)
			return st == 200 && one.Restore.Progress != nil
		})
		if p := one.Restore.Progress; p.Phase != "planning" || p.BackupID != alphaB[2] || one.Restore.Status != "RUNNING" {
			t.Errorf("alice's restore: %+v, progress %+v", one.Restore, p)
		}
		st, body = e.call(t, ritaTok, "POST", "/v1/restores/"+aliceRestore.ID+"/cancel", nil, nil)
		wantError(t, "the reader cancels", st, body, 403, msgPolicy("restore:cancel"))
		if st, body := e.call(t, aliceTok, "POST", "/v1/restores/"+aliceRestore.ID+"/cancel", nil, nil); st != 202 {
			t.Fatalf("alice cancels: %d %s", st, body)
		}
		waitFor(t, "the restore cancelled", func() bool {
			st, _ := e.call(t, aliceTok, "GET", "/v1/restores/"+aliceRestore.ID, nil, &one)
			return st == 200 && one.Restore.Status == "CANCELED" && one.Restore.Closed != nil
		})
		st, body = e.call(t, aliceTok, "POST", "/v1/restores/"+aliceRestore.ID+"/cancel", nil, nil)
		wantError(t, "cancel a cancelled restore", st, body, 409, "Restore "+aliceRestore.ID+" is not running (status CANCELED).")
		for _, id := range []string{r1.ID, r2.ID} {
			if st, body := e.call(t, carolAlpha, "POST", "/v1/restores/"+id+"/cancel", nil, nil); st != 202 {
				t.Errorf("carol cancels %s: %d %s", id, st, body)
			}
		}
	})

	t.Run("backups start and cancel", func(t *testing.T) {
		// The run's API id is its workflow id with "~" for "/"; the
		// engine's helper makes the workflow id.
		runID := strings.ReplaceAll(workflows.BackupWorkflowID(alpha, "web"), "/", "~")
		var out struct {
			Run api.BackupRunView `json:"backup_run"`
		}
		st, body := e.call(t, ritaTok, "POST", "/v1/backups", map[string]any{"backup": map[string]any{"workload": "web"}}, nil)
		wantError(t, "the reader starts a backup", st, body, 403, msgPolicy("backup:start"))
		st, body = e.call(t, aliceTok, "POST", "/v1/backups", `{"backup": {"workload": "web", "pre_hooks": [{"path": "/bin/sh"}]}}`, nil)
		wantError(t, "a tenant's backup hook", st, body, 400, `Malformed request body: json: unknown field "pre_hooks"`)
		st, body = e.call(t, aliceTok, "POST", "/v1/backups", `{"backup": {"workload": "web", "selector": {"server_ids": ["x"]}}}`, nil)
		wantError(t, "a tenant's selector", st, body, 400, `Malformed request body: json: unknown field "selector"`)
		st, body = e.call(t, aliceTok, "POST", "/v1/backups", map[string]any{"backup": map[string]any{"workload": "../web"}}, nil)
		wantError(t, "a bad workload name", st, body, 400, `Invalid workload "../web": want 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit.`)
		if st, body := e.call(t, aliceTok, "POST", "/v1/backups", map[string]any{"backup": map[string]any{"workload": "web", "consistency": "crash"}}, &out); st != 202 ||
			out.Run.ID != runID || out.Run.ProjectID != alpha {
			t.Fatalf("alice starts a backup: %d %s", st, body)
		}
		st, body = e.call(t, aliceTok, "POST", "/v1/backups", map[string]any{"backup": map[string]any{"workload": "web"}}, nil)
		wantError(t, "a second backup of the workload", st, body, 409, "A backup of workload web is already running.")
		st, body = e.call(t, bobTok, "GET", "/v1/backup-runs/"+runID, nil, nil)
		wantError(t, "bob shows alice's backup run", st, body, 404, "Backup run "+runID+" could not be found.")
		st, body = e.call(t, bobTok, "POST", "/v1/backup-runs/"+runID+"/cancel", nil, nil)
		wantError(t, "bob cancels alice's backup run", st, body, 404, "Backup run "+runID+" could not be found.")
		st, body = e.call(t, ritaTok, "POST", "/v1/backup-runs/"+runID+"/cancel", nil, nil)
		wantError(t, "the reader cancels a backup", st, body, 403, msgPolicy("backup:cancel"))
		waitFor(t, "alice's backup run shows its progress", func() bool {
			st, _ := e.call(t, ritaTok, "GET", "/v1/backup-runs/"+runID, nil, &out)
			return st == 200 && out.Run.Status == "RUNNING" && out.Run.Progress != nil && out.Run.Progress.Phase != ""
		})
		if st, body := e.call(t, aliceTok, "POST", "/v1/backup-runs/"+runID+"/cancel", nil, &out); st != 202 || out.Run.Status != "CANCEL_REQUESTED" {
			t.Fatalf("alice cancels her backup: %d %s", st, body)
		}
		st, body = e.call(t, aliceTok, "GET", "/v1/backup-runs/restore~x", nil, nil)
		wantError(t, "a restore id as a backup run", st, body, 404, "Backup run restore~x could not be found.")
	})

	t.Run("clones", func(t *testing.T) {
		type cloneOut struct {
			Clone api.CloneView `json:"clone"`
		}
		clone := func(tok string, fields map[string]any) (int, []byte, api.CloneView) {
			var out cloneOut
			st, body := e.call(t, tok, "POST", "/v1/clones", map[string]any{"clone": fields}, &out)
			return st, body, out.Clone
		}
		st, body, _ := clone(aliceTok, map[string]any{"backup_id": betaB[0], "name": "a1"})
		wantError(t, "alice clones beta's backup", st, body, 404, "Backup "+betaB[0]+" could not be found.")
		st, body, _ = clone(aliceTok, map[string]any{"backup_id": alphaB[0], "project_id": beta, "name": "a2"})
		wantError(t, "alice clones into beta", st, body, 403, msgPolicy("clone:start"))
		st, body, _ = clone(ritaTok, map[string]any{"backup_id": alphaB[0], "name": "a3"})
		wantError(t, "the reader clones", st, body, 403, msgPolicy("clone:start"))
		st, body = e.call(t, carolAlpha, "POST", "/v1/clones", `{"clone": {"backup_id": "`+alphaB[0]+`", "project_id": "`+beta+`", "health_check": {"path": "/bin/true"}}}`, nil)
		wantError(t, "a tenant's health check", st, body, 400, `Malformed request body: json: unknown field "health_check"`)
		// A member of both projects clones alpha's production into beta.
		st, body, c := clone(carolAlpha, map[string]any{"backup_id": alphaB[0], "project_id": beta, "name": "staging-1"})
		if st != 202 || c.ID != "clone~staging-1" || c.ProjectID != beta || c.SourceProjectID != alpha || c.Name != "staging-1" {
			t.Fatalf("carol clones alpha into beta: %d %s", st, body)
		}
		st, body, _ = clone(carolBeta, map[string]any{"backup_id": alphaB[1], "project_id": beta, "name": "staging-1"})
		wantError(t, "a second clone of the name", st, body, 409, "A clone named staging-1 exists already.")
		var l struct {
			Clones []api.CloneView `json:"clones"`
		}
		waitFor(t, "beta's clones listed", func() bool {
			st, _ := e.call(t, bobTok, "GET", "/v1/clones", nil, &l)
			return st == 200 && len(l.Clones) == 1 && l.Clones[0].ID == c.ID
		})
		if st, _ := e.call(t, aliceTok, "GET", "/v1/clones", nil, &l); st != 200 || len(l.Clones) != 0 {
			t.Errorf("alice lists alpha's clones: %d %+v", st, l.Clones)
		}
		st, body = e.call(t, aliceTok, "GET", "/v1/clones/"+c.ID, nil, nil)
		wantError(t, "alice shows the clone in beta", st, body, 404, "Clone "+c.ID+" could not be found.")
		st, body = e.call(t, aliceTok, "DELETE", "/v1/clones/"+c.ID, nil, nil)
		wantError(t, "alice deletes the clone in beta", st, body, 404, "Clone "+c.ID+" could not be found.")
		var one cloneOut
		waitFor(t, "bob shows the clone in his project with its progress", func() bool {
			st, _ := e.call(t, bobTok, "GET", "/v1/clones/"+c.ID, nil, &one)
			return st == 200 && one.Clone.Progress != nil
		})
		if one.Clone.Progress.Phase != "planning" || one.Clone.Status != "RUNNING" {
			t.Errorf("the clone: %+v, progress %+v", one.Clone, one.Clone.Progress)
		}
		st, body = e.call(t, bobTok, "DELETE", "/v1/clones/"+c.ID, nil, nil)
		wantError(t, "delete a clone being made", st, body, 409, "Clone "+c.ID+" is still being made.")
		if st, body := e.call(t, bobTok, "POST", "/v1/clones/"+c.ID+"/cancel", nil, nil); st != 202 {
			t.Fatalf("bob cancels the clone: %d %s", st, body)
		}
		waitFor(t, "the clone cancelled", func() bool {
			st, _ := e.call(t, bobTok, "GET", "/v1/clones/"+c.ID, nil, &one)
			return st == 200 && one.Clone.Status == "CANCELED"
		})
		var del struct {
			Delete api.CloneDeleteView `json:"clone_delete"`
		}
		if st, body := e.call(t, bobTok, "DELETE", "/v1/clones/"+c.ID, nil, &del); st != 202 || del.Delete.ProjectID != beta ||
			!strings.HasPrefix(del.Delete.ID, "clone-delete~staging-1~") {
			t.Fatalf("bob deletes the clone: %d %s", st, body)
		}
		d, err := e.temporal.DescribeWorkflowExecution(t.Context(), strings.ReplaceAll(del.Delete.ID, "~", "/"), "")
		if err != nil || d.GetWorkflowExecutionInfo().GetType().GetName() != "CloneDelete" {
			t.Errorf("the CloneDelete run: %v %v", err, d)
		}
		if err := e.temporal.CancelWorkflow(t.Context(), strings.ReplaceAll(del.Delete.ID, "~", "/"), ""); err != nil {
			t.Error(err)
		}
	})

	t.Run("no token in the log", func(t *testing.T) { e.checkLogs(t) })
	t.Run("no token in any workflow history", func(t *testing.T) { e.checkHistories(t) })
}

// waitFor polls cond for up to 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
