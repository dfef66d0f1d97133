// Package cloud is Raksha's only way to OpenStack, through gophercloud v2:
// authentication like the openstack CLI (clouds.yaml with OS_CLOUD, or OS_*
// variables), workload discovery, capture of the metadata needed to restore a
// server, and the actions backups and restores take (Cinder snapshots,
// volumes, server creation with remapping, stop/start, attach/detach).
//
// Every failed call returns an *Error whose Kind (ErrNotFound, ErrConflict,
// ErrUnauthorized, ErrQuotaExceeded, ErrUnavailable, ...) tells the
// workflows whether to retry. An expired token is renewed once,
// transparently; a refused renewal is ErrUnauthorized.
package cloud

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/config"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
)

// Default microversions: Nova 2.79 (server tags, embedded flavors with extra
// specs, delete_on_termination in attachments); Cinder 3.64 (volume_type_id;
// below 3.66 an in-use volume needs force=true to be snapshotted, which
// Raksha always asks for explicitly).
const (
	DefaultComputeMicroversion = "2.79"
	DefaultVolumeMicroversion  = "3.64"
)

// Config says how to reach and authenticate to a cloud, as the openstack CLI
// understands it. Either Cloud names an entry of clouds.yaml, or AuthURL and
// the credential fields are set. It holds a password: never log or persist it.
type Config struct {
	// Cloud is the clouds.yaml entry (OS_CLOUD); CloudsFile an explicit
	// clouds.yaml path (OS_CLIENT_CONFIG_FILE), else the CLI's search path.
	Cloud      string
	CloudsFile string

	AuthURL           string
	Username          string
	UserID            string
	Password          string
	ProjectName       string
	ProjectID         string
	UserDomainName    string
	UserDomainID      string
	ProjectDomainName string
	ProjectDomainID   string
	// Application credentials instead of a password.
	ApplicationCredentialID     string
	ApplicationCredentialSecret string

	// Region (OS_REGION_NAME) and Interface (OS_INTERFACE: public, internal,
	// admin) select endpoints in the catalog.
	Region    string
	Interface string

	// Microversions (OS_COMPUTE_API_VERSION, OS_VOLUME_API_VERSION); empty
	// means the defaults above.
	ComputeMicroversion string
	VolumeMicroversion  string

	// PollInterval is how often Wait* functions look; default one second.
	PollInterval time.Duration

	// HostDriver says how the host workers reach the compute hosts' guests,
	// and so which locators discovery gives host-local disks: "libvirt"
	// (libvirt:HOST/<server id>/vol-<volume id>, disk.eph<N> and, for a
	// server booted from an image, its root disk "disk": a Nova
	// compute node, or the lab on libvirt) or "socket" (qemu:
	// HOST/INSTANCE/NODE: the lab's socket layout); "" is "socket".
	HostDriver string
	// RBDVolumes says who reads volumes Cinder keeps in RBD: "ceph" or ""
	// (rbd:POOL/IMAGE locators, read by data workers from RBD snapshots)
	// or "host" (the host-local locator any other volume gets, read by
	// the host worker through the hypervisor: every backup then reads such
	// a volume in full, since a raw network disk keeps no dirty bitmaps).
	RBDVolumes string

	// HTTPClient, if set, carries every request (tests, proxies).
	HTTPClient *http.Client
	// Log receives debug logs of the calls; default: discard.
	Log *slog.Logger
}

