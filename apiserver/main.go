// Command raksha-api is the tenants' HTTP JSON API (package api) in front
// of Temporal and the repositories: Keystone tokens, an oslo-style policy,
// versioned /v1 routes and an OpenAPI document at /v1/openapi.json.
//
//	raksha-api --config /etc/raksha/api.yaml
//
// The configuration file (YAML, unknown keys refused):
//
//	listen: 127.0.0.1:8779          # HOST:PORT
//	keystone:                       # the API's service user
//	  auth_url: https://keystone.example:5000/v3
//	  username: raksha
//	  password_file: /etc/raksha/keystone-password
//	  user_domain_name: Default
//	  project_name: service
//	  project_domain_name: Default
//	temporal: {address: temporal:7233, namespace: default, tls: {...}}
//	cloud: raksha                   # clouds.yaml entry of the cloud user that
//	                                # discovers workloads (GET /v1/workloads), as
//	                                # the control worker's; empty: OS_* variables,
//	                                # and no OS_CLOUD/OS_AUTH_URL either: no discovery (501)
//	repositories: {main: {url: ..., password_file: ...}}   # as worker.yaml
//	default_repository: main
//	policy_file: /etc/raksha/api-policy.yaml   # overrides of api.DefaultRules
//	quotas:                         # api.Quotas, enforced at backup start (413)
//	  default: {backups: 100, bytes: 1099511627776}   # omitted or negative: no limit
//	  projects: {PROJECT_ID: {backups: 10}}           # a missing field takes the default's
//	tenant_policies:                # api.PolicyLimits; absent: tenants publish no policy
//	  {min_interval: 1h, max_expire_after: 720h, max_per_project: 5}
//	max_file_requests: 8            # file listings and downloads at once (429 beyond)
//	token_cache_ttl: 30s
//	log_format: text                # or json
//
// Temporal's settings also come from TEMPORAL_* and the Temporal config
// file's profile, as for raksha-worker.
//
// GET /healthz (no token) answers 200 "ok" while Temporal answers, and 503
// naming the error when it does not: for load balancers and health checks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.temporal.io/sdk/client"
	"gopkg.in/yaml.v3"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/temporalx"
)

// Config is raksha-api's configuration file.
type Config struct {
	Listen   string `yaml:"listen"`
	Keystone struct {
		AuthURL           string `yaml:"auth_url"`
		Username          string `yaml:"username"`
		PasswordFile      string `yaml:"password_file"`
		UserDomainName    string `yaml:"user_domain_name"`
		ProjectName       string `yaml:"project_name"`
		ProjectDomainName string `yaml:"project_domain_name"`
	} `yaml:"keystone"`
	Temporal struct {
		Address   string        `yaml:"address"`
		Namespace string        `yaml:"namespace"`
		TLS       temporalx.TLS `yaml:"tls"`
	} `yaml:"temporal"`
	// Cloud names the clouds.yaml entry of the cloud user that discovers
	// workloads (empty: OS_* variables).
	Cloud             string                           `yaml:"cloud"`
	Repositories      map[string]activities.RepoConfig `yaml:"repositories"`
	DefaultRepository string                           `yaml:"default_repository"`
	PolicyFile        string                           `yaml:"policy_file"`
	Quotas            api.Quotas                       `yaml:"quotas"`
	MaxFileRequests   int                              `yaml:"max_file_requests"`
	TenantPolicies    *api.PolicyLimits                `yaml:"tenant_policies"`
	TokenCacheTTL     time.Duration                    `yaml:"token_cache_ttl"`
	LogFormat         string                           `yaml:"log_format"`
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log, os.Args[1:], os.Getenv); err != nil {
		log.Error("raksha-api failed", "err", err)
		os.Exit(1)
	}
}

