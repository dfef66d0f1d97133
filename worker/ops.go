package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"

	"go.temporal.io/sdk/client"

	"github.com/raksha-backup/raksha/internal/metrics"
	"github.com/raksha-backup/raksha/internal/temporalx"
)

// serveMetrics serves /metrics and /healthz on addr (off when empty: it
// returns nil, and nothing is recorded) until ctx ends. /healthz is healthy
// once *tc holds the worker's Temporal client and that answers its health
// check.
func serveMetrics(ctx context.Context, log *slog.Logger, addr string, tc *atomic.Pointer[client.Client]) (*metrics.Metrics, error) {
	if addr == "" {
		return nil, nil
	}
	m, err := metrics.New()
	if err != nil {
		return nil, err
	}
	health := func(ctx context.Context) error {
		c := tc.Load()
		if c == nil {
			return errors.New("not connected to Temporal yet")
		}
		if _, err := (*c).CheckHealth(ctx, &client.CheckHealthRequest{}); err != nil {
			return fmt.Errorf("health check of Temporal: %w", err)
		}
		return nil
	}
	at, err := m.Serve(ctx, addr, health, log)
	if err != nil {
		return nil, err
	}
	log.Info("serving /metrics and /healthz", "metrics_address", at.String())
	return m, nil
}

// temporalOptions are the worker's Temporal client options: the standard
// environment (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_TLS_*, a
// TEMPORAL_PROFILE of the config file; temporalx.ClientOptions) under the
// worker's YAML and flags.
func temporalOptions(cfg *Config, getenv func(string) string) (client.Options, error) {
	return temporalx.ClientOptions(temporalx.Settings{Address: cfg.Temporal.Address, Namespace: cfg.Temporal.Namespace, TLS: cfg.Temporal.TLS},
		temporalx.Env{Get: getenv, List: os.Environ})
}
