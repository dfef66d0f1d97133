// Package apiclient is the Go client of raksha-api, in gophercloud's
// manner: it authenticates to Keystone as the openstack client does
// (clouds.yaml or OS_* settings, through internal/cloud), finds the API in
// the service catalog under ServiceType (or at an explicit endpoint), and
// renews its token by itself. Every failed call returns an *Error with the
// status and the message of the API's OpenStack-style error body.
package apiclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"

	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/internal/cloud"
)

// ServiceType is raksha-api's type in the Keystone catalog.
const ServiceType = "data-protection"

// Options says how to reach the API.
type Options struct {
	// Cloud is how to authenticate (clouds.yaml entry or OS_* settings).
	Cloud cloud.Config
	// Endpoint, if set, is the API's base URL (without /v1), instead of
	// the catalog's ServiceType entry.
	Endpoint string
}

// Client calls one raksha-api as one user scoped to one project. It is safe
// for concurrent use.
type Client struct {
	sc        *gophercloud.ServiceClient
	projectID string
}

// ProjectID is the id of the project the client's token is scoped to.
func (c *Client) ProjectID() string { return c.projectID }

// New authenticates and locates the API.
func New(ctx context.Context, opts Options) (*Client, error) {
	prov, eo, err := cloud.Authenticate(ctx, opts.Cloud)
	if err != nil {
		return nil, err
	}
	endpoint := opts.Endpoint
	if endpoint == "" {
		eo.Type = ServiceType
		endpoint, err = prov.EndpointLocator(eo)
		if err != nil {
			return nil, fmt.Errorf("find raksha-api (service type %s) in the catalog: %w (or give its URL: --api-url, RAKSHA_API_URL)", ServiceType, err)
		}
	}
	if _, err := url.Parse(endpoint); err != nil {
		return nil, fmt.Errorf("raksha-api endpoint %q: %w", endpoint, err)
	}
	endpoint = strings.TrimSuffix(strings.TrimSuffix(endpoint, "/"), "/v1") + "/"
	var project string
	if res, ok := prov.GetAuthResult().(tokens.CreateResult); ok {
		if p, err := res.ExtractProject(); err == nil && p != nil {
			project = p.ID
		}
	}
	return &Client{sc: &gophercloud.ServiceClient{ProviderClient: prov, Endpoint: endpoint, ResourceBase: endpoint + "v1/", Type: ServiceType},
		projectID: project}, nil
}

// Error is a refusal or failure the API answered: its HTTP status and the
// message of its error body.
type Error struct {
	Op      string
	Status  int
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %d %s", e.Op, e.Status, e.Message)
}

// wrap turns gophercloud's error for an unexpected status into an *Error
// with the API's message.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var ue gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &ue) {
		var body api.ErrorBody
		msg := strings.TrimSpace(string(ue.Body))
		if json.Unmarshal(ue.Body, &body) == nil && body.Error.Message != "" {
			msg = body.Error.Message
		}
		if len(msg) > 512 {
			msg = msg[:512] + "..."
		}
		return &Error{Op: op, Status: ue.Actual, Message: msg}
	}
	return fmt.Errorf("%s: %w", op, err)
}

func (c *Client) get(ctx context.Context, op, path string, q url.Values, out any) error {
	u := c.sc.ResourceBase + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	_, err := c.sc.Get(ctx, u, out, &gophercloud.RequestOpts{OkCodes: []int{200}})
	return wrap(op, err)
}

func (c *Client) post(ctx context.Context, op, path string, body, out any, ok ...int) error {
	_, err := c.sc.Post(ctx, c.sc.ResourceBase+path, body, out, &gophercloud.RequestOpts{OkCodes: ok})
	return wrap(op, err)
}

// Page is where a list continues: pass its Marker to get the next page;
// "" when the list is complete.
type Page struct {
	Marker string
}

// ListOpts filters and pages a list.
type ListOpts struct {
	// ProjectID lists another project's (an admin's or a reader's right).
	ProjectID string
	// Limit is the page size (0: the API's default); Marker the id after
	// which the page starts.
	Limit  int
	Marker string
}

func (o ListOpts) query() url.Values {
	q := url.Values{}
	if o.ProjectID != "" {
		q.Set("project_id", o.ProjectID)
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.Marker != "" {
		q.Set("marker", o.Marker)
	}
	return q
}

type links []struct {
	Rel  string `json:"rel"`
	Href string `json:"href"`
}

// next is the marker of the "next" link, or "".
func (l links) next() Page {
	for _, x := range l {
		if x.Rel != "next" {
			continue
		}
		if u, err := url.Parse(x.Href); err == nil {
			return Page{Marker: u.Query().Get("marker")}
		}
	}
	return Page{}
}

// Token is the client's current Keystone token (as `openstack token issue`
// shows one); it is a credential: never log it.
func (c *Client) Token() string { return c.sc.ProviderClient.Token() }
