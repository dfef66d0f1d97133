package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/raksha-backup/raksha/internal/repo"
)

// Repositories opens the repositories of the registry by id.
type Repositories interface {
	// Open returns the open repository; an id not in the registry is an
	// error wrapping ErrUnknownRepository.
	Open(ctx context.Context, id string) (*repo.Repository, error)
}

// ErrUnknownRepository means a repository id is not in the registry.
var ErrUnknownRepository = errors.New("unknown repository")

// IdentityService is what the API needs of Keystone (*Keystone is one).
type IdentityService interface {
	ValidateToken(ctx context.Context, token string) (*Identity, error)
	ProjectRoles(ctx context.Context, userID, projectID string) ([]string, error)
}

// Config is what a Server needs.
type Config struct {
	// Identity validates tokens and reads role assignments (Keystone).
	Identity IdentityService
	// AuthURL is Keystone's public endpoint, named in the
	// WWW-Authenticate header of a 401.
	AuthURL string
	// Temporal starts, queries and cancels the workflows.
	Temporal client.Client
	// Repos is the registry; DefaultRepository is used when a request
	// names none.
	Repos             Repositories
	DefaultRepository string
	// Workloads discovers a project's workloads for GET /v1/workloads;
	// nil answers that route with 501.
	Workloads WorkloadSource
	// Quotas are the admin's limits per project, enforced at backup start;
	// nil limits nothing.
	Quotas *Quotas
	// MaxFileRequests bounds the file listings and downloads served at
	// once (default DefaultMaxFileRequests); more are refused with 429.
	// Each holds at most a few decoded chunks in memory.
	MaxFileRequests int
	// PolicyLimits are the admin's limits on tenants' backup policies;
	// nil: tenants publish none (403).
	PolicyLimits *PolicyLimits
	// Policy decides; nil is the defaults.
	Policy *Policy
	// CacheTTL bounds how long a validated token (and a user's roles on
	// another project) is trusted without asking Keystone again (default
	// 30 s; never beyond the token's expiry; negative: no cache).
	// CacheSize bounds the entries (default 4096).
	CacheTTL  time.Duration
	CacheSize int
	// Log receives one line per request (never a token); default discard.
	Log *slog.Logger
}

// Server is raksha-api's HTTP handler. It is safe for concurrent use.
type Server struct {
	cfg    Config
	log    *slog.Logger
	policy *Policy
	tokens *cache[*Identity]
	roles  *cache[[]string]
	mux    *http.ServeMux

	backupLocks backupLocks
	readers     startedReaders // restores and clones started here, for deletes
	fileSlots   chan struct{}
}

// New makes a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Identity == nil || cfg.Temporal == nil || cfg.Repos == nil {
		return nil, errors.New("api: identity service, Temporal client and repository registry are required")
	}
	if cfg.PolicyLimits != nil {
		if err := cfg.PolicyLimits.Validate(); err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
	}
	if cfg.Quotas != nil {
		if err := cfg.Quotas.Validate(); err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = 30 * time.Second
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 4096
	}
	if cfg.CacheTTL < 0 {
		cfg.CacheSize = 0
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxFileRequests <= 0 {
		cfg.MaxFileRequests = DefaultMaxFileRequests
	}
	s := &Server{cfg: cfg, log: cfg.Log, policy: cfg.Policy,
		tokens: newCache[*Identity](cfg.CacheSize), roles: newCache[[]string](cfg.CacheSize), mux: http.NewServeMux(),
		fileSlots: make(chan struct{}, cfg.MaxFileRequests)}
	if s.policy == nil {
		p, err := NewPolicy(nil)
		if err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
		s.policy = p
	}
	allow := map[string][]string{}
	for _, rt := range s.routes() {
		h := rt.handler
		if !rt.public {
			h = s.authenticated(h)
		}
		s.mux.Handle(rt.method+" "+rt.path, h)
		allow[rt.path] = append(allow[rt.path], rt.method)
	}
	// A known path with another method: 405 with Allow, in the API's
	// error body.
	for path, methods := range allow {
		s.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", strings.Join(methods, ", "))
			writeError(w, errorf(http.StatusMethodNotAllowed, "The method %s is not allowed on %s.", r.Method, path))
		})
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errorf(http.StatusNotFound, "The resource could not be found."))
	})
	return s, nil
}

