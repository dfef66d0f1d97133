// Package lab is the lab cloud: a small OpenStack-compatible HTTP API
// (Keystone v3, Nova, Cinder v3, Glance v2, Neutron and Heat subsets) on
// 127.0.0.1 over real things — Cinder volumes are qcow2 files, Cinder
// snapshots are point-in-time qcow2 copies, Nova servers run on a Compute
// backend (QEMU processes of the lab guest in `raksha lab up`). With
// Options.RBD, volumes are RBD images in a Ceph cluster and snapshots RBD
// snapshots (see RBDConfig).
//
// It serves exactly what internal/cloud uses, with the JSON shapes, status
// transitions and error bodies of the real services (see
// shared/notes/openstack.md), so that Raksha, gophercloud and the openstack
// command-line client work against it unchanged. One server on one port
// serves every service under its own path prefix:
//
//	/identity/v3                   Keystone
//	/compute/v2.1                  Nova
//	/volume/v3/{project_id}        Cinder
//	/image/v2                      Glance
//	/network/v2.0                  Neutron
//	/orchestration/v1/{project_id} Heat
//
// All state lives in one directory: state.json (written atomically after
// every change), volumes/, snapshots/ and hosts/<host>/instances/<name>/.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options configure a lab cloud.
type Options struct {
	// Dir holds the lab's state and disk files; it is created if missing.
	Dir string
	// Addr is the listen address; default 127.0.0.1:0 (any free port).
	Addr string
	// Compute runs the servers. Required.
	Compute Compute
	// Hosts are the lab's compute host names; servers are placed round-robin.
	// Default: lab-host-1 and lab-host-2.
	Hosts []string
	// TokenTTL is how long a Keystone token lives; default one hour.
	TokenTTL time.Duration
	// FormatDisks makes new ephemeral disks and blank volumes hold an empty
	// ext4 filesystem, so that the lab guest mounts them at /data/<label>:
	// ephemeral disks are labelled "ephemeral0" (as Nova's
	// default_ephemeral_format does), volumes by their name (cut to 16
	// characters) or "vol-" and the start of their id. Off, they are blank
	// qcow2 images as in a real cloud.
	FormatDisks bool
	// RBD, when set, keeps volumes of type VolumeTypeRBD — the default type
	// then — as RBD images in a Ceph cluster (see RBDConfig).
	RBD *RBDConfig
	// FirstInstance numbers the first server's instance name
	// (instance-%08x); default 1. Labs that share one libvirtd (tests)
	// start at different numbers, since domain names are the host's.
	FirstInstance int
	// Log receives the lab's structured log; default: discard.
	Log *slog.Logger
}

