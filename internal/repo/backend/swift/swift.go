// Package swift stores a repository's objects in an OpenStack Swift container
// or a Swift-compatible store such as Ceph RGW (URL swift://container/prefix).
//
// Object name N is stored as PREFIX/N (N alone when the prefix is empty).
// Authentication works like the OpenStack and Swift command-line clients, in
// this order:
//  1. Config.V1, or the variables ST_AUTH, ST_USER and ST_KEY of
//     python-swiftclient: Swift v1 auth (RGW, tempauth, swauth);
//  2. a clouds.yaml entry named by Config.Cloud or OS_CLOUD (searched as the
//     openstack CLI does; OS_CLIENT_CONFIG_FILE names the file);
//  3. the OS_* variables of an openrc file (OS_AUTH_URL, OS_USERNAME, …).
//
// Tokens are renewed when they expire. A PUT is atomic in Swift, so Save
// needs no temporary object.
package swift

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"
	"github.com/gophercloud/gophercloud/v2/openstack/objectstorage/v1/containers"
	"github.com/gophercloud/gophercloud/v2/openstack/objectstorage/v1/objects"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

// V1Auth holds Swift v1 credentials: GET URL with X-Auth-User and
// X-Auth-Key answers with X-Storage-Url and X-Auth-Token.
type V1Auth struct {
	// URL is the auth URL, for RGW http://HOST:PORT/auth/1.0.
	URL string
	// User is "account:user" (for RGW "user:subuser").
	User string
	// Key is the user's secret key.
	Key string
}

// Config holds the settings of a Swift backend that are not in its URL.
type Config struct {
	// V1, when not nil, is used instead of the environment and clouds.yaml.
	V1 *V1Auth
	// Cloud names the clouds.yaml entry to use instead of OS_CLOUD.
	Cloud string
	// HTTPClient, when not nil, replaces the client Open builds (one tuned
	// for many parallel small requests to one host). With clouds.yaml TLS
	// settings its transport is replaced.
	HTTPClient *http.Client
	// ListPageSize is the number of names List asks for per request; 0 means
	// 10000, Swift's default maximum. Tests set it small to exercise paging.
	ListPageSize int
	// Log receives informational messages; nil means slog.Default().
	Log *slog.Logger
}

// Backend is a container (or a prefix in a container) of objects. It is safe
// for concurrent use. It implements backend.Backend and backend.Copier.
type Backend struct {
	client    *gophercloud.ServiceClient
	container string
	prefix    string // without slashes at either end; may be empty
	pageSize  int
	location  string
	transport *http.Transport // ours to close; nil with a caller's HTTPClient
	log       *slog.Logger
}

var (
	_ backend.Backend = (*Backend)(nil)
	_ backend.Copier  = (*Backend)(nil)
)

// Open authenticates, then returns a backend for the objects under prefix in
// container, creating the container if it does not exist. Errors that
// retrying cannot fix (no credentials, bad credentials, an invalid container
// name) are backend.Permanent.
func Open(ctx context.Context, container, prefix string, cfg Config) (*Backend, error) {
	if container == "" || strings.Contains(container, "/") || len(container) > 256 {
		return nil, backend.Permanent(fmt.Errorf("swift: invalid container name %q: 1-256 bytes without '/'", container))
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	b := &Backend{
		container: container,
		prefix:    strings.Trim(prefix, "/"),
		pageSize:  cfg.ListPageSize,
		log:       log,
	}
	if b.pageSize <= 0 {
		b.pageSize = 10000
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc, b.transport = newHTTPClient()
	}
	b.location = "swift://" + container
	if b.prefix != "" {
		b.location += "/" + b.prefix
	}
	client, how, err := authenticate(ctx, cfg, hc, b.transport != nil)
	if err != nil {
		b.closeIdle()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("swift open %s: %w (%w)", b.location, ctx.Err(), err)
		}
		return nil, fmt.Errorf("swift open %s: %w", b.location, err)
	}
	b.client = client
	if u, err := url.Parse(client.Endpoint); err == nil {
		b.location += " at " + u.Redacted()
	}
	log.Debug("swift authenticated", "location", b.location, "auth", how)
	if err := b.ensureContainer(ctx); err != nil {
		b.closeIdle()
		return nil, err
	}
	return b, nil
}

