package lab

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"sort"
	"strings"
	"time"
)

var keystoneSvc = &service{
	name: "identity", major: 3,
	errBody: func(status int, _ string, msg string) any { return keystoneError(status, msg) },
}

const (
	defaultDomainID   = "default"
	defaultDomainName = "Default"
)

func (l *Lab) keystoneRoutes(mux *http.ServeMux) {
	versions := func(w http.ResponseWriter, r *http.Request) {
		l.writeJSON(w, http.StatusMultipleChoices, map[string]any{"versions": map[string]any{"values": []any{l.keystoneVersion()}}})
	}
	mux.HandleFunc("GET /identity", versions)
	mux.HandleFunc("GET /identity/{$}", versions)
	version := func(w http.ResponseWriter, r *http.Request) {
		l.writeJSON(w, http.StatusOK, map[string]any{"version": l.keystoneVersion()})
	}
	mux.HandleFunc("GET /identity/v3", version)
	mux.HandleFunc("GET /identity/v3/{$}", version)
	mux.HandleFunc("POST /identity/v3/auth/tokens", l.issueToken)
	mux.HandleFunc("GET /identity/v3/auth/tokens", l.handler(keystoneSvc, l.checkToken))
	mux.HandleFunc("HEAD /identity/v3/auth/tokens", l.handler(keystoneSvc, l.checkToken))
	mux.HandleFunc("DELETE /identity/v3/auth/tokens", l.handler(keystoneSvc, l.revokeToken))
	mux.HandleFunc("GET /identity/v3/auth/projects", l.handler(keystoneSvc, l.authProjects))
	mux.HandleFunc("GET /identity/v3/projects", l.handler(keystoneSvc, l.listProjects))
	mux.HandleFunc("GET /identity/v3/projects/{id}", l.handler(keystoneSvc, l.getProject))
	mux.HandleFunc("GET /identity/v3/users", l.handler(keystoneSvc, l.listUsers))
	mux.HandleFunc("GET /identity/v3/users/{id}", l.handler(keystoneSvc, l.getUser))
	mux.HandleFunc("GET /identity/v3/roles", l.handler(keystoneSvc, l.listRoles))
	mux.HandleFunc("GET /identity/v3/role_assignments", l.handler(keystoneSvc, l.listRoleAssignments))
}

func (l *Lab) keystoneVersion() map[string]any {
	return map[string]any{
		"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
		"links":       []any{map[string]any{"rel": "self", "href": l.AuthURL() + "/"}},
		"media-types": []any{map[string]any{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}},
	}
}

type authRequest struct {
	Auth struct {
		Identity struct {
			Methods  []string `json:"methods"`
			Password struct {
				User struct {
					ID       string `json:"id"`
					Name     string `json:"name"`
					Password string `json:"password"`
					Domain   struct {
						ID   string `json:"id"`
						Name string `json:"name"`
					} `json:"domain"`
				} `json:"user"`
			} `json:"password"`
			Token struct {
				ID string `json:"id"`
			} `json:"token"`
		} `json:"identity"`
		Scope *struct {
			Project *struct {
				ID     string `json:"id"`
				Name   string `json:"name"`
				Domain struct {
					ID   string `json:"id"`
					Name string `json:"name"`
				} `json:"domain"`
			} `json:"project"`
			Domain *struct{} `json:"domain"`
			System *struct{} `json:"system"`
		} `json:"scope"`
	} `json:"auth"`
}

