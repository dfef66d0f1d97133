package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/disk/rbd"
	"github.com/raksha-backup/raksha/internal/freezerec"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/socket"
	"github.com/raksha-backup/raksha/internal/metrics"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/open"
	"github.com/raksha-backup/raksha/internal/temporalx"
)

// Error types the workflows never retry.
const (
	ErrInvalid      = "InvalidInput"
	ErrNotFound     = "NotFound"
	ErrUnauthorized = "Unauthorized"
	ErrCorrupt      = "CorruptRepository"
	ErrNoCheckpoint = "NoCheckpoint"
)

// NonRetryable lists the error types above, for retry policies.
var NonRetryable = []string{ErrInvalid, ErrNotFound, ErrUnauthorized, ErrCorrupt, ErrNoCheckpoint}

// RepoConfig is one entry of a worker's repository registry. Workflows carry
// only the id; the URL and the password file stay with the workers.
type RepoConfig struct {
	URL          string `json:"url" yaml:"url"`
	PasswordFile string `json:"password_file" yaml:"password_file"`
	S3Endpoint   string `json:"s3_endpoint,omitempty" yaml:"s3_endpoint"`
	// Encryption "required" refuses the repository unless it is encrypted
	// (an entry with a password file refuses an unencrypted one anyway:
	// a bucket's config rewritten to `encryption: none` is a downgrade).
	Encryption string `json:"encryption,omitempty" yaml:"encryption"`
}

// Discoverer finds a workload's servers and captures their metadata (the
// OpenStack adapter implements it).
type Discoverer interface {
	// Discover returns the workload's VMs (Disk.Base unset) and the metadata
	// to keep in the backup record's source.
	Discover(ctx context.Context, sel Selector, project string) ([]VM, json.RawMessage, error)
}

// Config is what a worker's activities need.
type Config struct {
	// Repos maps repository ids to their location and credentials.
	Repos map[string]RepoConfig
	// HostDir is this host's directory of guest sockets
	// (HostDir/instances/NAME/{qmp,qga}.sock); host role only.
	HostDir string
	// WorkDir holds temporary fleecing images and NBD sockets; host role only.
	WorkDir string
	// WriteRoots are the directories WriteDisk may write image files under
	// (a restore's volume files and instance disks); symlinks are followed
	// before the check. Nil: DefaultWriteRoots.
	WriteRoots []string
	// Discoverer is the cloud; control role only.
	Discoverer Discoverer
	// Cloud is the cloud client restores and clones use (control role);
	// nil: the CloudDiscoverer's client.
	Cloud *cloud.Client
	// CephConf is the ceph.conf of the cluster holding rbd: disks; data role.
	CephConf string
	// Libvirt is the host worker's connection to libvirtd on a libvirt
	// compute node (a Nova compute host): guests' agents and libvirt:
	// disks go through it. Nil: the socket layout under HostDir.
	Libvirt *libvirt.Conn
	// Host is the host worker's compute host (host.Driver); nil: the
	// libvirt driver on Libvirt when set, else the socket layout under
	// HostDir when set, else none (not a host worker).
	Host host.Driver
	// LockDir holds the guests' lock files on a libvirt host
	// (libvirt.DefaultLockDir when empty).
	LockDir string
	// Freezes, when set, is where the host driver records every freeze
	// for the watchdog (worker: <host dir>/freezes or <work dir>/freezes).
	Freezes *freezerec.Dir
	Log     *slog.Logger
	// Temporal is the worker's client, for the semaphore activities
	// (AcquirePermits, ClosedRuns); control role. Nil: AcquirePermits
	// grants everything at once (unit tests and test workers).
	Temporal client.Client
	// Metrics receives what the activities measure (committed backups'
	// figures, freeze windows, copies, thaws, verify failures); nil
	// records nothing.
	Metrics *metrics.Metrics
}