// newHTTPClient returns a client for many parallel small requests to one
// host: enough idle connections kept per host that a burst of concurrent
// PUTs reuses them.
func newHTTPClient() (*http.Client, *http.Transport) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 64
	t.IdleConnTimeout = 90 * time.Second
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ResponseHeaderTimeout = 2 * time.Minute
	return &http.Client{Transport: t}, t
}

// authenticate returns an object-storage client by the first source of
// credentials that is configured, and names that source. ours says whether
// hc's transport is the backend's own (TLS settings of clouds.yaml go there).
func authenticate(ctx context.Context, cfg Config, hc *http.Client, ours bool) (*gophercloud.ServiceClient, string, error) {
	v1 := cfg.V1
	if v1 == nil && os.Getenv("ST_AUTH") != "" {
		v1 = &V1Auth{URL: os.Getenv("ST_AUTH"), User: os.Getenv("ST_USER"), Key: os.Getenv("ST_KEY")}
		switch {
		case v1.User == "":
			return nil, "", backend.Permanent(errors.New("ST_AUTH is set but ST_USER is not"))
		case v1.Key == "":
			return nil, "", backend.Permanent(errors.New("ST_AUTH is set but ST_KEY is not"))
		}
	}
	if v1 != nil {
		c, err := v1Client(ctx, *v1, hc)
		return c, "swift v1 auth at " + redact(v1.URL), err
	}
	cloud := cfg.Cloud
	if cloud == "" {
		cloud = os.Getenv("OS_CLOUD")
	}
	var (
		ao  gophercloud.AuthOptions
		eo  gophercloud.EndpointOpts
		how string
	)
	switch {
	case cloud != "":
		var tlsCfg *tls.Config
		var err error
		ao, eo, tlsCfg, err = clouds.Parse(clouds.WithCloudName(cloud))
		if err != nil {
			return nil, "", backend.Permanent(fmt.Errorf("clouds.yaml entry %q: %w", cloud, err))
		}
		how = "clouds.yaml entry " + cloud
		if tlsCfg != nil {
			t, ok := hc.Transport.(*http.Transport)
			if !ours || !ok {
				return nil, "", backend.Permanent(fmt.Errorf("%s has TLS settings, which a caller's HTTPClient cannot take", how))
			}
			t.TLSClientConfig = tlsCfg
		}
	case os.Getenv("OS_AUTH_URL") != "":
		var err error
		ao, err = openstack.AuthOptionsFromEnv()
		if err != nil {
			return nil, "", backend.Permanent(fmt.Errorf("OS_* environment: %w", err))
		}
		eo = gophercloud.EndpointOpts{Region: os.Getenv("OS_REGION_NAME")}
		switch os.Getenv("OS_INTERFACE") {
		case "internal", "internalURL":
			eo.Availability = gophercloud.AvailabilityInternal
		case "admin", "adminURL":
			eo.Availability = gophercloud.AvailabilityAdmin
		}
		how = "OS_* environment (Keystone at " + redact(ao.IdentityEndpoint) + ")"
	default:
		return nil, "", backend.Permanent(errors.New("no Swift credentials: set ST_AUTH, ST_USER and ST_KEY (Swift v1 auth), OS_CLOUD (clouds.yaml) or the OS_* variables of an openrc file"))
	}
	ao.AllowReauth = true
	pc, err := openstack.NewClient(ao.IdentityEndpoint)
	if err != nil {
		return nil, "", backend.Permanent(fmt.Errorf("%s: %w", how, err))
	}
	pc.HTTPClient = *hc
	pc.UseTokenLock()
	if err := openstack.Authenticate(ctx, pc, ao); err != nil {
		return nil, "", classifyAuth(how, err)
	}
	c, err := openstack.NewObjectStorageV1(pc, eo)
	if err != nil {
		return nil, "", backend.Permanent(fmt.Errorf("%s: no object-store endpoint in the service catalog: %w", how, err))
	}
	return c, how, nil
}