func (l *Lab) issueToken(w http.ResponseWriter, r *http.Request) {
	if st := l.takeFault(keystoneSvc.name); st != 0 {
		l.writeJSON(w, st, keystoneError(st, http.StatusText(st)+" (injected by the lab)"))
		return
	}
	var req authRequest
	if err := decodeBody(r, &req); err != nil {
		l.writeJSON(w, http.StatusBadRequest, keystoneError(http.StatusBadRequest, err.Error()))
		return
	}
	unauth := func(msg string) {
		l.log.Info("lab keystone: authentication refused", "reason", msg)
		w.Header().Set("WWW-Authenticate", "Keystone uri=\""+l.AuthURL()+"\"")
		l.writeJSON(w, http.StatusUnauthorized, keystoneError(http.StatusUnauthorized, "The request you have made requires authentication."))
	}
	id := req.Auth.Identity
	l.mu.Lock()
	defer l.mu.Unlock()
	var u *user
	var methods []string
	switch {
	case contains(id.Methods, "password"):
		pu := id.Password.User
		for _, cand := range l.st.Users {
			if (pu.ID != "" && cand.ID == pu.ID) || (pu.ID == "" && cand.Name == pu.Name) {
				u = cand
			}
		}
		if pu.ID == "" && pu.Domain.ID != "" && pu.Domain.ID != defaultDomainID ||
			pu.ID == "" && pu.Domain.Name != "" && pu.Domain.Name != defaultDomainName {
			u = nil
		}
		if u == nil || hashPassword(u.Salt, pu.Password) != u.PasswordHash {
			unauth("unknown user or wrong password")
			return
		}
		methods = []string{"password"}
	case contains(id.Methods, "token"):
		t, ok := l.tokens[id.Token.ID]
		if !ok || time.Now().After(t.Expires) {
			unauth("unknown or expired token")
			return
		}
		u = l.st.Users[t.UserID]
		methods = []string{"token"}
	default:
		unauth("unsupported auth method")
		return
	}
	var p *project
	if sc := req.Auth.Scope; sc != nil {
		if sc.Project == nil {
			unauth("only project scope is supported")
			return
		}
		for _, cand := range l.st.Projects {
			if (sc.Project.ID != "" && cand.ID == sc.Project.ID) || (sc.Project.ID == "" && cand.Name == sc.Project.Name) {
				p = cand
			}
		}
		if p == nil {
			unauth("unknown project")
			return
		}
	} else if u.DefaultProject != "" {
		p = l.st.Projects[u.DefaultProject]
	}
	t := &token{ID: newToken(), UserID: u.ID, Methods: methods, Issued: time.Now()}
	t.Expires = t.Issued.Add(l.opts.TokenTTL)
	if p != nil {
		role, ok := u.Roles[p.ID]
		if !ok {
			unauth("user has no role on the project")
			return
		}
		t.ProjectID = p.ID
		t.Roles = rolesFor(role)
	}
	l.tokens[t.ID] = t
	l.pruneTokensLocked()
	w.Header().Set("X-Subject-Token", t.ID)
	l.writeJSON(w, http.StatusCreated, map[string]any{"token": l.tokenBodyLocked(t)})
}

// pruneTokensLocked forgets tokens that expired more than a day ago.
func (l *Lab) pruneTokensLocked() {
	cut := time.Now().Add(-24 * time.Hour)
	for id, t := range l.tokens {
		if t.Expires.Before(cut) {
			delete(l.tokens, id)
		}
	}
}

// rolesFor expands a role as Keystone's implied roles do: admin implies
// member implies reader.
func rolesFor(role string) []string {
	switch role {
	case "admin":
		return []string{"admin", "member", "reader"}
	case "reader":
		return []string{"reader"}
	}
	return []string{"member", "reader"}
}

func roleID(name string) string {
	switch name {
	case "admin":
		return "b7f1e6a4c2d84a0e9f3b5c6d7e8f9a01"
	case "member":
		return "b7f1e6a4c2d84a0e9f3b5c6d7e8f9a02"
	default:
		return "b7f1e6a4c2d84a0e9f3b5c6d7e8f9a03"
	}
}

func (l *Lab) tokenBodyLocked(t *token) map[string]any {
	u := l.st.Users[t.UserID]
	dom := map[string]any{"id": defaultDomainID, "name": defaultDomainName}
	body := map[string]any{
		"methods":    t.Methods,
		"user":       map[string]any{"id": u.ID, "name": u.Name, "domain": dom, "password_expires_at": nil},
		"audit_ids":  []string{t.ID[len(t.ID)-22:]},
		"issued_at":  t.Issued.UTC().Format("2006-01-02T15:04:05.000000Z"),
		"expires_at": t.Expires.UTC().Format("2006-01-02T15:04:05.000000Z"),
	}
	if p := l.st.Projects[t.ProjectID]; p != nil {
		body["project"] = map[string]any{"id": p.ID, "name": p.Name, "domain": dom}
		roles := []any{}
		for _, r := range t.Roles {
			roles = append(roles, map[string]any{"id": roleID(r), "name": r})
		}
		body["roles"] = roles
		body["is_domain"] = false
		body["catalog"] = l.catalog(p.ID)
	}
	return body
}

