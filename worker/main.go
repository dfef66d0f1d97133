// Command raksha-worker runs Raksha's Temporal workers for one or more roles:
// control (workflows and cloud/repository activities on raksha-control), data
// (disk copies on raksha-data) and host (freeze, thaw, checkpoints and local
// copies on raksha-host-<host>).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/worker"
	"gopkg.in/yaml.v3"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/freezerec"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/metrics"
	"github.com/raksha-backup/raksha/internal/temporalx"
	"github.com/raksha-backup/raksha/internal/watchdog"
	"github.com/raksha-backup/raksha/workflows"
)

// Config is the worker's configuration file (YAML); flags override it.
type Config struct {
	Temporal struct {
		Address   string        `yaml:"address"`
		Namespace string        `yaml:"namespace"`
		TLS       temporalx.TLS `yaml:"tls"`
	} `yaml:"temporal"`
	Roles   []string `yaml:"roles"`
	Host    string   `yaml:"host"`
	HostDir string   `yaml:"host_dir"`
	WorkDir string   `yaml:"work_dir"`
	// LibvirtURI makes a host worker reach its guests through libvirtd
	// (a Nova compute node): "qemu:///system", or with ?socket=PATH.
	LibvirtURI string `yaml:"libvirt_uri"`
	// LockDir holds the guests' lock files on a libvirt host (default
	// /run/raksha/libvirt-locks; `raksha disk backup libvirt:` uses the same).
	LockDir string `yaml:"lock_dir"`
	// FreezeDir holds the host worker's freeze records, which its watchdog
	// serves (default <host_dir>/freezes on the socket layout,
	// <work_dir>/freezes on libvirt).
	FreezeDir string `yaml:"freeze_dir"`
	// Cloud names a clouds.yaml entry; empty: OS_* variables.
	Cloud string `yaml:"cloud"`
	// HostDriver (control role) is how the host workers reach guests, and
	// so the locators discovery gives: "libvirt" (Nova compute nodes) or
	// "socket" (the lab's socket layout, the default).
	HostDriver string `yaml:"host_driver"`
	// RBDVolumes (control role) says who reads volumes Cinder keeps in
	// RBD: "ceph" (the default: data workers, from RBD snapshots, with
	// ceph_conf) or "host" (the host workers, through the hypervisor, as
	// any other volume: for deployments that give Raksha no Ceph access).
	RBDVolumes string `yaml:"rbd_volumes"`
	// Repositories is the registry: id → URL and password file.
	Repositories map[string]activities.RepoConfig `yaml:"repositories"`
	// CephConf is the ceph.conf of the cluster holding rbd: disks (data role).
	CephConf string `yaml:"ceph_conf"`
	// MaxCopies caps concurrent disk copies on this worker (default 4).
	MaxCopies int `yaml:"max_copies"`
	// WriteRoots are the directories a restore may write image files under
	// on this worker (default activities.DefaultWriteRoots: the host dir
	// and the lab's volumes beside it, or Nova's instances and mount
	// directories on libvirt; none on a data worker).
	WriteRoots []string `yaml:"write_roots"`
	// MetricsAddress is where the worker serves /metrics and /healthz
	// (HOST:PORT, e.g. 127.0.0.1:9464); empty: not served.
	MetricsAddress string `yaml:"metrics_address"`
	// LogFormat is "text" (the default) or "json".
	LogFormat string `yaml:"log_format"`
}