// Activities are Raksha's activities. One value serves every role; each
// worker registers it and serves the queues of its roles.
type Activities struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	repos    map[string]*repo.Repository
	agents   map[string]*guest.Client       // instance → agent client (holds the guest's lock)
	freezes  map[string]*guest.FreezeHandle // instance → freeze in effect
	thawed   map[string]thawedFreeze        // instance → its last thaw, for a retried Thaw
	rbdConn  *rbd.Conn
	projects map[string]*cloud.Client // project → client scoped to it
}

// NewHostDriver returns the host driver cfg describes: libvirt's on
// cfg.Libvirt, else the socket layout's under cfg.HostDir, else nil (not a
// host worker).
func NewHostDriver(cfg Config) host.Driver {
	switch {
	case cfg.Libvirt != nil:
		return libvirt.NewDriver(cfg.Libvirt, libvirt.DriverOptions{LockDir: cfg.LockDir, WorkDir: cfg.WorkDir, Log: cfg.Log, Freezes: cfg.Freezes})
	case cfg.HostDir != "":
		return socket.New(socket.Options{HostDir: cfg.HostDir, WorkDir: cfg.WorkDir, Log: cfg.Log, Freezes: cfg.Freezes})
	}
	return nil
}

// New returns the activities of a worker.
func New(cfg Config) *Activities {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Host == nil {
		cfg.Host = NewHostDriver(cfg)
	}
	if cfg.WriteRoots == nil {
		cfg.WriteRoots = DefaultWriteRoots(cfg)
	}
	return &Activities{cfg: cfg, log: cfg.Log, repos: map[string]*repo.Repository{},
		agents: map[string]*guest.Client{}, freezes: map[string]*guest.FreezeHandle{}, thawed: map[string]thawedFreeze{},
		projects: map[string]*cloud.Client{}}
}

func invalid(format string, args ...any) error {
	return temporal.NewNonRetryableApplicationError(fmt.Sprintf(format, args...), ErrInvalid, nil)
}

// repo opens (once) the repository with id.
func (a *Activities) repo(ctx context.Context, id string) (*repo.Repository, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := a.repos[id]; ok {
		return r, nil
	}
	rc, ok := a.cfg.Repos[id]
	if !ok {
		return nil, invalid("repository %q is not in this worker's registry", id)
	}
	pw := ""
	if rc.PasswordFile != "" {
		data, err := os.ReadFile(rc.PasswordFile)
		if err != nil {
			return nil, invalid("repository %q: password file: %v", id, err)
		}
		pw = strings.TrimRight(string(data), "\r\n")
	}
	be, err := open.Open(ctx, rc.URL, open.Options{S3Endpoint: rc.S3Endpoint, S3PathStyle: true, Log: a.log})
	if err != nil {
		return nil, invalid("repository %q: %v", id, err)
	}
	if rc.Encryption != "" && rc.Encryption != "required" {
		return nil, invalid("repository %q: encryption %q: the only setting is required", id, rc.Encryption)
	}
	r, err := repo.Open(ctx, be, pw, repo.Options{Log: a.log, RequireEncryption: rc.Encryption == "required"})
	if err != nil {
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("repository %q: %v", id, err), ErrUnauthorized, err)
	}
	a.repos[id] = r
	return r, nil
}

// Shutdown releases every connection and lock the activities hold; frozen
// guests are thawed first. (A function, not a method: every exported method
// of Activities is registered as an activity.)
func Shutdown(ctx context.Context, a *Activities) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for inst, h := range a.freezes {
		if _, err := h.Thaw(ctx); err != nil {
			a.log.Error("thaw on shutdown failed", "instance", inst, "err", err)
		}
	}
	for _, c := range a.agents {
		c.Close()
	}
	if a.cfg.Host != nil {
		a.cfg.Host.Close()
	}
	if a.rbdConn != nil {
		a.rbdConn.Close()
	}
}

// logger is the activities' logger with the ids of the activity ctx
// belongs to (workflow, run, activity, type, attempt), so that every line
// an activity writes says which run it is of.
func (a *Activities) logger(ctx context.Context) *slog.Logger {
	return temporalx.ActivityLogger(ctx, a.log)
}
