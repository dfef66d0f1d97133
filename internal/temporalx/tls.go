// Package temporalx holds what the worker and the CLI share about reaching
// Temporal: TLS (mutual or server-only) and the setup of Raksha's search
// attributes on a cluster.
package temporalx

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/sdk/client"
)

// TLS is how to reach a Temporal frontend over TLS. Paths, never keys.
type TLS struct {
	// CertFile and KeyFile are the client certificate for mutual TLS.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// CAFile verifies the server (system roots when empty).
	CAFile string `yaml:"ca_file"`
	// ServerName overrides the name checked in the server's certificate.
	ServerName string `yaml:"server_name"`
	// Enabled turns TLS on with system roots when no file is given.
	Enabled bool `yaml:"enabled"`
}

// Config returns the tls.Config, or nil when TLS is off.
func (t TLS) Config() (*tls.Config, error) {
	if !t.Enabled && t.CertFile == "" && t.KeyFile == "" && t.CAFile == "" && t.ServerName == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, errors.New("temporal TLS: give both the client certificate and its key, or neither")
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("temporal TLS: client certificate %s: %w", t.CertFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("temporal TLS: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("temporal TLS: %s holds no PEM certificate", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// SearchAttributes are Raksha's custom search attributes (all Keyword).
// (workflows.SearchAttributeNames lists the same; a test keeps them equal.)
var SearchAttributes = []string{"RakshaWorkload", "RakshaProject", "RakshaOperation", "RakshaPolicy", "RakshaBackup", "RakshaDrill"}

// EnsureSearchAttributes registers the search attributes Raksha uses in the
// client's namespace, leaving those that exist alone. It returns the names
// it added.
func EnsureSearchAttributes(ctx context.Context, c client.Client, namespace string) ([]string, error) {
	op := c.OperatorService()
	have, err := op.ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: namespace})
	if err != nil {
		return nil, fmt.Errorf("list search attributes of namespace %s: %w", namespace, err)
	}
	add := map[string]enumspb.IndexedValueType{}
	for _, n := range SearchAttributes {
		if _, ok := have.GetCustomAttributes()[n]; !ok {
			add[n] = enumspb.INDEXED_VALUE_TYPE_KEYWORD
		}
	}
	if len(add) == 0 {
		return nil, nil
	}
	if _, err := op.AddSearchAttributes(ctx, &operatorservice.AddSearchAttributesRequest{Namespace: namespace, SearchAttributes: add}); err != nil {
		return nil, fmt.Errorf("add search attributes to namespace %s: %w", namespace, err)
	}
	var names []string
	for _, n := range SearchAttributes {
		if _, ok := add[n]; ok {
			names = append(names, n)
		}
	}
	return names, nil
}