// Lab is a running lab cloud. Its methods are safe for concurrent use.
type Lab struct {
	opts Options
	log  *slog.Logger
	dir  string

	mu     sync.Mutex
	st     *state
	tokens map[string]*token
	faults map[string][]int
	// backendFaults counts the operations of the storage backend still to
	// fail (FailNextBackend).
	backendFaults map[BackendOp]int
	// services are catalog entries added by AddService (services the lab
	// does not serve itself, such as raksha-api).
	services []catalogService

	// rbd drives the Ceph cluster of Options.RBD; nil without.
	rbd *rbdStore

	ln   net.Listener
	srv  *http.Server
	base string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type token struct {
	ID        string
	UserID    string
	ProjectID string
	Roles     []string
	Methods   []string
	Issued    time.Time
	Expires   time.Time
}

func (t *token) admin() bool {
	for _, r := range t.Roles {
		if r == "admin" {
			return true
		}
	}
	return false
}

// Start opens (or creates) the lab in opts.Dir, listens on opts.Addr and
// serves the API until Close. Servers recorded as running are started again
// on their compute backend.
func Start(ctx context.Context, opts Options) (*Lab, error) {
	if opts.Dir == "" {
		return nil, errors.New("start lab: no directory")
	}
	if opts.Compute == nil {
		return nil, errors.New("start lab: no compute backend")
	}
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if len(opts.Hosts) == 0 {
		opts.Hosts = []string{"lab-host-1", "lab-host-2"}
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = time.Hour
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("start lab: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("start lab: %w", err)
	}
	var store *rbdStore
	if opts.RBD != nil {
		if store, err = newRBDStore(*opts.RBD); err != nil {
			return nil, fmt.Errorf("start lab: %w", err)
		}
	}
	st, err := loadState(dir)
	if err != nil {
		return nil, fmt.Errorf("start lab: %w", err)
	}
	if opts.FirstInstance > 0 && st.NextInst <= 1 && len(st.Servers) == 0 {
		st.NextInst = opts.FirstInstance
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("start lab: listen on %s: %w", opts.Addr, err)
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := &Lab{
		opts: opts, log: opts.Log, dir: dir, st: st, rbd: store,
		tokens: map[string]*token{}, faults: map[string][]int{}, backendFaults: map[BackendOp]int{},
		ln: ln, base: "http://" + ln.Addr().String(),
		ctx: lctx, cancel: cancel,
	}
	l.mu.Lock()
	l.seedDefaults()
	err = l.saveLocked()
	l.mu.Unlock()
	if err != nil {
		ln.Close()
		cancel()
		return nil, fmt.Errorf("start lab: %w", err)
	}
	l.srv = &http.Server{Handler: l.routes(), ReadHeaderTimeout: 30 * time.Second}
	go func() {
		if err := l.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			l.log.Error("lab API stopped", "err", err)
		}
	}()
	l.resumeServers(ctx)
	l.log.Info("lab cloud up", "url", l.base, "dir", dir)
	return l, nil
}

// URL is the base URL of the lab's API, e.g. http://127.0.0.1:35357.
func (l *Lab) URL() string { return l.base }

// AuthURL is the Keystone v3 endpoint clients authenticate against.
func (l *Lab) AuthURL() string { return l.base + "/identity/v3" }

// Dir is the lab's state directory (absolute).
func (l *Lab) Dir() string { return l.dir }

// Close stops the API, waits for background transitions to finish and leaves
// the state on disk. It does not stop the servers' processes: that is up to
// the compute backend's owner.
func (l *Lab) Close() error {
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := l.srv.Shutdown(sctx)
	l.cancel()
	l.wg.Wait()
	if err != nil {
		return fmt.Errorf("stop lab API: %w", err)
	}
	return nil
}

// Wait blocks until every background status transition started so far has
// finished (tests use it to avoid polling).
func (l *Lab) Wait() { l.wg.Wait() }

// ExpireTokens makes every token issued so far expired, as if its TTL had
// passed; clients must re-authenticate.
func (l *Lab) ExpireTokens() {
	l.mu.Lock()
	defer l.mu.Unlock()
	past := time.Now().Add(-time.Second)
	for _, t := range l.tokens {
		t.Expires = past
	}
}

// FailNext makes the next n requests to a service ("identity", "compute",
// "volume", "image", "network", "orchestration") fail with the given HTTP
// status and that service's error body: a fault injector for testing how
// clients classify errors such as 503 Service Unavailable.
func (l *Lab) FailNext(service string, status, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for range n {
		l.faults[service] = append(l.faults[service], status)
	}
}

// BackendOp is an asynchronous operation of the lab's storage backend,
// which the API has accepted before it runs.
type BackendOp string

// The backend operations FailNextBackend can make fail.
const (
	// SnapshotCreate copies a volume into a new Cinder snapshot; failed,
	// the snapshot goes from "creating" to "error".
	SnapshotCreate BackendOp = "snapshot-create"
	// VolumeCreate makes the disk file of a new Cinder volume; failed, the
	// volume goes from "creating" to "error".
	VolumeCreate BackendOp = "volume-create"
)

// FailNextBackend makes the next n operations op of the storage backend
// fail after the API accepted them, as a failing Cinder backend does: the
// request is answered 202 and the resource ends in status "error". A fault
// injector for testing how clients wait for and report such failures.
func (l *Lab) FailNextBackend(op BackendOp, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.backendFaults[op] += n
}

// takeBackendFaultLocked reports whether this op is to fail, consuming one
// injected fault; l.mu must be held.
func (l *Lab) takeBackendFaultLocked(op BackendOp) bool {
	if l.backendFaults[op] <= 0 {
		return false
	}
	l.backendFaults[op]--
	return true
}

// errInjected is the error of a backend operation failed by FailNextBackend.
var errInjected = errors.New("failure injected by the lab (FailNextBackend)")

// async runs fn in the background, tracked so that Close and Wait can wait
// for it.
func (l *Lab) async(fn func(ctx context.Context)) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		fn(l.ctx)
	}()
}

