package temporalx

import (
	"fmt"
	"strings"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/envconfig"
)

// Defaults of the Temporal client when nothing sets them.
const (
	DefaultAddress   = "127.0.0.1:7233"
	DefaultNamespace = "default"
)

// Settings are explicit client settings: the worker's flags and YAML, or
// the CLI's flags. Empty fields leave what the environment says.
type Settings struct {
	Address   string
	Namespace string
	TLS       TLS
}

// Env is where ClientOptions reads the standard Temporal variables: Get
// looks one up ("" is unset), List lists all (for TEMPORAL_GRPC_META_*;
// nil: none).
type Env struct {
	Get  func(string) string
	List func() []string
}

// LookupEnv is envconfig.EnvLookup's: the variable, and whether it is set
// (not empty).
func (e Env) LookupEnv(k string) (string, bool) {
	if e.Get == nil {
		return "", false
	}
	v := e.Get(k)
	return v, v != ""
}

// Environ is envconfig.EnvLookup's: every variable as KEY=VALUE.
func (e Env) Environ() []string {
	if e.List == nil {
		return nil
	}
	return e.List()
}

// ClientOptions resolves the Temporal client's options the standard way,
// through the SDK's envconfig: a profile of the TOML config file
// (TEMPORAL_CONFIG_FILE, default the user's temporalio/temporal.toml;
// TEMPORAL_PROFILE, default "default"), then the variables over it
// (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS,
// TEMPORAL_TLS_CLIENT_CERT_PATH and _KEY_PATH, TEMPORAL_TLS_SERVER_CA_CERT_PATH,
// TEMPORAL_TLS_SERVER_NAME, TEMPORAL_GRPC_META_*, ...). Explicit settings
// override both: a non-empty Address or Namespace, and TLS when any of its
// fields is set (it then replaces the environment's TLS whole). What is
// still unset gets DefaultAddress and DefaultNamespace.
func ClientOptions(s Settings, env Env) (client.Options, error) {
	opts, err := envconfig.LoadClientOptions(envconfig.LoadClientOptionsRequest{EnvLookup: env})
	if err != nil {
		return client.Options{}, fmt.Errorf("temporal client settings from the environment (TEMPORAL_* variables, config file profile): %w", err)
	}
	if s.Address != "" {
		opts.HostPort = s.Address
	}
	if s.Namespace != "" {
		opts.Namespace = s.Namespace
	}
	if s.TLS != (TLS{}) {
		cfg, err := s.TLS.Config()
		if err != nil {
			return client.Options{}, err
		}
		opts.ConnectionOptions.TLS = cfg
		opts.ConnectionOptions.TLSDisabled = false
	}
	if strings.TrimSpace(opts.HostPort) == "" {
		opts.HostPort = DefaultAddress
	}
	if opts.Namespace == "" {
		opts.Namespace = DefaultNamespace
	}
	return opts, nil
}