func main() {
	log, _ := newLogger(os.Stderr, "text")
	if err := run(log, os.Args[1:], os.Getenv); err != nil {
		log.Error("raksha-worker failed", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, args []string, getenv func(string) string) error {
	if len(args) > 0 && args[0] == watchdog.Subcommand {
		return watchdog.Main(args[1:])
	}
	fs := flag.NewFlagSet("raksha-worker", flag.ContinueOnError)
	cfgFile := fs.String("config", getenv("RAKSHA_WORKER_CONFIG"), "YAML configuration file")
	roles := fs.String("roles", "", "comma-separated roles: control, data, host")
	host := fs.String("host", "", "compute host name this host worker serves (host role)")
	hostDir := fs.String("host-dir", "", "directory with instances/NAME/{qmp,qga}.sock (host role)")
	workDir := fs.String("work-dir", "", "directory for temporary fleecing images and backup jobs' sockets (host role)")
	libvirtURI := fs.String("libvirt-uri", "", "reach guests through libvirtd at this URI, e.g. qemu:///system (host role on a Nova compute node)")
	hostDriver := fs.String("host-driver", "", "control role: how host workers reach guests, libvirt (Nova compute nodes) or socket (the lab's layout; default)")
	rbdVolumes := fs.String("rbd-volumes", "", "control role: who reads RBD volumes, ceph (data workers from RBD snapshots; default) or host (host workers through the hypervisor, no Ceph access needed)")
	freezeDir := fs.String("freeze-dir", "", "host role: directory of the freeze records its watchdog serves (default HOST_DIR/freezes, or WORK_DIR/freezes on libvirt)")
	lockDir := fs.String("lock-dir", "", "directory of the guests' lock files on a libvirt host (default "+libvirt.DefaultLockDir+")")
	address := fs.String("temporal", "", "Temporal frontend HOST:PORT (default TEMPORAL_ADDRESS, the TEMPORAL_PROFILE of the Temporal config file, or 127.0.0.1:7233)")
	namespace := fs.String("namespace", "", "Temporal namespace (default TEMPORAL_NAMESPACE, the profile's, or \"default\")")
	metricsAddress := fs.String("metrics-address", "", "serve /metrics (Prometheus) and /healthz on HOST:PORT, e.g. 127.0.0.1:9464 (default: off)")
	logFormat := fs.String("log-format", "", "log format: text (default) or json")
	tlsCert := fs.String("tls-cert", "", "client certificate for mutual TLS to Temporal")
	tlsKey := fs.String("tls-key", "", "key of the client certificate")
	tlsCA := fs.String("tls-ca", "", "CA certificate that signs Temporal's server certificate")
	tlsName := fs.String("tls-server-name", "", "name to check in Temporal's server certificate")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var cfg Config
	if *cfgFile != "" {
		data, err := os.ReadFile(*cfgFile)
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil {
			return fmt.Errorf("config %s: %w", *cfgFile, err)
		}
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	if *roles != "" {
		cfg.Roles = strings.Split(*roles, ",")
	}
	set(&cfg.Host, *host)
	set(&cfg.HostDir, *hostDir)
	set(&cfg.WorkDir, *workDir)
	set(&cfg.LibvirtURI, *libvirtURI)
	set(&cfg.LockDir, *lockDir)
	set(&cfg.FreezeDir, *freezeDir)
	set(&cfg.HostDriver, *hostDriver)
	set(&cfg.RBDVolumes, *rbdVolumes)
	if cfg.RBDVolumes != "" && cfg.RBDVolumes != "ceph" && cfg.RBDVolumes != "host" {
		return fmt.Errorf("rbd volumes %q: want ceph or host", cfg.RBDVolumes)
	}
	if cfg.HostDriver != "" && cfg.HostDriver != "libvirt" && cfg.HostDriver != "socket" {
		return fmt.Errorf("host driver %q: want libvirt or socket", cfg.HostDriver)
	}
	set(&cfg.Temporal.Address, *address)
	set(&cfg.Temporal.Namespace, *namespace)
	set(&cfg.Temporal.TLS.CertFile, *tlsCert)
	set(&cfg.Temporal.TLS.KeyFile, *tlsKey)
	set(&cfg.Temporal.TLS.CAFile, *tlsCA)
	set(&cfg.Temporal.TLS.ServerName, *tlsName)
	set(&cfg.MetricsAddress, *metricsAddress)
	set(&cfg.LogFormat, *logFormat)
	if cfg.LogFormat != "" {
		l, err := newLogger(os.Stderr, cfg.LogFormat)
		if err != nil {
			return err
		}
		log = l
	}
	topts, err := temporalOptions(&cfg, getenv)
	if err != nil {
		return err
	}
	if cfg.MaxCopies <= 0 {
		cfg.MaxCopies = 4
	}
	if len(cfg.Roles) == 0 {
		return errors.New("no roles: give --roles control,data,host or roles: in the config")
	}
	has := map[string]bool{}
	for _, r := range cfg.Roles {
		r = strings.TrimSpace(r)
		if r != "control" && r != "data" && r != "host" {
			return fmt.Errorf("unknown role %q (control, data, host)", r)
		}
		has[r] = true
	}
	if has["host"] && (cfg.Host == "" || (cfg.HostDir == "" && cfg.LibvirtURI == "")) {
		return errors.New("the host role needs --host, and --libvirt-uri (a libvirt compute node) or --host-dir (the socket layout)")
	}
	if cfg.HostDir != "" && cfg.LibvirtURI != "" {
		return errors.New("give --libvirt-uri or --host-dir, not both: a host worker reaches its guests one way")
	}
	if cfg.LockDir == "" {
		cfg.LockDir = libvirt.DefaultLockDir
	}
	if cfg.WorkDir == "" {
		cfg.WorkDir = os.TempDir()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var tc atomic.Pointer[client.Client] // for /healthz, once dialled
	mx, err := serveMetrics(ctx, log, cfg.MetricsAddress, &tc)
	if err != nil {
		return err
	}
	defer mx.Close(context.Background())
	acfg := activities.Config{Repos: cfg.Repositories, HostDir: cfg.HostDir, WorkDir: cfg.WorkDir, CephConf: cfg.CephConf, LockDir: cfg.LockDir, Log: log, Metrics: mx,
		WriteRoots: cfg.WriteRoots}
	if has["control"] {
		ccfg := cloud.ConfigFromEnv(getenv)
		if cfg.Cloud != "" {
			ccfg.Cloud = cfg.Cloud
		}
		ccfg.HostDriver = cfg.HostDriver
		ccfg.RBDVolumes = cfg.RBDVolumes
		ccfg.Log = log
		cl, err := cloud.Connect(ctx, ccfg)
		if err != nil {
			return fmt.Errorf("connect to the cloud: %w", err)
		}
		acfg.Discoverer = &activities.CloudDiscoverer{Client: cl}
		acfg.Cloud = cl
	}
	if has["host"] && cfg.LibvirtURI != "" {
		lc, err := libvirt.Dial(ctx, cfg.LibvirtURI, libvirt.Options{Logger: log})
		if err != nil {
			return fmt.Errorf("host role: %w", err)
		}
		defer lc.Close()
		acfg.Libvirt = lc
	}
	if has["host"] {
		if err := startWatchdog(ctx, log, &cfg, &acfg); err != nil {
			return fmt.Errorf("host role: %w", err)
		}
		acfg.Host = activities.NewHostDriver(acfg)
	}
	if acfg.Host != nil {
		// A guest left frozen by a dead worker stays frozen forever: thaw
		// it now. On a compute node with many domains (some booting, some
		// without an agent) the sweep takes a while, so there it runs
		// beside the worker rather than before it: a freeze the worker is
		// asked for meanwhile holds its guest's lock, and the sweep skips
		// that guest. The lab's socket layout is swept before the worker
		// starts.
		sweep := func() {
			res, err := acfg.Host.ThawOrphans(ctx, nil, guest.OrphanOptions{Logger: log, PerGuestTimeout: 5 * time.Second, Parallel: 8})
			if err != nil {
				log.Warn("thawing orphaned freezes", "err", err)
			}
			for _, r := range res {
				if r.WasFrozen || r.Err != nil {
					log.Info("orphan check", "result", fmt.Sprintf("%+v", r))
				}
				if r.WasFrozen && r.Err == nil {
					mx.Thawed(metrics.ThawedByOrphanSweep, 1)
				}
			}
			log.Info("orphan sweep done", "guests", len(res))
		}
		if acfg.Libvirt != nil {
			go sweep()
		} else {
			sweep()
		}
	}
	topts.Logger, topts.MetricsHandler = newTemporalLogger(log), mx.TemporalHandler()
	c, err := client.Dial(topts)
	if err != nil {
		return fmt.Errorf("connect to Temporal at %s: %w", topts.HostPort, err)
	}
	defer c.Close()
	tc.Store(&c)
	acfg.Temporal = c
	acts := activities.New(acfg)
	defer activities.Shutdown(context.Background(), acts)

	opts := worker.Options{WorkerStopTimeout: 30 * time.Second, MaxConcurrentActivityTaskPollers: activities.ActivityPollers,
		Interceptors: []interceptor.WorkerInterceptor{temporalx.AutoHeartbeat()}}
	var workers []worker.Worker
	if has["control"] {
		w := worker.New(c, activities.ControlQueue, opts)
		w.RegisterWorkflow(workflows.WorkloadBackup)
		w.RegisterWorkflow(workflows.CopyDisks)
		w.RegisterWorkflow(workflows.Semaphore)
		w.RegisterWorkflow(workflows.Restore)
		w.RegisterWorkflow(workflows.Clone)
		w.RegisterWorkflow(workflows.CloneDelete)
		w.RegisterWorkflow(workflows.RepositoryMaintenance)
		w.RegisterWorkflow(workflows.RestoreDrill)
		activities.RegisterRole(w, acts, activities.RoleControl)
		workers = append(workers, w)
	}
	if has["data"] {
		o := opts
		o.MaxConcurrentActivityExecutionSize = cfg.MaxCopies
		w := worker.New(c, activities.DataQueue, o)
		activities.RegisterRole(w, acts, activities.RoleData)
		workers = append(workers, w)
	}
	if has["host"] {
		o := opts
		o.MaxConcurrentActivityExecutionSize = cfg.MaxCopies + 16 // freezes and thaws must not queue behind copies
		w := worker.New(c, activities.HostQueue(cfg.Host), o)
		activities.RegisterRole(w, acts, activities.RoleHost)
		workers = append(workers, w)
	}
	for _, w := range workers {
		if err := w.Start(); err != nil {
			return fmt.Errorf("start worker: %w", err)
		}
	}
	log.Info("raksha-worker running", "roles", cfg.Roles, "host", cfg.Host, "temporal", topts.HostPort, "namespace", topts.Namespace)
	<-ctx.Done()
	log.Info("stopping: draining running activities")
	for _, w := range workers {
		w.Stop()
	}
	return nil
}

// startWatchdog opens the host worker's freeze records (every freeze is
// recorded there before it is sent) and keeps a watchdog process serving
// them: it thaws a guest at its freeze deadline if this worker dies
// without thawing it (package watchdog).
func startWatchdog(ctx context.Context, log *slog.Logger, cfg *Config, acfg *activities.Config) error {
	if cfg.FreezeDir == "" {
		if cfg.LibvirtURI != "" {
			cfg.FreezeDir = filepath.Join(cfg.WorkDir, "freezes")
		} else {
			cfg.FreezeDir = filepath.Join(cfg.HostDir, "freezes")
		}
	}
	dir, err := freezerec.Open(cfg.FreezeDir)
	if err != nil {
		return err
	}
	acfg.Freezes = dir
	go watchdog.Supervise(ctx, log, func() (*exec.Cmd, error) { return watchdog.StartFor(dir.Path()) })
	return nil
}