// loadConfig reads and checks the configuration file.
func loadConfig(path string) (*Config, error) {
	var cfg Config
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	k := cfg.Keystone
	switch {
	case k.AuthURL == "" || k.Username == "" || k.PasswordFile == "" || k.ProjectName == "":
		return nil, fmt.Errorf("config %s: keystone needs auth_url, username, password_file and project_name", path)
	case len(cfg.Repositories) == 0:
		return nil, fmt.Errorf("config %s: no repositories", path)
	case cfg.DefaultRepository != "" && cfg.Repositories[cfg.DefaultRepository].URL == "":
		return nil, fmt.Errorf("config %s: default_repository %q is not in repositories", path, cfg.DefaultRepository)
	case cfg.LogFormat != "" && cfg.LogFormat != "text" && cfg.LogFormat != "json":
		return nil, fmt.Errorf("config %s: log_format %q: text or json", path, cfg.LogFormat)
	}
	if err := cfg.Quotas.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if cfg.TenantPolicies != nil {
		if err := cfg.TenantPolicies.Validate(); err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8779"
	}
	return &cfg, nil
}

func run(ctx context.Context, log *slog.Logger, args []string, getenv func(string) string) error {
	fs := flag.NewFlagSet("raksha-api", flag.ContinueOnError)
	cfgFile := fs.String("config", getenv("RAKSHA_API_CONFIG"), "YAML configuration file (env RAKSHA_API_CONFIG)")
	listen := fs.String("listen", "", "HOST:PORT to serve on (default the file's listen, else 127.0.0.1:8779)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cfgFile == "" {
		return errors.New("no configuration: give --config FILE")
	}
	cfg, err := loadConfig(*cfgFile)
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	if cfg.LogFormat == "json" {
		log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	pw, err := os.ReadFile(cfg.Keystone.PasswordFile)
	if err != nil {
		return fmt.Errorf("keystone password file: %w", err)
	}
	policy, err := api.LoadPolicy(cfg.PolicyFile)
	if err != nil {
		return err
	}
	topts, err := temporalx.ClientOptions(temporalx.Settings{Address: cfg.Temporal.Address, Namespace: cfg.Temporal.Namespace, TLS: cfg.Temporal.TLS},
		temporalx.Env{Get: getenv, List: os.Environ})
	if err != nil {
		return err
	}
	topts.Logger = log.With("component", "temporal-client")
	tc, err := client.DialContext(ctx, topts)
	if err != nil {
		return fmt.Errorf("connect to Temporal at %s: %w", topts.HostPort, err)
	}
	defer tc.Close()
	var workloads api.WorkloadSource
	if ccfg := cloud.ConfigFromEnv(getenv); cfg.Cloud != "" || ccfg.Cloud != "" || ccfg.AuthURL != "" {
		if cfg.Cloud != "" {
			ccfg.Cloud = cfg.Cloud
		}
		ccfg.Log = log
		cl, err := cloud.Connect(ctx, ccfg)
		if err != nil {
			return fmt.Errorf("connect to the cloud: %w", err)
		}
		workloads = &api.CloudWorkloads{Client: cl}
	} else {
		log.Warn("no cloud configured (cloud, OS_CLOUD, OS_AUTH_URL): GET /v1/workloads answers 501")
	}
	k := cfg.Keystone
	srv, err := api.New(api.Config{
		Identity: api.NewKeystone(api.ServiceCredentials{AuthURL: k.AuthURL, Username: k.Username,
			Password: strings.TrimRight(string(pw), "\r\n"), UserDomainName: k.UserDomainName,
			ProjectName: k.ProjectName, ProjectDomainName: k.ProjectDomainName}, nil),
		AuthURL: k.AuthURL, Temporal: tc, Repos: api.NewRegistry(cfg.Repositories, log),
		DefaultRepository: cfg.DefaultRepository, Policy: policy, CacheTTL: cfg.TokenCacheTTL, Log: log,
		Workloads: workloads, Quotas: &cfg.Quotas, MaxFileRequests: cfg.MaxFileRequests,
		PolicyLimits: cfg.TenantPolicies,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	hs := &http.Server{Handler: withHealth(srv, tc), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute,
		WriteTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	log.Info("raksha-api serving", "listen", ln.Addr().String(), "keystone", k.AuthURL, "temporal", topts.HostPort)
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("shut down: %w", err)
	}
	log.Info("raksha-api stopped")
	return nil
}

// withHealth serves GET /healthz without a token in front of api: 200 while
// Temporal's health check passes, 503 with the error otherwise. Every other
// request goes to api.
func withHealth(api http.Handler, tc client.Client) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if _, err := tc.CheckHealth(ctx, &client.CheckHealthRequest{}); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "temporal: %v\n", err)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/", api)
	return mux
}