// classifyAuth wraps a Keystone authentication error: refused credentials
// are permanent, unreachable or failing servers transient.
func classifyAuth(how string, err error) error {
	switch st := statusOf(err); {
	case st == http.StatusUnauthorized || st == http.StatusForbidden:
		return backend.Permanent(fmt.Errorf("%s: access denied (HTTP %d): check the credentials: %w", how, st, err))
	case st >= 500 || st == 0 || st == http.StatusTooManyRequests || st == http.StatusRequestTimeout:
		return fmt.Errorf("%s: authenticate: %w", how, err)
	default:
		return backend.Permanent(fmt.Errorf("%s: authenticate: %w", how, err))
	}
}

// v1Client logs in with Swift v1 auth and returns a client that logs in
// again when its token is refused.
func v1Client(ctx context.Context, a V1Auth, hc *http.Client) (*gophercloud.ServiceClient, error) {
	token, storageURL, err := v1Login(ctx, a, hc)
	if err != nil {
		return nil, err
	}
	pc := &gophercloud.ProviderClient{HTTPClient: *hc}
	pc.UseTokenLock()
	pc.SetToken(token)
	pc.ReauthFunc = func(ctx context.Context) error {
		token, _, err := v1Login(ctx, a, hc)
		if err != nil {
			return err
		}
		pc.SetToken(token)
		return nil
	}
	return &gophercloud.ServiceClient{ProviderClient: pc, Endpoint: gophercloud.NormalizeURL(storageURL)}, nil
}

// v1Login performs one Swift v1 authentication.
func v1Login(ctx context.Context, a V1Auth, hc *http.Client) (token, storageURL string, err error) {
	where := "swift v1 auth at " + redact(a.URL) + " as " + a.User
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.URL, nil)
	if err != nil {
		return "", "", backend.Permanent(fmt.Errorf("%s: %w", where, err))
	}
	req.Header.Set("X-Auth-User", a.User)
	req.Header.Set("X-Auth-Key", a.Key)
	resp, err := hc.Do(req)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", where, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch st := resp.StatusCode; {
	case st == http.StatusUnauthorized || st == http.StatusForbidden:
		return "", "", backend.Permanent(fmt.Errorf("%s: access denied (HTTP %d): check the user and key (ST_USER, ST_KEY)", where, st))
	case st >= 500 || st == http.StatusTooManyRequests || st == http.StatusRequestTimeout:
		return "", "", fmt.Errorf("%s: HTTP %d", where, st)
	case st < 200 || st > 299:
		return "", "", backend.Permanent(fmt.Errorf("%s: HTTP %d", where, st))
	}
	token = resp.Header.Get("X-Auth-Token")
	if token == "" {
		token = resp.Header.Get("X-Storage-Token")
	}
	storageURL = resp.Header.Get("X-Storage-Url")
	if token == "" || storageURL == "" {
		return "", "", backend.Permanent(fmt.Errorf("%s: answer has no X-Auth-Token or X-Storage-Url", where))
	}
	return token, storageURL, nil
}

// redact returns rawURL without a password in it.
func redact(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}

// statusOf returns the HTTP status of a failed request, or 0 if there was
// no answer.
func statusOf(err error) int {
	var v gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &v) {
		return v.Actual
	}
	var p *gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &p) {
		return p.Actual
	}
	return 0
}

