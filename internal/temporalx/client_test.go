package temporalx

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// env is a fake environment for ClientOptions.
func env(vars map[string]string) Env {
	return Env{Get: func(k string) string { return vars[k] }, List: func() []string {
		var out []string
		for k, v := range vars {
			out = append(out, k+"="+v)
		}
		return out
	}}
}

const profiles = `
[profile.default]
address = "file-default:7233"
namespace = "ns-default"

[profile.prod]
address = "file-prod:7233"
namespace = "ns-prod"
[profile.prod.tls]
server_name = "prod.example"
`

// TestClientOptionsPrecedence: defaults < the config file's profile < the
// TEMPORAL_* variables < explicit settings (flags, worker YAML).
func TestClientOptionsPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "temporal.toml")
	if err := os.WriteFile(file, []byte(profiles), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "none.toml")
	for _, tc := range []struct {
		name             string
		vars             map[string]string
		set              Settings
		addr, ns, server string // server: the TLS server name, "" for no TLS
	}{
		{name: "defaults", vars: map[string]string{"TEMPORAL_CONFIG_FILE": missing}, addr: DefaultAddress, ns: DefaultNamespace},
		{name: "file default profile", vars: map[string]string{"TEMPORAL_CONFIG_FILE": file}, addr: "file-default:7233", ns: "ns-default"},
		{name: "TEMPORAL_PROFILE", vars: map[string]string{"TEMPORAL_CONFIG_FILE": file, "TEMPORAL_PROFILE": "prod"},
			addr: "file-prod:7233", ns: "ns-prod", server: "prod.example"},
		{name: "variables over the profile", vars: map[string]string{"TEMPORAL_CONFIG_FILE": file, "TEMPORAL_PROFILE": "prod",
			"TEMPORAL_ADDRESS": "env:7233", "TEMPORAL_TLS_SERVER_NAME": "env.example"},
			addr: "env:7233", ns: "ns-prod", server: "env.example"},
		{name: "variables alone", vars: map[string]string{"TEMPORAL_CONFIG_FILE": missing, "TEMPORAL_ADDRESS": "env:7233", "TEMPORAL_NAMESPACE": "ns-env"},
			addr: "env:7233", ns: "ns-env"},
		{name: "explicit over variables", vars: map[string]string{"TEMPORAL_CONFIG_FILE": file, "TEMPORAL_ADDRESS": "env:7233", "TEMPORAL_NAMESPACE": "ns-env",
			"TEMPORAL_TLS_SERVER_NAME": "env.example"},
			set:  Settings{Address: "flag:7233", TLS: TLS{ServerName: "flag.example"}},
			addr: "flag:7233", ns: "ns-env", server: "flag.example"},
		{name: "explicit namespace only", vars: map[string]string{"TEMPORAL_CONFIG_FILE": file}, set: Settings{Namespace: "ns-flag"},
			addr: "file-default:7233", ns: "ns-flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts, err := ClientOptions(tc.set, env(tc.vars))
			if err != nil {
				t.Fatal(err)
			}
			if opts.HostPort != tc.addr || opts.Namespace != tc.ns {
				t.Errorf("address %q namespace %q, want %q %q", opts.HostPort, opts.Namespace, tc.addr, tc.ns)
			}
			tls := opts.ConnectionOptions.TLS
			switch {
			case tc.server == "" && tls != nil:
				t.Errorf("TLS on (server name %q), want off", tls.ServerName)
			case tc.server != "" && (tls == nil || tls.ServerName != tc.server):
				t.Errorf("TLS %+v, want server name %q", tls, tc.server)
			}
		})
	}
}

// TestClientOptionsErrors: a profile that is named but missing, and a bad
// explicit TLS setting, are errors naming what is wrong.
func TestClientOptionsErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "temporal.toml")
	os.WriteFile(file, []byte(profiles), 0o600)
	_, err := ClientOptions(Settings{}, env(map[string]string{"TEMPORAL_CONFIG_FILE": file, "TEMPORAL_PROFILE": "staging"}))
	if err == nil || !strings.Contains(err.Error(), "staging") {
		t.Errorf("missing profile: %v, want an error naming it", err)
	}
	_, err = ClientOptions(Settings{TLS: TLS{CertFile: filepath.Join(dir, "cert.pem")}}, env(map[string]string{"TEMPORAL_CONFIG_FILE": file}))
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("client certificate without a key: %v, want an error", err)
	}
}
