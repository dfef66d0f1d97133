package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"google.golang.org/protobuf/proto"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/internal/disk/file"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/labtest"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/testenv/repotest"
	"github.com/raksha-backup/raksha/workflows"
)

// syncBuffer is a log sink the server writes to from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startTemporal starts a real Temporal dev server (bin/temporal, as the
// integration tests do) with Raksha's search attributes, and a worker on
// the control queue that runs the workflows but no activity: a started
// restore or backup stays in its first phase (its activities are retried)
// and answers its progress query.
func startTemporal(t *testing.T) client.Client {
	t.Helper()
	_, src, _, _ := runtime.Caller(0)
	bin := filepath.Join(filepath.Dir(filepath.Dir(src)), "bin", "temporal")
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the temporal CLI is missing at %s: run make test", bin)
		}
		t.Skipf("SKIPPED: the temporal CLI is missing at %s: run make test (it installs it)", bin)
	}
	sa := temporal.NewSearchAttributes(workflows.SAWorkload.ValueSet(""), workflows.SAProject.ValueSet(""),
		workflows.SAOperation.ValueSet(""), workflows.SAPolicy.ValueSet(""))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{ExistingPath: bin, LogLevel: "error",
		SearchAttributes: sa, ClientOptions: &client.Options{Namespace: "default"}})
	if err != nil {
		t.Fatalf("start the Temporal dev server: %v", err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	w := worker.New(srv.Client(), activities.ControlQueue, worker.Options{})
	w.RegisterWorkflow(workflows.WorkloadBackup)
	w.RegisterWorkflow(workflows.Restore)
	w.RegisterWorkflow(workflows.Clone)
	w.RegisterWorkflow(workflows.CloneDelete)
	w.RegisterWorkflow(workflows.Semaphore)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return srv.Client()
}

// user is a lab Keystone user of the tests; its password is its name
// with "-pw" (the admin's is labtest's).
type user string

func (u user) password() string {
	if u == admin {
		return labtest.AdminPassword
	}
	return string(u) + "-pw"
}

// issueToken asks the lab's Keystone for a token of the user scoped to the
// project (by name; "" asks for no scope).
func issueToken(t *testing.T, l *lab.Lab, u user, project string) string {
	t.Helper()
	body := map[string]any{"auth": map[string]any{"identity": map[string]any{"methods": []string{"password"},
		"password": map[string]any{"user": map[string]any{"name": string(u), "password": u.password(), "domain": map[string]string{"id": "default"}}}}}}
	if project != "" {
		body["auth"].(map[string]any)["scope"] = map[string]any{"project": map[string]any{"name": project, "domain": map[string]string{"id": "default"}}}
	}
	data, _ := json.Marshal(body)
	resp, err := http.Post(l.AuthURL()+"/auth/tokens", "application/json", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("token of %s in %q: %s %s", u, project, resp.Status, b)
	}
	return resp.Header.Get("X-Subject-Token")
}

// env is a raksha-api on a lab Keystone, a Temporal dev server and a local
// repository holding backups of two projects.
type env struct {
	lab      *lab.Lab
	temporal client.Client
	srv      *httptest.Server
	api      *api.Server
	log      *syncBuffer
	projects map[string]string // name → id
	backups  map[string][]string
	repo     *repo.Repository // the registry's repository "main", opened by the test
	tokens   []string         // every token a test made, for the log check
	mu       sync.Mutex
}

const (
	alice user = "alice" // member of alpha
	bob   user = "bob"   // member of beta
	carol user = "carol" // member of alpha and beta
	rita  user = "rita"  // reader of alpha
	uma   user = "uma"   // member of alpha, no default project
	admin user = lab.AdminUser
)

const repoID = "main"

// newEnv starts everything; cfg is the server's Config but for Identity
// (the lab's Keystone, through wrap when it is not nil), Temporal (tc),
// Repos (the registry, behind cfg.Repos when that has a Wrap method) and
// Log, which are set here.
func newEnv(t *testing.T, labOpts lab.Options, tc client.Client, cfg api.Config, wrap func(api.IdentityService) api.IdentityService) *env {
	t.Helper()
	return newEnvWith(t, labOpts, tc, cfg, wrap, nil)
}

// newEnvWith is newEnv that hands the lab to started before the server is
// made.
func newEnvWith(t *testing.T, labOpts lab.Options, tc client.Client, cfg api.Config, wrap func(api.IdentityService) api.IdentityService, started func(*lab.Lab)) *env {
	t.Helper()
	l := labtest.StartWith(t, labOpts)
	if started != nil {
		started(l)
	}
	e := &env{lab: l, temporal: tc, log: &syncBuffer{}, projects: map[string]string{}, backups: map[string][]string{}}
	for _, p := range []string{"alpha", "beta"} {
		id, err := l.EnsureProject(p)
		if err != nil {
			t.Fatal(err)
		}
		e.projects[p] = id
	}
	for _, a := range []struct {
		u             user
		project, role string
	}{{alice, "alpha", "member"}, {bob, "beta", "member"}, {carol, "alpha", "member"}, {carol, "beta", "member"},
		{rita, "alpha", "reader"}, {uma, "alpha", "member"}} {
		if _, err := l.EnsureUser(string(a.u), a.u.password(), a.project, a.role); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.SetDefaultProject(string(uma), ""); err != nil {
		t.Fatal(err)
	}
	// The repository, in the registry as the workers have it: a URL and a
	// password file.
	dir := t.TempDir()
	r := repotest.NewLocal(t, filepath.Join(dir, "repo"), 64<<10)
	e.repo = r
	pwFile := filepath.Join(dir, "password")
	if err := os.WriteFile(pwFile, []byte(repotest.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, bytes.Repeat([]byte("raksha"), 20000), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, b := range []struct{ project, workload string }{
		{"alpha", "web"}, {"beta", "db"}, {"alpha", "web"}, {"beta", "db"}, {"alpha", "app"}} {
		id := fmt.Sprintf("20261201-0000%02d-%s", i, b.project)
		pid := e.projects[b.project]
		src, _ := json.Marshal(map[string]any{"name": b.workload, "project_id": pid,
			"servers": []any{map[string]any{"id": "srv-" + b.project, "name": b.workload + "-1"}}})
		backUp(t, r, img, repo.BackupSpec{ID: id, Labels: map[string]string{"workload": b.workload, "project": pid}, Source: src})
		e.backups[b.project] = append(e.backups[b.project], id)
	}
	reg := api.NewRegistry(map[string]activities.RepoConfig{
		repoID: {URL: "file://" + filepath.Join(dir, "repo"), PasswordFile: pwFile}}, nil)
	cfg.Identity = api.NewKeystone(api.ServiceCredentials{AuthURL: l.AuthURL(), Username: lab.AdminUser,
		Password: labtest.AdminPassword, ProjectName: lab.AdminProject}, nil)
	if wrap != nil {
		cfg.Identity = wrap(cfg.Identity)
	}
	cfg.AuthURL = l.AuthURL()
	cfg.Temporal = tc
	// A test may put its own Repositories in front of the registry.
	if w, ok := cfg.Repos.(interface {
		Wrap(api.Repositories) api.Repositories
	}); ok {
		cfg.Repos = w.Wrap(reg)
	} else {
		cfg.Repos = reg
	}
	cfg.DefaultRepository = repoID
	cfg.Log = slog.New(slog.NewJSONHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := api.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.api = s
	e.srv = httptest.NewServer(s)
	t.Cleanup(e.srv.Close)
	return e
}

func backUp(t *testing.T, r *repo.Repository, path string, spec repo.BackupSpec) {
	t.Helper()
	ctx := context.Background()
	src, err := file.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	s, err := r.StartBackup(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.BackupDisk(ctx, "vm1", "root", src, repo.DiskOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// token is issueToken, remembered for the log check.
func (e *env) token(t *testing.T, u user, project string) string {
	tok := issueToken(t, e.lab, u, project)
	e.mu.Lock()
	e.tokens = append(e.tokens, tok)
	e.mu.Unlock()
	return tok
}

// call sends a request and decodes the JSON answer into out (if not nil);
// it returns the status and the raw body.
func (e *env) call(t *testing.T, token, method, path string, body any, out any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		switch b := body.(type) {
		case string:
			rd = strings.NewReader(b)
		default:
			data, _ := json.Marshal(b)
			rd = bytes.NewReader(data)
		}
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("X-Auth-Token", token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, data)
		}
	}
	return resp.StatusCode, data
}

// wantError checks an OpenStack-style error body: the status, the code
// and title in the body, and the message.
func wantError(t *testing.T, what string, status int, data []byte, wantStatus int, wantMsg string) {
	t.Helper()
	if status != wantStatus {
		t.Errorf("%s: status %d, want %d: %s", what, status, wantStatus, data)
		return
	}
	var eb api.ErrorBody
	if err := json.Unmarshal(data, &eb); err != nil {
		t.Errorf("%s: not an error body: %v: %s", what, err, data)
		return
	}
	if eb.Error.Code != wantStatus || eb.Error.Title != http.StatusText(wantStatus) || eb.Error.Message != wantMsg {
		t.Errorf("%s: error %+v, want code %d, title %q, message %q", what, eb.Error, wantStatus, http.StatusText(wantStatus), wantMsg)
	}
}

// checkLogs fails the test if a token made by it is in the server's log.
func (e *env) checkLogs(t *testing.T) {
	t.Helper()
	logs := e.log.String()
	if !strings.Contains(logs, "api request") {
		t.Fatalf("the server logged no request: %q", logs)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, tok := range e.tokens {
		if strings.Contains(logs, tok) || strings.Contains(logs, tok[:16]) {
			t.Errorf("a token is in the server's log")
		}
	}
}

// checkHistories fails the test if a token made by it is in any workflow
// history of the dev server (inputs, memos, search attributes, results).
func (e *env) checkHistories(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	resp, err := e.temporal.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetExecutions()) < 3 {
		t.Fatalf("only %d workflows to check", len(resp.GetExecutions()))
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var every bytes.Buffer
	for _, ex := range resp.GetExecutions() {
		it := e.temporal.GetWorkflowHistory(ctx, ex.GetExecution().GetWorkflowId(), ex.GetExecution().GetRunId(), false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		var all bytes.Buffer
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				t.Fatal(err)
			}
			// The binary form: payloads' bytes as they are (protojson
			// would show them in base64).
			data, err := proto.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			all.Write(data)
		}
		if all.Len() == 0 {
			t.Fatalf("workflow %s: empty history", ex.GetExecution().GetWorkflowId())
		}
		every.Write(all.Bytes())
		for _, tok := range e.tokens {
			if strings.Contains(all.String(), tok) {
				t.Errorf("a token is in the history of workflow %s", ex.GetExecution().GetWorkflowId())
			}
		}
	}
	// The check can see into payloads: the backup ids of the requests are
	// there.
	if !strings.Contains(every.String(), `"backup_id":"`+e.backups["alpha"][0]+`"`) {
		t.Error("the histories do not show the requests' backup ids: the check sees nothing")
	}
}
