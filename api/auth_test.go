package api_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/internal/lab"
)

// counting counts the calls that reach Keystone.
type counting struct {
	api.IdentityService
	validations, roleLookups atomic.Int64
}

func (c *counting) ValidateToken(ctx context.Context, token string) (*api.Identity, error) {
	c.validations.Add(1)
	return c.IdentityService.ValidateToken(ctx, token)
}

func (c *counting) ProjectRoles(ctx context.Context, userID, projectID string) ([]string, error) {
	c.roleLookups.Add(1)
	return c.IdentityService.ProjectRoles(ctx, userID, projectID)
}

// lazyTemporal is a client that never dials: the tests that use it call
// no route that reaches Temporal.
func lazyTemporal(t *testing.T) client.Client {
	c, err := client.NewLazyClient(client.Options{HostPort: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTokenCache: a validation is reused within the cache's TTL, asked
// again after it, and never outlives the token: a token that expired is
// refused at once even though its validation was cached.
func TestTokenCache(t *testing.T) {
	var ks *counting
	wrap := func(s api.IdentityService) api.IdentityService { ks = &counting{IdentityService: s}; return ks }
	e := newEnv(t, lab.Options{TokenTTL: 3 * time.Second}, lazyTemporal(t), api.Config{CacheTTL: time.Second}, wrap)
	tok := e.token(t, alice, "alpha")
	issued := time.Now()
	for i := range 3 {
		if st, body := e.call(t, tok, "GET", "/v1/backups", nil, nil); st != 200 {
			t.Fatalf("call %d: %d %s", i, st, body)
		}
	}
	if n := ks.validations.Load(); n != 1 {
		t.Errorf("3 calls within the TTL asked Keystone %d times, want 1", n)
	}
	time.Sleep(time.Until(issued.Add(1200 * time.Millisecond)))
	if st, _ := e.call(t, tok, "GET", "/v1/backups", nil, nil); st != 200 {
		t.Fatalf("after the cache's TTL: %d", st)
	}
	if n := ks.validations.Load(); n != 2 {
		t.Errorf("a call after the cache's TTL: %d validations, want 2", n)
	}
	// Cached now until min(now+1s, expiry); past the expiry it is refused.
	time.Sleep(time.Until(issued.Add(3100 * time.Millisecond)))
	st, body := e.call(t, tok, "GET", "/v1/backups", nil, nil)
	wantError(t, "expired token", st, body, 401, msgUnauth)

	// Another project's roles are asked once per TTL too.
	carolTok := e.token(t, carol, "alpha")
	for range 3 {
		if st, body := e.call(t, carolTok, "GET", "/v1/backups?project_id="+e.projects["beta"], nil, nil); st != 200 {
			t.Fatalf("carol lists beta: %d %s", st, body)
		}
	}
	if n := ks.roleLookups.Load(); n != 1 {
		t.Errorf("3 calls on another project looked roles up %d times, want 1", n)
	}
	e.checkLogs(t)
}

// TestPolicyFile: an operator's policy file overrides the defaults (here:
// only admins list backups, readers may start restores) and a bad one is
// refused naming the rule.
func TestPolicyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(path, []byte("\"backup:list\": \"rule:context_is_admin\"\n\"restore:start\": \"role:reader or role:member\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := api.LoadPolicy(path)
	if err != nil {
		t.Fatal(err)
	}
	if p.Allowed("backup:list", []string{"member", "reader"}) || !p.Allowed("backup:list", []string{"admin"}) {
		t.Error("backup:list is not admin-only")
	}
	if !p.Allowed("restore:start", []string{"reader"}) || p.Allowed("restore:cancel", []string{"reader"}) {
		t.Error("restore:start is not open to readers, or restore:cancel is")
	}
	if p.Allowed("no:such:action", []string{"admin"}) {
		t.Error("an action without a rule is allowed")
	}
	for rules, want := range map[string]string{
		"\"backup:list\": \"rule:nope\"\n":                   `policy rule "backup:list": rule:nope names no rule`,
		"a: \"rule:b\"\nb: \"rule:a\"\n":                     `rule:a refers to itself`,
		"\"backup:list\": \"role:reader or\"\n":              `unexpected end of rule`,
		"\"backup:list\": \"project_id:%(project_id)s\"\n":   `unknown check "project_id:%(project_id)s"`,
		"\"backup:list\": \"(role:reader or role:member\"\n": `missing )`,
	} {
		if err := os.WriteFile(path, []byte(rules), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := api.LoadPolicy(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("policy %q: error %v, want one with %q", rules, err, want)
		}
	}
	if !p.Allowed("backup:show", []string{"reader"}) || p.Allowed("backup:start", []string{"reader"}) {
		t.Error("defaults not kept beside the overrides")
	}

	// And the server enforces it.
	e := newEnv(t, lab.Options{}, lazyTemporal(t), api.Config{Policy: p}, nil)
	st, body := e.call(t, e.token(t, alice, "alpha"), "GET", "/v1/backups", nil, nil)
	wantError(t, "a member lists under the admin-only policy", st, body, 403, msgPolicy("backup:list"))
	if st, body := e.call(t, e.token(t, admin, lab.AdminProject), "GET", "/v1/backups?project_id="+e.projects["alpha"], nil, nil); st != 200 {
		t.Errorf("the admin lists: %d %s", st, body)
	}
}

// TestOpenAPIDocument: every route is in the served document and every
// path and method of the document is a route.
func TestOpenAPIDocument(t *testing.T) {
	s, err := api.New(api.Config{Identity: &counting{}, Temporal: lazyTemporal(t), Repos: api.NewRegistry(nil, nil)})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(api.OpenAPI(), &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi %q, want 3.x", doc.OpenAPI)
	}
	var inDoc, inCode []string
	for path, ops := range doc.Paths {
		for m := range ops {
			inDoc = append(inDoc, strings.ToUpper(m)+" "+path)
		}
	}
	for _, r := range s.Routes() {
		inCode = append(inCode, r.Method+" "+r.Path)
	}
	sort.Strings(inDoc)
	sort.Strings(inCode)
	if strings.Join(inDoc, "\n") != strings.Join(inCode, "\n") {
		t.Errorf("the document's operations:\n%s\nthe routes:\n%s", strings.Join(inDoc, "\n"), strings.Join(inCode, "\n"))
	}
}

// TestKeystoneFailures: when the API's own Keystone credentials are wrong
// the caller gets 503 (not 401: its token may be good), and the log names
// the cause without the token or the password.
func TestKeystoneFailures(t *testing.T) {
	var l *lab.Lab
	wrap := func(api.IdentityService) api.IdentityService {
		return api.NewKeystone(api.ServiceCredentials{AuthURL: l.AuthURL(), Username: lab.AdminUser,
			Password: "wrong-service-password", ProjectName: lab.AdminProject}, nil)
	}
	e := newEnvWith(t, lab.Options{}, lazyTemporal(t), api.Config{}, wrap, func(lb *lab.Lab) { l = lb })
	st, body := e.call(t, e.token(t, alice, "alpha"), "GET", "/v1/backups", nil, nil)
	wantError(t, "wrong service credentials", st, body, 503, "The identity service cannot validate the token now; try again later.")
	logs := e.log.String()
	if !strings.Contains(logs, "keystone: service authentication of admin: 401 Unauthorized") {
		t.Errorf("the log does not name the cause: %s", logs)
	}
	if strings.Contains(logs, "wrong-service-password") {
		t.Error("the service password is in the log")
	}
	e.checkLogs(t)
}
