package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// authenticated validates X-Auth-Token before h runs. Forged, expired,
// revoked and unscoped tokens are all 401 with one message; Keystone
// unreachable is 503. A validation is cached (by the token's SHA-256) for
// CacheTTL, never past the token's expiry.
func (s *Server) authenticated(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := s.authenticate(r.Context(), r.Header.Get("X-Auth-Token"))
		if err != nil {
			infoOf(r.Context()).err = err
			var e *Error
			if errors.As(err, &e) && e.Status == http.StatusUnauthorized && s.cfg.AuthURL != "" {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf("Keystone uri=%q", s.cfg.AuthURL))
			}
			writeError(w, err)
			return
		}
		infoOf(r.Context()).id = id
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey{}, id)))
	})
}

func (s *Server) authenticate(ctx context.Context, token string) (*Identity, error) {
	if token == "" {
		return nil, unauthorized(errors.New("no X-Auth-Token"))
	}
	now := time.Now()
	key := cacheKey("token", token)
	if id, ok := s.tokens.get(key, now); ok {
		return id, nil
	}
	id, err := s.cfg.Identity.ValidateToken(ctx, token)
	if errors.Is(err, ErrInvalidToken) {
		return nil, unauthorized(errors.New("keystone does not know the token, or it expired"))
	}
	if err != nil {
		return nil, &Error{Status: http.StatusServiceUnavailable, Message: "The identity service cannot validate the token now; try again later.", Err: err}
	}
	if id.ProjectID == "" {
		return nil, unauthorized(fmt.Errorf("user %s: the token is not scoped to a project", id.UserID))
	}
	s.tokens.put(key, id, minTime(now.Add(s.cfg.CacheTTL), id.ExpiresAt), now)
	return id, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// access is what a caller may do in one project for one action.
type access struct {
	// visible: the caller holds some role on the project (or is an admin),
	// so it may learn what exists there.
	visible bool
	allowed bool
}

// authorize decides action on project for the caller: with the token's
// roles in the token's project (and in any project when RuleAdmin passes),
// else with the roles Keystone says the user holds on that project.
func (s *Server) authorize(ctx context.Context, id *Identity, action, project string) (access, error) {
	roles := id.Roles
	if project != id.ProjectID && !s.policy.Allowed(RuleAdmin, id.Roles) {
		if project == "" {
			return access{}, nil
		}
		var err error
		if roles, err = s.projectRoles(ctx, id, project); err != nil {
			return access{}, err
		}
	}
	return access{visible: len(roles) > 0, allowed: s.policy.Allowed(action, roles)}, nil
}

// require is authorize that turns a refusal into an error: 404 (what) when
// the project is not the caller's at all, 403 when the policy refuses.
func (s *Server) require(ctx context.Context, id *Identity, action, project string, notFound *Error) error {
	a, err := s.authorize(ctx, id, action, project)
	if err != nil {
		return err
	}
	if !a.visible && notFound != nil {
		return notFound
	}
	if !a.allowed {
		return forbidden(action)
	}
	return nil
}

func forbidden(action string) *Error {
	return errorf(http.StatusForbidden, "Policy doesn't allow %s to be performed.", action)
}

// projectRoles are the user's effective roles on a project other than its
// token's, from Keystone, cached as tokens are (never past the token).
func (s *Server) projectRoles(ctx context.Context, id *Identity, project string) ([]string, error) {
	now := time.Now()
	key := cacheKey("roles", id.UserID, project)
	if roles, ok := s.roles.get(key, now); ok {
		return roles, nil
	}
	roles, err := s.cfg.Identity.ProjectRoles(ctx, id.UserID, project)
	if err != nil {
		return nil, &Error{Status: http.StatusServiceUnavailable, Message: "The identity service cannot say the caller's roles now; try again later.", Err: err}
	}
	s.roles.put(key, roles, minTime(now.Add(s.cfg.CacheTTL), id.ExpiresAt), now)
	return roles, nil
}