// catalog lists the lab's services; every interface has the same URL.
func (l *Lab) catalog(projectID string) []any {
	entry := func(typ, name, url string) any {
		var eps []any
		for _, iface := range []string{"public", "internal", "admin"} {
			eps = append(eps, map[string]any{
				"id": stableID("endpoint", name, iface), "interface": iface, "region": l.st.RegionName,
				"region_id": l.st.RegionName, "url": url,
			})
		}
		return map[string]any{"id": stableID("service", name), "type": typ, "name": name, "endpoints": eps}
	}
	extra := []any{}
	for _, svc := range l.services {
		extra = append(extra, entry(svc.typ, svc.name, svc.url))
	}
	return append([]any{
		entry("identity", "keystone", l.AuthURL()),
		entry("compute", "nova", l.base+"/compute/v2.1"),
		entry("volumev3", "cinderv3", l.base+"/volume/v3/"+projectID),
		entry("block-storage", "cinder", l.base+"/volume/v3/"+projectID),
		entry("image", "glance", l.base+"/image"),
		entry("network", "neutron", l.base+"/network"),
		entry("orchestration", "heat", l.base+"/orchestration/v1/"+projectID),
	}, extra...)
}

// catalogService is a catalog entry the lab does not serve itself.
type catalogService struct{ typ, name, url string }

// AddService lists a service that runs beside the lab (raksha-api, say) in
// the catalog of every token issued or validated from now on, as an
// operator's `openstack service create` and `endpoint create` would; every
// interface has url. It is not kept across restarts of the lab.
func (l *Lab) AddService(typ, name, url string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.services = append(l.services, catalogService{typ, name, url})
}

// stableID is a Keystone-style id (32 hex digits) derived from names, so
// that catalog entries keep their ids across restarts of the lab as they do
// in Keystone's database.
func stableID(parts ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(sum[:16])
}

func (l *Lab) checkToken(w http.ResponseWriter, r *http.Request, c *call) error {
	t, err := l.validate(r.Header.Get("X-Subject-Token"))
	if err != nil {
		return errNotFound("Could not find token: %s.", r.Header.Get("X-Subject-Token"))
	}
	if t.UserID != c.tok.UserID && !c.admin() {
		return errForbidden("You are not authorized to perform the requested action: identity:validate_token.")
	}
	l.mu.Lock()
	body := l.tokenBodyLocked(t)
	l.mu.Unlock()
	if r.URL.Query().Has("nocatalog") {
		delete(body, "catalog")
	}
	w.Header().Set("X-Subject-Token", t.ID)
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"token": body})
	return nil
}

func (l *Lab) revokeToken(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	id := r.Header.Get("X-Subject-Token")
	t, ok := l.tokens[id]
	if !ok {
		return errNotFound("Could not find token: %s.", id)
	}
	if t.UserID != c.tok.UserID && !c.admin() {
		return errForbidden("You are not authorized to perform the requested action: identity:revoke_token.")
	}
	delete(l.tokens, id)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func projectBody(p *project) map[string]any {
	return map[string]any{
		"id": p.ID, "name": p.Name, "description": p.Description, "domain_id": defaultDomainID,
		"enabled": true, "is_domain": false, "parent_id": defaultDomainID, "tags": []string{},
		"links": map[string]any{"self": ""},
	}
}

func (l *Lab) authProjects(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.st.Users[c.tok.UserID]
	out := []any{}
	for _, p := range sortedProjects(l.st) {
		if _, ok := u.Roles[p.ID]; ok {
			out = append(out, projectBody(p))
		}
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"projects": out, "links": map[string]any{"self": nil, "next": nil, "previous": nil}})
	return nil
}

func sortedProjects(st *state) []*project {
	ps := make([]*project, 0, len(st.Projects))
	for _, p := range st.Projects {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
	return ps
}

func (l *Lab) listProjects(w http.ResponseWriter, r *http.Request, c *call) error {
	if !c.admin() {
		return errForbidden("You are not authorized to perform the requested action: identity:list_projects.")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	name := r.URL.Query().Get("name")
	out := []any{}
	for _, p := range sortedProjects(l.st) {
		if name == "" || p.Name == name {
			out = append(out, projectBody(p))
		}
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"projects": out, "links": map[string]any{"self": nil, "next": nil, "previous": nil}})
	return nil
}

func (l *Lab) getProject(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.st.Projects[r.PathValue("id")]
	if p == nil || (!c.admin() && p.ID != c.tok.ProjectID) {
		return &apiError{http.StatusNotFound, "itemNotFound", "Could not find project: " + r.PathValue("id") + "."}
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"project": projectBody(p)})
	return nil
}

