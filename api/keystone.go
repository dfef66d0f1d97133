package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// ServiceCredentials are the API's own Keystone credentials (a service
// user), with which it validates callers' tokens and reads role
// assignments. Keystone's policy must let this user do both: a user with
// the admin role (or, on a real cloud, the service role and
// identity:list_role_assignments).
type ServiceCredentials struct {
	// AuthURL is Keystone's v3 endpoint, e.g. https://keystone:5000/v3.
	AuthURL           string
	Username          string
	Password          string
	UserDomainName    string // default "Default"
	ProjectName       string
	ProjectDomainName string // default "Default"
}

// ErrInvalidToken means Keystone does not know the token, or it expired
// or was revoked.
var ErrInvalidToken = errors.New("invalid token")

// Identity is what a validated token says: who, in which project, with
// which roles, until when.
type Identity struct {
	UserID      string    `json:"user_id"`
	UserName    string    `json:"user_name"`
	ProjectID   string    `json:"project_id"`
	ProjectName string    `json:"project_name"`
	Roles       []string  `json:"roles"`
	ExpiresAt   time.Time `json:"expires_at"`
}

// Keystone talks to Keystone v3 with the service credentials. It is safe
// for concurrent use. The service token is kept in memory only and renewed
// a minute before it expires or when Keystone refuses it.
type Keystone struct {
	creds ServiceCredentials
	hc    *http.Client

	mu      sync.Mutex
	token   string
	expires time.Time
}

// NewKeystone returns a client of Keystone; hc nil is a client with a 10 s
// timeout.
func NewKeystone(creds ServiceCredentials, hc *http.Client) *Keystone {
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	if creds.UserDomainName == "" {
		creds.UserDomainName = "Default"
	}
	if creds.ProjectDomainName == "" {
		creds.ProjectDomainName = "Default"
	}
	creds.AuthURL = strings.TrimRight(creds.AuthURL, "/")
	return &Keystone{creds: creds, hc: hc}
}

// serviceToken returns the service token, authenticating when there is
// none or it expires within a minute (or renew is set).
func (k *Keystone) serviceToken(ctx context.Context, renew bool) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !renew && k.token != "" && time.Until(k.expires) > time.Minute {
		return k.token, nil
	}
	var body struct {
		Auth struct {
			Identity struct {
				Methods  []string `json:"methods"`
				Password struct {
					User struct {
						Name     string            `json:"name"`
						Password string            `json:"password"`
						Domain   map[string]string `json:"domain"`
					} `json:"user"`
				} `json:"password"`
			} `json:"identity"`
			Scope struct {
				Project struct {
					Name   string            `json:"name"`
					Domain map[string]string `json:"domain"`
				} `json:"project"`
			} `json:"scope"`
		} `json:"auth"`
	}
	body.Auth.Identity.Methods = []string{"password"}
	u := &body.Auth.Identity.Password.User
	u.Name, u.Password, u.Domain = k.creds.Username, k.creds.Password, map[string]string{"name": k.creds.UserDomainName}
	p := &body.Auth.Scope.Project
	p.Name, p.Domain = k.creds.ProjectName, map[string]string{"name": k.creds.ProjectDomainName}
	data, err := json.Marshal(body)
	if err != nil {
		return "", fmt.Errorf("keystone: service authentication: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, k.creds.AuthURL+"/auth/tokens", bytes.NewReader(data))
	if err != nil {
		return "", fmt.Errorf("keystone: service authentication: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := k.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("keystone: service authentication: %w", err)
	}
	defer resp.Body.Close()
	var tb tokenBody
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("keystone: service authentication of %s: %s", k.creds.Username, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&tb); err != nil {
		return "", fmt.Errorf("keystone: service authentication: %w", err)
	}
	k.token, k.expires = resp.Header.Get("X-Subject-Token"), tb.Token.ExpiresAt
	if k.token == "" {
		return "", errors.New("keystone: service authentication: no X-Subject-Token")
	}
	return k.token, nil
}

// tokenBody is the part of Keystone's token body the API reads.
type tokenBody struct {
	Token struct {
		ExpiresAt time.Time `json:"expires_at"`
		User      struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"user"`
		Project *struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"project"`
		Roles []struct {
			Name string `json:"name"`
		} `json:"roles"`
	} `json:"token"`
}

// do sends an authenticated request with the service token, renewing it
// once if Keystone answers 401.
func (k *Keystone) do(ctx context.Context, path string, hdr http.Header) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		tok, err := k.serviceToken(ctx, attempt > 0)
		if err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.creds.AuthURL+path, nil)
		if err != nil {
			return nil, fmt.Errorf("keystone: %w", err)
		}
		req.Header = hdr.Clone()
		if req.Header == nil {
			req.Header = http.Header{}
		}
		req.Header.Set("X-Auth-Token", tok)
		req.Header.Set("Accept", "application/json")
		resp, err := k.hc.Do(req)
		if err != nil {
			// The error names the URL, never a header.
			return nil, fmt.Errorf("keystone: %w", err)
		}
		if resp.StatusCode == http.StatusUnauthorized && attempt == 0 {
			resp.Body.Close()
			continue
		}
		return resp, nil
	}
}