// ConfigFromEnv reads the variables the openstack CLI reads.
func ConfigFromEnv(getenv func(string) string) Config {
	return Config{
		Cloud:                       getenv("OS_CLOUD"),
		CloudsFile:                  getenv("OS_CLIENT_CONFIG_FILE"),
		AuthURL:                     getenv("OS_AUTH_URL"),
		Username:                    getenv("OS_USERNAME"),
		UserID:                      getenv("OS_USER_ID"),
		Password:                    getenv("OS_PASSWORD"),
		ProjectName:                 firstNonEmpty(getenv("OS_PROJECT_NAME"), getenv("OS_TENANT_NAME")),
		ProjectID:                   firstNonEmpty(getenv("OS_PROJECT_ID"), getenv("OS_TENANT_ID")),
		UserDomainName:              getenv("OS_USER_DOMAIN_NAME"),
		UserDomainID:                getenv("OS_USER_DOMAIN_ID"),
		ProjectDomainName:           getenv("OS_PROJECT_DOMAIN_NAME"),
		ProjectDomainID:             getenv("OS_PROJECT_DOMAIN_ID"),
		ApplicationCredentialID:     getenv("OS_APPLICATION_CREDENTIAL_ID"),
		ApplicationCredentialSecret: getenv("OS_APPLICATION_CREDENTIAL_SECRET"),
		Region:                      getenv("OS_REGION_NAME"),
		Interface:                   getenv("OS_INTERFACE"),
		ComputeMicroversion:         getenv("OS_COMPUTE_API_VERSION"),
		VolumeMicroversion:          getenv("OS_VOLUME_API_VERSION"),
	}
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// Client is an authenticated connection to one project of a cloud. It is
// safe for concurrent use.
type Client struct {
	cfg  Config
	log  *slog.Logger
	ao   gophercloud.AuthOptions
	eo   gophercloud.EndpointOpts
	tls  *tls.Config
	prov *gophercloud.ProviderClient

	compute, volume, network, image, identity *gophercloud.ServiceClient
	orchestration                             *gophercloud.ServiceClient // nil without Heat

	projectID, projectName, userID string
	roles                          []string
}

// Connect authenticates and locates the services in the catalog. Nova,
// Cinder v3, Neutron and Glance are required; Heat is optional.
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ComputeMicroversion == "" {
		cfg.ComputeMicroversion = DefaultComputeMicroversion
	}
	if cfg.VolumeMicroversion == "" {
		cfg.VolumeMicroversion = DefaultVolumeMicroversion
	}
	c := &Client{cfg: cfg, log: cfg.Log}
	if err := c.authOptions(); err != nil {
		return nil, err
	}
	if err := c.connect(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// authOptions turns the Config into gophercloud's options.
func (c *Client) authOptions() error {
	cfg := c.cfg
	if cfg.Cloud != "" {
		opts := []clouds.ParseOption{clouds.WithCloudName(cfg.Cloud)}
		if cfg.CloudsFile != "" {
			opts = append(opts, clouds.WithLocations(cfg.CloudsFile))
		}
		if cfg.Region != "" {
			opts = append(opts, clouds.WithRegion(cfg.Region))
		}
		if cfg.Interface != "" {
			opts = append(opts, clouds.WithEndpointType(cfg.Interface))
		}
		ao, eo, tlsCfg, err := clouds.Parse(opts...)
		if err != nil {
			return &Error{Op: fmt.Sprintf("read cloud %q from clouds.yaml", cfg.Cloud), Kind: ErrBadRequest, Err: err, Msg: err.Error()}
		}
		c.ao, c.eo, c.tls = ao, eo, tlsCfg
	} else {
		if cfg.AuthURL == "" {
			return &Error{Op: "configure cloud", Kind: ErrBadRequest,
				Msg: "no cloud given: set OS_CLOUD (an entry of clouds.yaml) or OS_AUTH_URL with OS_USERNAME, OS_PASSWORD and OS_PROJECT_NAME"}
		}
		c.ao = gophercloud.AuthOptions{
			IdentityEndpoint: cfg.AuthURL, Username: cfg.Username, UserID: cfg.UserID, Password: cfg.Password,
			DomainName: cfg.UserDomainName, DomainID: cfg.UserDomainID,
			ApplicationCredentialID: cfg.ApplicationCredentialID, ApplicationCredentialSecret: cfg.ApplicationCredentialSecret,
		}
		if c.ao.DomainName == "" && c.ao.DomainID == "" && cfg.UserID == "" && cfg.ApplicationCredentialID == "" {
			c.ao.DomainID = "default"
		}
		switch {
		case cfg.ProjectID != "":
			c.ao.Scope = &gophercloud.AuthScope{ProjectID: cfg.ProjectID}
		case cfg.ProjectName != "":
			c.ao.Scope = &gophercloud.AuthScope{ProjectName: cfg.ProjectName, DomainName: cfg.ProjectDomainName, DomainID: cfg.ProjectDomainID}
			if cfg.ProjectDomainName == "" && cfg.ProjectDomainID == "" {
				c.ao.Scope.DomainID = "default"
			}
		}
		c.eo = gophercloud.EndpointOpts{Region: cfg.Region, Availability: availability(cfg.Interface)}
	}
	c.ao.AllowReauth = true
	return nil
}

func availability(iface string) gophercloud.Availability {
	switch strings.TrimSuffix(iface, "URL") {
	case "internal":
		return gophercloud.AvailabilityInternal
	case "admin":
		return gophercloud.AvailabilityAdmin
	}
	return gophercloud.AvailabilityPublic
}

// authenticate gets the provider (and its token) for c.ao and reads the
// token's project, user and roles.
func (c *Client) authenticate(ctx context.Context) error {
	var hc http.Client
	if c.cfg.HTTPClient != nil {
		hc = *c.cfg.HTTPClient
	}
	prov, err := newProvider(ctx, c.ao, hc, c.tls)
	if err != nil {
		return classify("authenticate to "+c.ao.IdentityEndpoint, err)
	}
	c.prov = prov
	return c.readToken()
}

func (c *Client) connect(ctx context.Context) error {
	if err := c.authenticate(ctx); err != nil {
		return err
	}
	prov := c.prov
	var err error
	newSvc := func(name string, f func(*gophercloud.ProviderClient, gophercloud.EndpointOpts) (*gophercloud.ServiceClient, error)) (*gophercloud.ServiceClient, error) {
		sc, err := f(prov, c.eo)
		if err != nil {
			return nil, &Error{Op: "find the " + name + " endpoint in the service catalog", Kind: ErrNotFound, Err: err, Msg: err.Error()}
		}
		return sc, nil
	}
	if c.compute, err = newSvc("compute (Nova)", openstack.NewComputeV2); err != nil {
		return err
	}
	c.compute.Microversion = c.cfg.ComputeMicroversion
	if c.volume, err = newSvc("block-storage v3 (Cinder)", openstack.NewBlockStorageV3); err != nil {
		return err
	}
	c.volume.Microversion = c.cfg.VolumeMicroversion
	if c.network, err = newSvc("network (Neutron)", openstack.NewNetworkV2); err != nil {
		return err
	}
	if c.image, err = newSvc("image (Glance)", openstack.NewImageV2); err != nil {
		return err
	}
	if c.identity, err = newSvc("identity (Keystone)", openstack.NewIdentityV3); err != nil {
		return err
	}
	if orch, err := openstack.NewOrchestrationV1(prov, c.eo); err == nil {
		c.orchestration = orch
	}
	c.log.Debug("connected to cloud", "auth_url", c.ao.IdentityEndpoint, "project", c.projectName, "admin", c.IsAdmin())
	return nil
}

// readToken takes the project, user and roles from the last token.
func (c *Client) readToken() error {
	res, ok := c.prov.GetAuthResult().(tokens.CreateResult)
	if !ok {
		return &Error{Op: "read token", Kind: ErrUnauthorized, Msg: "the identity service did not return a v3 token"}
	}
	if p, err := res.ExtractProject(); err == nil && p != nil {
		c.projectID, c.projectName = p.ID, p.Name
	}
	if u, err := res.ExtractUser(); err == nil && u != nil {
		c.userID = u.ID
	}
	if roles, err := res.ExtractRoles(); err == nil {
		c.roles = c.roles[:0]
		for _, r := range roles {
			c.roles = append(c.roles, r.Name)
		}
	}
	if c.projectID == "" {
		return &Error{Op: "authenticate", Kind: ErrBadRequest, Msg: "the token is not scoped to a project: set a project (OS_PROJECT_NAME or project_name in clouds.yaml)"}
	}
	return nil
}

// ProjectID is the id of the project the client is scoped to.
func (c *Client) ProjectID() string { return c.projectID }

// ProjectName is the name of the project the client is scoped to.
func (c *Client) ProjectName() string { return c.projectName }

// IsAdmin reports whether the token carries the admin role, which shows the
// hypervisor host and instance name of servers and every project's servers.
func (c *Client) IsAdmin() bool { return slices.Contains(c.roles, "admin") }

// ForProject returns a client with the same credentials scoped to another
// project (by name or id); the user needs a role there.
func (c *Client) ForProject(ctx context.Context, project string) (*Client, error) {
	n := &Client{cfg: c.cfg, log: c.log, ao: c.ao, eo: c.eo, tls: c.tls}
	dom := &gophercloud.AuthScope{}
	if c.ao.Scope != nil {
		dom.DomainID, dom.DomainName = c.ao.Scope.DomainID, c.ao.Scope.DomainName
	}
	if dom.DomainID == "" && dom.DomainName == "" {
		dom.DomainID = "default"
	}
	if looksLikeID(project) {
		n.ao.Scope = &gophercloud.AuthScope{ProjectID: project}
	} else {
		n.ao.Scope = &gophercloud.AuthScope{ProjectName: project, DomainID: dom.DomainID, DomainName: dom.DomainName}
	}
	n.ao.TenantID, n.ao.TenantName = "", ""
	if err := n.connect(ctx); err != nil {
		return nil, fmt.Errorf("scope to project %s: %w", project, err)
	}
	return n, nil
}

// looksLikeID tells Keystone ids (32 hex digits) from names.
func looksLikeID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}

// newProvider authenticates with AllowReauth: gophercloud renews an expired
// token once and repeats the request.
// newProvider authenticates with the HTTP client hc. The TLS settings of a
// clouds.yaml entry (tlsCfg) go into hc's transport: gophercloud's
// WithTLSConfig would replace the transport, and a caller's Config.HTTPClient
// (a proxy, a test's recorder) would then carry no request. A caller's
// transport that is no *http.Transport keeps its own TLS settings.
func newProvider(ctx context.Context, ao gophercloud.AuthOptions, hc http.Client, tlsCfg *tls.Config) (*gophercloud.ProviderClient, error) {
	if tlsCfg != nil {
		switch t := hc.Transport.(type) {
		case nil:
			return config.NewProviderClient(ctx, ao, config.WithHTTPClient(hc), config.WithTLSConfig(tlsCfg))
		case *http.Transport:
			t = t.Clone()
			t.TLSClientConfig = tlsCfg
			hc.Transport = t
		}
	}
	return config.NewProviderClient(ctx, ao, config.WithHTTPClient(hc))
}

var errNoHeat = errors.New("the cloud has no orchestration (Heat) endpoint")