// saveLocked persists the state; l.mu must be held.
func (l *Lab) saveLocked() error { return l.st.save(l.dir) }

// abs turns a path relative to the lab directory into an absolute one.
func (l *Lab) abs(rel string) string { return filepath.Join(l.dir, rel) }

// ---- HTTP plumbing ----

// apiError is an OpenStack API error: an HTTP status, the fault name the
// service puts in its body (itemNotFound, badRequest, conflictingRequest,
// forbidden, overLimit, ...), and a message.
type apiError struct {
	status int
	kind   string
	msg    string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.status, e.kind, e.msg) }

func errNotFound(format string, a ...any) error {
	return &apiError{http.StatusNotFound, "itemNotFound", fmt.Sprintf(format, a...)}
}
func errBadRequest(format string, a ...any) error {
	return &apiError{http.StatusBadRequest, "badRequest", fmt.Sprintf(format, a...)}
}
func errConflict(format string, a ...any) error {
	return &apiError{http.StatusConflict, "conflictingRequest", fmt.Sprintf(format, a...)}
}
func errForbidden(format string, a ...any) error {
	return &apiError{http.StatusForbidden, "forbidden", fmt.Sprintf(format, a...)}
}

// call is one authenticated API request.
type call struct {
	tok *token
	// mv is the negotiated microversion's minor number (Nova 2.x, Cinder 3.x).
	mv int
}

func (c *call) admin() bool { return c.tok.admin() }

// service describes how one OpenStack service frames versions and errors.
type service struct {
	name     string // catalog type used in FailNext and logs
	mvHeader string // "compute" / "volume" for OpenStack-API-Version, "" if none
	legacyMV string // legacy microversion header
	major    int
	maxMinor int
	minMinor int
	errBody  func(status int, kind, msg string) any
	// computeReqID: the service also sends X-Compute-Request-Id.
	computeReqID bool
}

var statusKinds = map[int]string{
	400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
	406: "notAcceptable", 409: "conflictingRequest", 413: "overLimit", 500: "computeFault", 503: "serviceUnavailable",
}

func novaStyleError(status int, kind, msg string) any {
	body := map[string]any{"code": status, "message": msg}
	if status == http.StatusRequestEntityTooLarge {
		body["retryAfter"] = "0"
	}
	return map[string]any{kind: body}
}

func (l *Lab) writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	if w.Header().Get("X-Openstack-Request-Id") == "" {
		w.Header().Set("X-Openstack-Request-Id", "req-"+newID())
	}
	w.WriteHeader(status)
	if v != nil && status != http.StatusNoContent {
		if err := json.NewEncoder(w).Encode(v); err != nil {
			l.log.Debug("write response", "err", err)
		}
	}
}

func (l *Lab) writeError(w http.ResponseWriter, svc *service, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		l.log.Error("lab API internal error", "service", svc.name, "err", err)
		ae = &apiError{http.StatusInternalServerError, "computeFault", "Unexpected API Error. " + err.Error()}
	}
	if ae.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf("Keystone uri=%q", l.AuthURL()))
		l.writeJSON(w, ae.status, keystoneError(ae.status, ae.msg))
		return
	}
	l.writeJSON(w, ae.status, svc.errBody(ae.status, ae.kind, ae.msg))
}

func keystoneError(status int, msg string) any {
	return map[string]any{"error": map[string]any{"code": status, "title": http.StatusText(status), "message": msg}}
}

// takeFault pops an injected fault for the service, if any.
func (l *Lab) takeFault(svc string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	q := l.faults[svc]
	if len(q) == 0 {
		return 0
	}
	l.faults[svc] = q[1:]
	return q[0]
}