// ValidateToken asks Keystone what the token is (GET /v3/auth/tokens with
// the token in X-Subject-Token, without the catalog). An unknown, expired or revoked token is
// ErrInvalidToken; an unscoped one is an Identity without a project.
func (k *Keystone) ValidateToken(ctx context.Context, token string) (*Identity, error) {
	resp, err := k.do(ctx, "/auth/tokens?nocatalog", http.Header{"X-Subject-Token": {token}})
	if err != nil {
		return nil, fmt.Errorf("validate token: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		// Keystone's answer for an unknown, expired or revoked subject
		// token. A 401 or 403 is about the service's own token or rights:
		// an error, not the caller's fault.
		return nil, ErrInvalidToken
	default:
		return nil, fmt.Errorf("validate token: keystone answered %s", resp.Status)
	}
	var tb tokenBody
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&tb); err != nil {
		return nil, fmt.Errorf("validate token: %w", err)
	}
	id := &Identity{UserID: tb.Token.User.ID, UserName: tb.Token.User.Name, ExpiresAt: tb.Token.ExpiresAt}
	if tb.Token.Project != nil {
		id.ProjectID, id.ProjectName = tb.Token.Project.ID, tb.Token.Project.Name
	}
	for _, r := range tb.Token.Roles {
		id.Roles = append(id.Roles, r.Name)
	}
	if id.UserID == "" || id.ExpiresAt.IsZero() {
		return nil, errors.New("validate token: keystone's answer has no user or no expiry")
	}
	if !time.Now().Before(id.ExpiresAt) {
		return nil, ErrInvalidToken
	}
	return id, nil
}

// ProjectRoles lists the roles a user holds on a project, implied roles
// included (GET /v3/role_assignments?effective&include_names).
func (k *Keystone) ProjectRoles(ctx context.Context, userID, projectID string) ([]string, error) {
	q := url.Values{"user.id": {userID}, "scope.project.id": {projectID}}
	resp, err := k.do(ctx, "/role_assignments?"+q.Encode()+"&effective&include_names", nil)
	if err != nil {
		return nil, fmt.Errorf("role assignments of user %s on project %s: %w", userID, projectID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("role assignments of user %s on project %s: keystone answered %s", userID, projectID, resp.Status)
	}
	var body struct {
		Assignments []struct {
			Role struct {
				Name string `json:"name"`
			} `json:"role"`
			Scope struct {
				Project struct {
					ID string `json:"id"`
				} `json:"project"`
			} `json:"scope"`
		} `json:"role_assignments"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&body); err != nil {
		return nil, fmt.Errorf("role assignments of user %s on project %s: %w", userID, projectID, err)
	}
	seen := map[string]bool{}
	var roles []string
	for _, a := range body.Assignments {
		if a.Scope.Project.ID != projectID || a.Role.Name == "" || seen[a.Role.Name] {
			continue
		}
		seen[a.Role.Name] = true
		roles = append(roles, a.Role.Name)
	}
	return roles, nil
}
