package lab_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"testing"

	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/labtest"
)

// TestRolesAndAssignments: the reader role implies nothing, a token
// carries the implied roles of its scope, GET /v3/role_assignments answers
// a user's assignments (effective: implied roles too) to an admin or to
// the user itself, and a user without a default project gets an unscoped
// token when it asks for no scope, as Keystone does.
func TestRolesAndAssignments(t *testing.T) {
	l := labtest.Start(t)
	for _, p := range []string{"p1", "p2"} {
		if _, err := l.EnsureProject(p); err != nil {
			t.Fatal(err)
		}
	}
	readerID, err := l.EnsureUser("rd", "rd-pw", "p1", "reader")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.EnsureUser("rd", "rd-pw", "p2", "member"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.EnsureUser("x", "x-pw", "p1", "observer"); err == nil {
		t.Error("an unknown role was accepted")
	}
	type tokenBody struct {
		Token struct {
			Project *struct{ ID string } `json:"project"`
			Roles   []struct{ Name string }
		}
	}
	issue := func(user, pw, project string) (string, tokenBody) {
		auth := map[string]any{"identity": map[string]any{"methods": []string{"password"},
			"password": map[string]any{"user": map[string]any{"name": user, "password": pw, "domain": map[string]string{"id": "default"}}}}}
		if project != "" {
			auth["scope"] = map[string]any{"project": map[string]any{"name": project, "domain": map[string]string{"id": "default"}}}
		}
		data, _ := json.Marshal(map[string]any{"auth": auth})
		resp, err := http.Post(l.AuthURL()+"/auth/tokens", "application/json", bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var tb tokenBody
		if resp.StatusCode != 201 || json.NewDecoder(resp.Body).Decode(&tb) != nil {
			t.Fatalf("token of %s: %s", user, resp.Status)
		}
		return resp.Header.Get("X-Subject-Token"), tb
	}
	names := func(tb tokenBody) []string {
		var out []string
		for _, r := range tb.Token.Roles {
			out = append(out, r.Name)
		}
		return out
	}
	rdTok, tb := issue("rd", "rd-pw", "p1")
	if got := names(tb); !slices.Equal(got, []string{"reader"}) {
		t.Errorf("reader's token roles %v, want [reader]", got)
	}
	_, tb = issue("rd", "rd-pw", "p2")
	if got := names(tb); !slices.Equal(got, []string{"member", "reader"}) {
		t.Errorf("member's token roles %v, want [member reader]", got)
	}
	adminTok, _ := issue(lab.AdminUser, labtest.AdminPassword, lab.AdminProject)

	assignments := func(tok string, q url.Values, extra string) (int, []string) {
		req, _ := http.NewRequest("GET", l.AuthURL()+"/role_assignments?"+q.Encode()+extra, nil)
		req.Header.Set("X-Auth-Token", tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			RoleAssignments []struct {
				Role  struct{ ID, Name string }
				User  struct{ ID string }
				Scope struct{ Project struct{ ID string } }
			} `json:"role_assignments"`
		}
		if resp.StatusCode != 200 {
			return resp.StatusCode, nil
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, a := range body.RoleAssignments {
			if a.User.ID != readerID || a.Role.ID == "" {
				t.Errorf("assignment %+v", a)
			}
			out = append(out, a.Role.Name)
		}
		return resp.StatusCode, out
	}
	p2, _ := l.EnsureProject("p2")
	q := url.Values{"user.id": {readerID}, "scope.project.id": {p2}}
	if st, got := assignments(adminTok, q, "&include_names"); st != 200 || !slices.Equal(got, []string{"member"}) {
		t.Errorf("direct assignments on p2: %d %v, want [member]", st, got)
	}
	if st, got := assignments(adminTok, q, "&effective&include_names"); st != 200 || !slices.Equal(got, []string{"member", "reader"}) {
		t.Errorf("effective assignments on p2: %d %v, want [member reader]", st, got)
	}
	if st, got := assignments(rdTok, url.Values{"user.id": {readerID}}, "&effective&include_names"); st != 200 || len(got) != 3 {
		t.Errorf("the user's own effective assignments: %d %v, want 3", st, got)
	}
	if _, err := l.EnsureUser("m", "m-pw", "p1", "member"); err != nil {
		t.Fatal(err)
	}
	mTok, _ := issue("m", "m-pw", "p1")
	if st, _ := assignments(mTok, q, "&effective"); st != 403 {
		t.Errorf("a member lists another user's assignments: %d, want 403", st)
	}
	if err := l.SetDefaultProject("m", ""); err != nil {
		t.Fatal(err)
	}
	if _, tb := issue("m", "m-pw", ""); tb.Token.Project != nil || len(tb.Token.Roles) != 0 {
		t.Errorf("a user without a default project got a scoped token: %+v", tb.Token)
	}
}
