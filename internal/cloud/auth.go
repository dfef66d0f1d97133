package cloud

import (
	"context"
	"log/slog"

	"github.com/gophercloud/gophercloud/v2"
)

// Authenticate authenticates as cfg says (clouds.yaml or OS_* settings, as
// Connect does) and returns the provider, which renews its token by itself,
// and the endpoint options (region, interface) for the catalog lookups of
// services Connect does not know, such as raksha-api's. It needs only
// Keystone: the token must be scoped to a project.
func Authenticate(ctx context.Context, cfg Config) (*gophercloud.ProviderClient, gophercloud.EndpointOpts, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, log: cfg.Log}
	if err := c.authOptions(); err != nil {
		return nil, gophercloud.EndpointOpts{}, err
	}
	if err := c.authenticate(ctx); err != nil {
		return nil, gophercloud.EndpointOpts{}, err
	}
	return c.prov, c.eo, nil
}
