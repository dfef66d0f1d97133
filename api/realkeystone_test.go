//go:build openstack

package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/testenv/repotest"
)

// realToken asks the real Keystone for a token of a clouds.yaml entry's
// user, scoped to its project (or unscoped), and returns it with the
// project's id.
func realToken(t *testing.T, cloudsFile, entry string, scoped bool) (string, string) {
	t.Helper()
	ao, _, _, err := clouds.Parse(clouds.WithCloudName(entry), clouds.WithLocations(cloudsFile))
	if err != nil {
		t.Fatal(err)
	}
	body := map[string]any{"auth": map[string]any{"identity": map[string]any{"methods": []string{"password"},
		"password": map[string]any{"user": map[string]any{"name": ao.Username, "password": ao.Password, "domain": map[string]string{"id": "default"}}}}}}
	if scoped {
		body["auth"].(map[string]any)["scope"] = map[string]any{"project": map[string]any{"name": ao.TenantName, "domain": map[string]string{"id": "default"}}}
	}
	data, _ := json.Marshal(body)
	resp, err := http.Post(strings.TrimSuffix(ao.IdentityEndpoint, "/")+"/auth/tokens", "application/json", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tb struct {
		Token struct {
			Project struct {
				ID string `json:"id"`
			} `json:"project"`
		} `json:"token"`
	}
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(raw, &tb) != nil {
		t.Fatalf("token of %s: %s %s", entry, resp.Status, raw)
	}
	return resp.Header.Get("X-Subject-Token"), tb.Token.Project.ID
}

// TestTenantAPIOnRealKeystone runs raksha-api against Debian's real
// Keystone (make openstack-contract; RAKSHA_OPENSTACK_CLOUDS names the
// clouds.yaml scripts/openstack-up.sh wrote): prod's member sees prod's
// backups only, cannot see, protect, delete or restore staging's, cannot
// list staging's; the admin can; forged, unscoped and revoked tokens are
// refused; no token reaches the API's log.
func TestTenantAPIOnRealKeystone(t *testing.T) {
	cloudsFile := os.Getenv("RAKSHA_OPENSTACK_CLOUDS")
	if cloudsFile == "" {
		t.Fatal("RAKSHA_OPENSTACK_CLOUDS is not set: run make openstack-contract, which brings the real cloud up")
	}
	tc := startTemporal(t)
	prodTok, prod := realToken(t, cloudsFile, "prod", true)
	stagingTok, staging := realToken(t, cloudsFile, "staging", true)
	adminTok, _ := realToken(t, cloudsFile, "admin", true)
	unscoped, _ := realToken(t, cloudsFile, "prod", false)
	admin, _, _, err := clouds.Parse(clouds.WithCloudName("admin"), clouds.WithLocations(cloudsFile))
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	r := repotest.NewLocal(t, filepath.Join(dir, "repo"), 64<<10)
	pwFile := filepath.Join(dir, "password")
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(pwFile, []byte(repotest.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, bytes.Repeat([]byte("raksha"), 20000), 0o600); err != nil {
		t.Fatal(err)
	}
	ids := map[string][]string{}
	for i, b := range []struct{ project, workload string }{{prod, "web"}, {staging, "db"}, {prod, "web"}} {
		id := fmt.Sprintf("20261207-0000%02d-real", i)
		src, _ := json.Marshal(map[string]any{"name": b.workload, "project_id": b.project, "servers": []any{}})
		backUp(t, r, img, repo.BackupSpec{ID: id, Labels: map[string]string{"workload": b.workload, "project": b.project}, Source: src})
		ids[b.project] = append(ids[b.project], id)
	}
	logs := &syncBuffer{}
	s, err := api.New(api.Config{
		Identity: api.NewKeystone(api.ServiceCredentials{AuthURL: admin.IdentityEndpoint, Username: admin.Username, Password: admin.Password,
			UserDomainName: "Default", ProjectName: admin.TenantName, ProjectDomainName: "Default"}, nil),
		AuthURL: admin.IdentityEndpoint, Temporal: tc, DefaultRepository: "main", CacheTTL: -1,
		Repos: api.NewRegistry(map[string]activities.RepoConfig{"main": {URL: "file://" + filepath.Join(dir, "repo"), PasswordFile: pwFile}}, nil),
		Log:   slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	e := &env{srv: hs} // its call, on this server
	call := func(tok, method, path string, body any) (int, []byte) {
		t.Helper()
		return e.call(t, tok, method, path, body, nil)
	}
	listed := func(tok, query string) []string {
		t.Helper()
		st, data := call(tok, "GET", "/v1/backups"+query, nil)
		if st != 200 {
			t.Fatalf("list %s: %d %s", query, st, data)
		}
		var l struct {
			Backups []api.BackupView `json:"backups"`
		}
		if err := json.Unmarshal(data, &l); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, b := range l.Backups {
			out = append(out, b.ID)
		}
		slices.Sort(out)
		return out
	}
	const unauthorized = "The request you have made requires authentication."

	for name, tok := range map[string]string{"none": "", "forged": "gAAAAABforged-" + strings.Repeat("x", 180), "unscoped": unscoped} {
		st, data := call(tok, "GET", "/v1/backups", nil)
		wantError(t, name+" token", st, data, 401, unauthorized)
	}
	if got := listed(prodTok, ""); !slices.Equal(got, ids[prod]) {
		t.Errorf("prod's member lists %v, want prod's %v", got, ids[prod])
	}
	if got := listed(stagingTok, ""); !slices.Equal(got, ids[staging]) {
		t.Errorf("staging's member lists %v, want staging's %v", got, ids[staging])
	}
	other := ids[staging][0]
	for _, c := range []struct{ method, path string }{{"GET", "/v1/backups/" + other}, {"DELETE", "/v1/backups/" + other},
		{"POST", "/v1/backups/" + other + "/protect"}} {
		st, data := call(prodTok, c.method, c.path, nil)
		wantError(t, "prod's member: "+c.method+" "+c.path, st, data, 404, "Backup "+other+" could not be found.")
	}
	st, data := call(prodTok, "GET", "/v1/backups?project_id="+staging, nil)
	wantError(t, "prod's member lists staging's", st, data, 403, "Policy doesn't allow backup:list to be performed.")
	st, data = call(prodTok, "POST", "/v1/restores", map[string]any{"restore": map[string]any{"backup_id": ids[prod][0], "project_id": staging}})
	wantError(t, "prod's member restores into staging", st, data, 403, "Policy doesn't allow restore:start to be performed.")
	if got := listed(adminTok, "?project_id="+staging); !slices.Equal(got, ids[staging]) {
		t.Errorf("the admin lists staging's %v, want %v", got, ids[staging])
	}

	// A revoked token is refused at once (no cache here).
	req, _ := http.NewRequest("DELETE", strings.TrimSuffix(admin.IdentityEndpoint, "/")+"/auth/tokens", nil)
	req.Header.Set("X-Auth-Token", adminTok)
	req.Header.Set("X-Subject-Token", stagingTok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("revoke staging's token: %s", resp.Status)
	}
	st, data = call(stagingTok, "GET", "/v1/backups", nil)
	wantError(t, "a revoked token", st, data, 401, unauthorized)

	l := logs.String()
	if !strings.Contains(l, "api request") {
		t.Fatal("the API logged no request")
	}
	for _, tok := range []string{prodTok, stagingTok, adminTok, unscoped, admin.Password} {
		if strings.Contains(l, tok) {
			t.Errorf("the API's log holds a token or password (%d bytes)", len(tok))
		}
	}
}