func userBody(u *user) map[string]any {
	b := map[string]any{"id": u.ID, "name": u.Name, "domain_id": defaultDomainID, "enabled": true, "password_expires_at": nil, "options": map[string]any{}}
	if u.DefaultProject != "" {
		b["default_project_id"] = u.DefaultProject
	}
	return b
}

func (l *Lab) listUsers(w http.ResponseWriter, r *http.Request, c *call) error {
	if !c.admin() {
		return errForbidden("You are not authorized to perform the requested action: identity:list_users.")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := []any{}
	for _, u := range l.st.Users {
		if n := r.URL.Query().Get("name"); n == "" || n == u.Name {
			out = append(out, userBody(u))
		}
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"users": out, "links": map[string]any{"self": nil, "next": nil, "previous": nil}})
	return nil
}

func (l *Lab) getUser(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.st.Users[r.PathValue("id")]
	if u == nil || (!c.admin() && u.ID != c.tok.UserID) {
		return &apiError{http.StatusNotFound, "itemNotFound", "Could not find user: " + r.PathValue("id") + "."}
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"user": userBody(u)})
	return nil
}

func (l *Lab) listRoles(w http.ResponseWriter, r *http.Request, c *call) error {
	out := []any{}
	for _, n := range []string{"admin", "member", "reader"} {
		out = append(out, map[string]any{"id": roleID(n), "name": n, "domain_id": nil, "description": nil, "options": map[string]any{}})
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"roles": out, "links": map[string]any{"self": nil, "next": nil, "previous": nil}})
	return nil
}

// listRoleAssignments is GET /v3/role_assignments for user and project
// assignments (the lab has no groups, domains or system scope): filters
// user.id, scope.project.id and role.id; effective expands implied roles
// (admin → member → reader) as Keystone does; include_names adds names.
// Keystone's default policy lets a user list only its own assignments
// unless it is an admin; so does the lab.
func (l *Lab) listRoleAssignments(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	userID, projectID, roleFilter := q.Get("user.id"), q.Get("scope.project.id"), q.Get("role.id")
	_, effective := q["effective"]
	_, names := q["include_names"]
	if !c.admin() && userID != c.tok.UserID {
		return errForbidden("You are not authorized to perform the requested action: identity:list_role_assignments.")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := []any{}
	users := make([]*user, 0, len(l.st.Users))
	for _, u := range l.st.Users {
		users = append(users, u)
	}
	sort.Slice(users, func(i, j int) bool { return users[i].ID < users[j].ID })
	for _, u := range users {
		if userID != "" && u.ID != userID {
			continue
		}
		for _, p := range sortedProjects(l.st) {
			role, ok := u.Roles[p.ID]
			if !ok || (projectID != "" && p.ID != projectID) {
				continue
			}
			roles := []string{role}
			if effective {
				roles = rolesFor(role)
			}
			for _, rn := range roles {
				if roleFilter != "" && roleID(rn) != roleFilter {
					continue
				}
				ru := map[string]any{"id": u.ID}
				rp := map[string]any{"id": p.ID}
				rr := map[string]any{"id": roleID(rn)}
				if names {
					dom := map[string]any{"id": defaultDomainID, "name": defaultDomainName}
					ru["name"], ru["domain"] = u.Name, dom
					rp["name"], rp["domain"] = p.Name, dom
					rr["name"] = rn
				}
				a := map[string]any{"user": ru, "role": rr, "scope": map[string]any{"project": rp},
					"links": map[string]any{"assignment": l.AuthURL() + "/projects/" + p.ID + "/users/" + u.ID + "/roles/" + roleID(rn)}}
				if effective && rn != role {
					a["links"].(map[string]any)["prior_role"] = l.AuthURL() + "/roles/" + roleID(role)
				}
				out = append(out, a)
			}
		}
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"role_assignments": out,
		"links": map[string]any{"self": l.AuthURL() + "/role_assignments", "next": nil, "previous": nil}})
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