// Route is one route of the API, as the OpenAPI document lists it.
type Route struct {
	Method, Path string
}

// Routes lists the API's routes (method and path pattern).
func (s *Server) Routes() []Route {
	var out []Route
	for _, rt := range s.routes() {
		out = append(out, Route{rt.method, rt.path})
	}
	return out
}

type route struct {
	method, path string
	handler      http.Handler
	public       bool
}

type apiFunc func(w http.ResponseWriter, r *http.Request, id *Identity) error

func (s *Server) routes() []route {
	h := func(method, path string, fn apiFunc) route {
		return route{method: method, path: path, handler: apiHandler(fn)}
	}
	return []route{
		{method: "GET", path: "/v1/openapi.json", handler: http.HandlerFunc(serveOpenAPI), public: true},
		h("GET", "/v1/workloads", s.listWorkloads),
		h("GET", "/v1/backups", s.listBackups),
		h("POST", "/v1/backups", s.startBackup),
		h("GET", "/v1/backups/{id}", s.showBackup),
		h("DELETE", "/v1/backups/{id}", s.deleteBackup),
		h("POST", "/v1/backups/{id}/protect", s.protectBackup(true)),
		h("POST", "/v1/backups/{id}/unprotect", s.protectBackup(false)),
		h("GET", "/v1/backups/{id}/disks/{disk}/files", s.listFiles),
		h("GET", "/v1/backups/{id}/disks/{disk}/files/content", s.downloadFile),
		h("GET", "/v1/quotas", s.showQuotas),
		h("GET", "/v1/policies", s.listPolicies),
		h("POST", "/v1/policies", s.createPolicy),
		h("GET", "/v1/policies/{name}", s.showPolicy),
		h("DELETE", "/v1/policies/{name}", s.deletePolicy),
		h("GET", "/v1/backup-runs/{id}", s.showBackupRun),
		h("POST", "/v1/backup-runs/{id}/cancel", s.cancelBackupRun),
		h("GET", "/v1/restores", s.listRestores),
		h("POST", "/v1/restores", s.startRestore),
		h("GET", "/v1/restores/{id}", s.showRestore),
		h("POST", "/v1/restores/{id}/cancel", s.cancelRestore),
		h("GET", "/v1/clones", s.listClones),
		h("POST", "/v1/clones", s.startClone),
		h("GET", "/v1/clones/{id}", s.showClone),
		h("DELETE", "/v1/clones/{id}", s.deleteClone),
		h("POST", "/v1/clones/{id}/cancel", s.cancelClone),
	}
}

// ServeHTTP serves the API: a request id on every answer, one log line per
// request (method, path, status, duration, user and project; never a
// header, so never a token).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	reqID := "req-" + hex.EncodeToString(b)
	w.Header().Set("X-Openstack-Request-Id", reqID)
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	info := &requestInfo{}
	s.mux.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info)))
	attrs := []any{"request_id", reqID, "method", r.Method, "path", r.URL.Path, "status", rec.status,
		"ms", float64(time.Since(start).Microseconds()) / 1000}
	if info.id != nil {
		attrs = append(attrs, "user_id", info.id.UserID, "project_id", info.id.ProjectID)
	}
	if info.err != nil {
		attrs = append(attrs, "err", info.err.Error())
	}
	level := slog.LevelInfo
	if rec.status >= 500 {
		level = slog.LevelError
	}
	s.log.Log(r.Context(), level, "api request", attrs...)
}

// requestInfo is what a request's handlers tell the access log.
type requestInfo struct {
	id  *Identity
	err error
}

type requestInfoKey struct{}

func infoOf(ctx context.Context) *requestInfo {
	if ri, ok := ctx.Value(requestInfoKey{}).(*requestInfo); ok {
		return ri
	}
	return &requestInfo{}
}

type identityKey struct{}

func apiHandler(fn apiFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := r.Context().Value(identityKey{}).(*Identity)
		if err := fn(w, r, id); err != nil {
			infoOf(r.Context()).err = err
			writeError(w, err)
		}
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