// ensureContainer creates the container unless it exists.
func (b *Backend) ensureContainer(ctx context.Context) error {
	err := containers.Get(ctx, b.client, b.container, nil).Err
	if err == nil {
		return nil
	}
	if statusOf(err) != http.StatusNotFound {
		return b.classify(ctx, "open", "", err)
	}
	if err := containers.Create(ctx, b.client, b.container, nil).Err; err != nil {
		return b.classify(ctx, "create container", "", err)
	}
	b.log.Debug("created Swift container", "container", b.container, "location", b.location)
	return nil
}

// Location implements backend.Backend: swift://container/prefix and the
// storage URL.
func (b *Backend) Location() string { return b.location }

// key maps an object name to its Swift object name.
func (b *Backend) key(name string) (string, error) {
	key, err := backend.ObjectKey(b.prefix, name)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", "swift", b.location, err)
	}
	return key, nil
}

// Save implements backend.Backend with one PUT. Its ETag (MD5) lets Swift
// reject a body damaged on the way.
func (b *Backend) Save(ctx context.Context, name string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("swift save %s: %w", name, err)
	}
	key, err := b.key(name)
	if err != nil {
		return err
	}
	err = objects.Create(ctx, b.client, b.container, key, objects.CreateOpts{
		Content:       bytes.NewReader(data),
		ContentLength: int64(len(data)),
		ContentType:   "application/octet-stream",
	}).Err
	if err != nil {
		return b.classify(ctx, "save", name, err)
	}
	return nil
}

// Load implements backend.Backend with one GET. A body shorter than the
// announced length is a transient error.
func (b *Backend) Load(ctx context.Context, name string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("swift load %s: %w", name, err)
	}
	key, err := b.key(name)
	if err != nil {
		return nil, err
	}
	res := objects.Download(ctx, b.client, b.container, key, nil)
	if res.Err != nil {
		return nil, b.classify(ctx, "load", name, res.Err)
	}
	defer res.Body.Close()
	size := int64(-1)
	if v := res.Header.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			size = n
		}
	}
	buf := bytes.NewBuffer(make([]byte, 0, max(size, 0)+bytes.MinRead))
	if _, err := buf.ReadFrom(res.Body); err != nil {
		return nil, b.classify(ctx, "load", name, fmt.Errorf("read body: %w", err))
	}
	if size >= 0 && int64(buf.Len()) != size {
		return nil, fmt.Errorf("swift load %s: got %d of %d bytes", name, buf.Len(), size)
	}
	return buf.Bytes(), nil
}

// Stat implements backend.Backend with HEAD; ModTime is the object's
// Last-Modified time (one-second resolution).
func (b *Backend) Stat(ctx context.Context, name string) (backend.Info, error) {
	if err := ctx.Err(); err != nil {
		return backend.Info{}, fmt.Errorf("swift stat %s: %w", name, err)
	}
	key, err := b.key(name)
	if err != nil {
		return backend.Info{}, err
	}
	h, err := objects.Get(ctx, b.client, b.container, key, nil).Extract()
	if err != nil {
		return backend.Info{}, b.classify(ctx, "stat", name, err)
	}
	return backend.Info{Name: name, Size: h.ContentLength, ModTime: h.LastModified}, nil
}

// Delete implements backend.Backend with one DELETE (404 for a missing
// object wraps backend.ErrNotFound).
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("swift delete %s: %w", name, err)
	}
	key, err := b.key(name)
	if err != nil {
		return err
	}
	if err := objects.Delete(ctx, b.client, b.container, key, nil).Err; err != nil {
		return b.classify(ctx, "delete", name, err)
	}
	return nil
}

// errStop carries fn's error out of gophercloud's pager unchanged.
type errStop struct{ err error }

func (e errStop) Error() string { return e.err.Error() }