// handler wraps an API handler: fault injection, token validation,
// microversion negotiation and error rendering.
func (l *Lab) handler(svc *service, fn func(w http.ResponseWriter, r *http.Request, c *call) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// Every answer carries its request id, empty ones (202, 204)
		// included; Nova and Cinder repeat it as X-Compute-Request-Id,
		// which is where novaclient and cinderclient read it for their
		// error messages.
		reqID := "req-" + newID()
		w.Header().Set("X-Openstack-Request-Id", reqID)
		if svc.computeReqID {
			w.Header().Set("X-Compute-Request-Id", reqID)
		}
		if st := l.takeFault(svc.name); st != 0 {
			l.writeError(w, svc, &apiError{st, statusKinds[st], http.StatusText(st) + " (injected by the lab)"})
			return
		}
		tok, err := l.validate(r.Header.Get("X-Auth-Token"))
		if err != nil {
			l.writeError(w, svc, err)
			return
		}
		c := &call{tok: tok, mv: svc.minMinor}
		if svc.mvHeader != "" {
			mv, err := negotiate(r, svc)
			if err != nil {
				l.writeError(w, svc, err)
				return
			}
			c.mv = mv
			v := fmt.Sprintf("%d.%d", svc.major, mv)
			w.Header().Set("OpenStack-API-Version", svc.mvHeader+" "+v)
			w.Header().Set(svc.legacyMV, v)
			w.Header().Set("Vary", "OpenStack-API-Version, "+svc.legacyMV)
		}
		if err := fn(w, r, c); err != nil {
			l.writeError(w, svc, err)
		}
	}
}

// negotiate reads the requested microversion (OpenStack-API-Version or the
// legacy header); "latest" means the maximum.
func negotiate(r *http.Request, svc *service) (int, error) {
	var want string
	if h := r.Header.Get("OpenStack-API-Version"); h != "" {
		for _, part := range strings.Split(h, ",") {
			f := strings.Fields(part)
			if len(f) == 2 && strings.EqualFold(f[0], svc.mvHeader) {
				want = f[1]
			}
		}
	}
	if want == "" {
		want = r.Header.Get(svc.legacyMV)
	}
	if want == "" {
		return svc.minMinor, nil
	}
	if want == "latest" {
		return svc.maxMinor, nil
	}
	maj, min, ok := strings.Cut(want, ".")
	mi, err := strconv.Atoi(min)
	if !ok || err != nil || maj != strconv.Itoa(svc.major) {
		return 0, errBadRequest("Invalid API version request: %s", want)
	}
	if mi < svc.minMinor || mi > svc.maxMinor {
		return 0, &apiError{http.StatusNotAcceptable, "notAcceptable",
			fmt.Sprintf("Version %s is not supported by the API. Minimum is %d.%d and maximum is %d.%d.", want, svc.major, svc.minMinor, svc.major, svc.maxMinor)}
	}
	return mi, nil
}

// validate checks a token as keystonemiddleware does for every service.
func (l *Lab) validate(id string) (*token, error) {
	unauth := &apiError{http.StatusUnauthorized, "unauthorized", "The request you have made requires authentication."}
	if id == "" {
		return nil, unauth
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.tokens[id]
	if !ok || time.Now().After(t.Expires) {
		return nil, unauth
	}
	if _, ok := l.st.Users[t.UserID]; !ok {
		return nil, unauth
	}
	return t, nil
}

// decodeBody reads a JSON request body into v.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	if err := dec.Decode(v); err != nil {
		return errBadRequest("Malformed request body: %v", err)
	}
	return nil
}

func (l *Lab) routes() http.Handler {
	mux := http.NewServeMux()
	l.keystoneRoutes(mux)
	l.novaRoutes(mux)
	l.cinderRoutes(mux)
	l.glanceRoutes(mux)
	l.neutronRoutes(mux)
	l.heatRoutes(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.log.Debug("lab API", "method", r.Method, "path", r.URL.Path, "query", r.URL.RawQuery)
		mux.ServeHTTP(w, r)
	})
}

func timeStr(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

// cinderTime is Cinder's timestamp format (microseconds, no zone).
func cinderTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000") }

func boolQuery(r *http.Request, name string) bool {
	v := strings.ToLower(r.URL.Query().Get(name))
	return v == "1" || v == "true" || v == "yes" || v == "on"
}