// List implements backend.Backend with container listings of ListPageSize
// names, page by page (marker paging); ModTime comes from the listing.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	keyPrefix := prefix
	strip := ""
	if b.prefix != "" {
		strip = b.prefix + "/"
		keyPrefix = strip + prefix
	}
	pager := objects.List(b.client, b.container, objects.ListOpts{Prefix: keyPrefix, Limit: b.pageSize})
	err := pager.EachPage(ctx, func(ctx context.Context, page pagination.Page) (bool, error) {
		infos, err := objects.ExtractInfo(page)
		if err != nil {
			return false, err
		}
		for _, o := range infos {
			name, ok := strings.CutPrefix(o.Name, strip)
			if !ok || name == "" {
				continue
			}
			if err := fn(backend.Info{Name: name, Size: o.Bytes, ModTime: o.LastModified}); err != nil {
				return false, errStop{err}
			}
		}
		return ctx.Err() == nil, ctx.Err()
	})
	var stop errStop
	if errors.As(err, &stop) {
		return stop.err
	}
	if err != nil {
		return b.classify(ctx, "list", prefix, err)
	}
	return nil
}

// Copy implements backend.Copier with Swift's COPY: the bytes stay in the
// store and the copy gets a new ModTime.
func (b *Backend) Copy(ctx context.Context, from, to string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("swift copy %s to %s: %w", from, to, err)
	}
	src, err := b.key(from)
	if err != nil {
		return err
	}
	dst, err := b.key(to)
	if err != nil {
		return err
	}
	err = objects.Copy(ctx, b.client, b.container, src, objects.CopyOpts{Destination: "/" + backend.EscapedPath(b.container, dst)}).Err
	if err != nil {
		return b.classify(ctx, "copy", from+" to "+to, err)
	}
	return nil
}

// Close implements backend.Backend: it closes idle connections of the
// transport Open built. The backend must not be used afterwards.
func (b *Backend) Close() error {
	b.closeIdle()
	return nil
}

func (b *Backend) closeIdle() {
	if b.transport != nil {
		b.transport.CloseIdleConnections()
	}
}

// classify wraps err from operation op on object name (empty for
// container-level operations):
//   - 404 for an object wraps backend.ErrNotFound;
//   - a cancelled or expired ctx is returned as such (wrapped);
//   - access denied (401, 403, failed re-authentication), a missing
//     container and other client errors (4xx) are backend.Permanent;
//   - 5xx, 408, 429, 498 and network errors stay plain, so the retry
//     wrapper retries them.
func (b *Backend) classify(ctx context.Context, op, name string, err error) error {
	what := "swift " + op + " " + b.location
	if name != "" {
		what = "swift " + op + " " + name + " in " + b.location
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		if errors.Is(err, ctxErr) {
			return fmt.Errorf("%s: %w", what, err)
		}
		return fmt.Errorf("%s: %w (%w)", what, ctxErr, err)
	}
	var reauth *gophercloud.ErrUnableToReauthenticate
	if errors.As(err, &reauth) {
		if backend.IsPermanent(reauth.ErrReauth) {
			return backend.Permanent(fmt.Errorf("%s: access denied: token expired and logging in again failed: %w", what, reauth.ErrReauth))
		}
		return fmt.Errorf("%s: token expired, logging in again failed: %w", what, reauth.ErrReauth)
	}
	switch st := statusOf(err); {
	case st == http.StatusNotFound && name != "":
		return fmt.Errorf("%s: %w", what, backend.ErrNotFound)
	case st == http.StatusNotFound:
		return backend.Permanent(fmt.Errorf("%s: container %s does not exist: %w", what, b.container, err))
	case st == http.StatusUnauthorized || st == http.StatusForbidden:
		return backend.Permanent(fmt.Errorf("%s: access denied (HTTP %d): check the credentials and the container's ACLs: %w", what, st, err))
	case st == 0 || st >= 500 || st == http.StatusRequestTimeout || st == http.StatusTooManyRequests || st == 498:
		return fmt.Errorf("%s: %w", what, err)
	default:
		return backend.Permanent(fmt.Errorf("%s: %w", what, err))
	}
}
