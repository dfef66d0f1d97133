package lab_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/labtest"
)

// The contract suite runs against every implementation of the OpenStack
// APIs Raksha speaks to, as restic's backend tests run one suite against
// every backend: the lab (always) and a real OpenStack when
// RAKSHA_OPENSTACK_CLOUDS names its clouds.yaml (scripts/openstack-up.sh
// writes one; `make openstack-contract`). The suite uses the entry
// RAKSHA_OPENSTACK_CLOUD (default prod-admin: an admin scoped to the project
// the test works in); everything it makes there it deletes again. With the
// variable set the real cloud's run never skips: an unreachable cloud
// fails it.

// contractTarget is one implementation the suite runs against.
type contractTarget struct {
	name string
	// cfg reaches the target as an admin scoped to the project the suite
	// works in (the suite sets HTTPClient and PollInterval).
	cfg cloud.Config
	// user, password, project and authURL get raw tokens.
	user, password, project, authURL string
	// bootNetwork is the network the workload's server gets a port on; ""
	// boots it with no NIC (a real cloud without Neutron agents binds no
	// port; scripts/openstack-up.sh's cloud runs the Linux bridge agent).
	bootNetwork string
	// neutronNetwork, when set, is a network the suite makes a port on
	// and reads with raw requests (the Neutron contracts, where the
	// server has no port).
	neutronNetwork string
	// securityGroups: the server is created with the default group.
	securityGroups bool
	// ephemeralFlavor is the id of a flavor with a 1 GB ephemeral disk.
	ephemeralFlavor string
	// stack makes the stack "app": a stack whose nested stack holds one
	// server (serverID on the lab; a server of its own on a real cloud).
	stack func(t *testing.T, s *rawSession, serverID string)
	// wait is how long a server, volume or snapshot may take.
	wait time.Duration
	// deployment: what this target answers differently from the samples
	// for reasons of its deployment, by contract name.
	deployment map[string]deploymentAllowance
}

// zedAllInOne is what the all-in-one Zed of scripts/openstack-up.sh answers
// differently from the reference samples, and why. Nothing here is a
// difference of the lab: the lab answers the samples' fields.
var zedAllInOne = func() map[string]deploymentAllowance {
	// The server boots with no NIC (Neutron has no agents to bind a port),
	// so Nova lists no security groups; the image is an AMI-style image
	// (kernel and ramdisk images), so kernel_id and ramdisk_id are ids.
	server := deploymentAllowance{mayLack: []string{"security_groups"},
		skipValues: []string{"OS-EXT-SRV-ATTR:kernel_id", "OS-EXT-SRV-ATTR:ramdisk_id", "security_groups"}}
	return map[string]deploymentAllowance{
		"Nova server show (admin, OS-EXT-SRV-ATTR, microversion 2.79)": server,
		"Nova server list with details (discovery)":                    server,
		// neutron-server runs without service plugins and with the
		// port_security extension driver only: no dns, qos, segments,
		// data_plane_status, ip_allocation or uplink-status-propagation
		// extensions; hardware_offload_type and the pvlan fields are
		// later than Zed. The port is unbound (no agents): DOWN, no
		// device.
		"Neutron ports of a server": {
			mayLack: []string{"data_plane_status", "dns_assignment", "dns_domain", "dns_name", "hardware_offload_type",
				"ip_allocation", "propagate_uplink_status", "pvlan_community", "pvlan_type", "qos_network_policy_id", "qos_policy_id"},
			skipValues: []string{"status", "ip_allocation", "propagate_uplink_status"},
			anyShape:   []string{"device_id"},
		},
		// belongs_to_default_sg is later than Zed (2023.2).
		"Neutron security group show": {mayLack: []string{"security_group_rules[].belongs_to_default_sg"}},
		// No agent hosts the network (no availability zone); no dns, qos,
		// auto-allocated-topology, l2_adjacency or vlan-transparent
		// extensions; pvlan and qinq are later than Zed.
		"Neutron network show": {
			mayLack:    []string{"dns_domain", "is_default", "l2_adjacency", "pvlan", "qinq", "qos_policy_id", "vlan_transparent"},
			emptyOK:    []string{"availability_zones"},
			skipValues: []string{"availability_zones", "qinq", "vlan_transparent"},
		},
		// No dns or segments extensions; router:external on subnets is
		// later than Zed.
		"Neutron subnet show": {
			mayLack:    []string{"dns_publish_fixed_ip", "router:external", "segment_id"},
			skipValues: []string{"dns_publish_fixed_ip", "router:external", "segment_id"},
		},
	}
}()

// labTarget is the lab with the fake compute of labtest.
func labTarget(t *testing.T) contractTarget {
	l := labtest.Start(t)
	const project = "contract"
	projectID, err := l.EnsureProject(project)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.EnsureUser(lab.AdminUser, labtest.AdminPassword, project, "admin"); err != nil {
		t.Fatal(err)
	}
	return contractTarget{
		name: "lab",
		cfg: cloud.Config{AuthURL: l.AuthURL(), Username: lab.AdminUser, Password: labtest.AdminPassword,
			ProjectName: project, Region: "RegionOne"},
		user: lab.AdminUser, password: labtest.AdminPassword, project: project, authURL: l.AuthURL(),
		bootNetwork: lab.Network, securityGroups: true, ephemeralFlavor: "1",
		stack: func(t *testing.T, _ *rawSession, serverID string) {
			inner, err := l.CreateStack(projectID, "app-inner", "", []lab.StackResource{{Name: "server", Type: "OS::Nova::Server", PhysicalID: serverID}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := l.CreateStack(projectID, "app", "", []lab.StackResource{{Name: "inner", Type: "app-inner.yaml", PhysicalID: inner}}); err != nil {
				t.Fatal(err)
			}
		},
		wait: time.Minute,
	}
}

// runOnOpenStack runs a contract suite on the real cloud of
// RAKSHA_OPENSTACK_CLOUDS when it is set (make openstack-contract brings the
// cloud up and sets it); make test, which does not bring the 3.5 GiB cloud
// up, runs the suites on the lab only and says so.
func runOnOpenStack(t *testing.T, run func(*testing.T, contractTarget)) {
	if os.Getenv("RAKSHA_OPENSTACK_CLOUDS") == "" {
		t.Log("the real OpenStack target runs under make openstack-contract (RAKSHA_OPENSTACK_CLOUDS not set): lab only")
		return
	}
	t.Run("openstack", func(t *testing.T) { run(t, openstackTarget(t)) })
}

// openstackTarget is the real cloud of RAKSHA_OPENSTACK_CLOUDS.
func openstackTarget(t *testing.T) contractTarget {
	file := os.Getenv("RAKSHA_OPENSTACK_CLOUDS")
	entry := os.Getenv("RAKSHA_OPENSTACK_CLOUD")
	if entry == "" {
		entry = "prod-admin"
	}
	auth, err := readCloudsEntry(file, entry)
	if err != nil {
		t.Fatalf("RAKSHA_OPENSTACK_CLOUDS: %v", err)
	}
	return contractTarget{
		name: "openstack",
		cfg:  cloud.Config{Cloud: entry, CloudsFile: file},
		user: auth["username"], password: auth["password"], project: auth["project_name"], authURL: auth["auth_url"],
		bootNetwork:     "public",
		neutronNetwork:  "public",
		ephemeralFlavor: "3", // m1.eph
		deployment:      zedAllInOne,
		stack: func(t *testing.T, s *rawSession, _ string) {
			inner := "heat_template_version: 2018-08-31\nresources:\n  server:\n    type: OS::Nova::Server\n" +
				"    properties:\n      name: app-stack-1\n      image: " + lab.GuestImage + "\n      flavor: m1.tiny\n" +
				"      networks: [{allocate_network: none}]\n"
			body := map[string]any{
				"stack_name": "app", "timeout_mins": 10,
				"template": map[string]any{"heat_template_version": "2018-08-31",
					"resources": map[string]any{"inner": map[string]any{"type": "app-inner.yaml"}}},
				"files": map[string]any{"app-inner.yaml": inner},
			}
			var created struct{ Stack struct{ ID string } }
			s.must(t, "POST", "orchestration", "/stacks", body, http.StatusCreated, &created)
			t.Cleanup(func() {
				s.do(context.Background(), "DELETE", "orchestration", "/stacks/app/"+created.Stack.ID, nil, nil)
				waitFor(t, "stack app deleted", 3*time.Minute, func() (bool, error) {
					st, body, err := s.do(context.Background(), "GET", "orchestration", "/stacks/app/"+created.Stack.ID, nil, nil)
					return st == http.StatusNotFound || bytes.Contains(body, []byte(`"DELETE_COMPLETE"`)), err
				})
			})
			waitFor(t, "stack app CREATE_COMPLETE", 5*time.Minute, func() (bool, error) {
				var got struct {
					Stack struct {
						Status string `json:"stack_status"`
						Reason string `json:"stack_status_reason"`
					} `json:"stack"`
				}
				s.must(t, "GET", "orchestration", "/stacks/app/"+created.Stack.ID, nil, http.StatusOK, &got)
				switch got.Stack.Status {
				case "CREATE_COMPLETE":
					return true, nil
				case "CREATE_FAILED":
					return false, fmt.Errorf("stack app: %s", got.Stack.Reason)
				}
				return false, nil
			})
		},
		wait: 5 * time.Minute,
	}
}

// readCloudsEntry reads the auth section of one entry of a clouds.yaml as
// scripts/openstack-up.sh writes it (a flat "key: value" per line).
func readCloudsEntry(file, entry string) (map[string]string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	out := map[string]string{}
	in := false
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		indent := len(line) - len(strings.TrimLeft(line, " "))
		if indent == 2 && strings.HasSuffix(trimmed, ":") {
			in = strings.TrimSuffix(trimmed, ":") == entry
			continue
		}
		if in {
			if k, v, ok := strings.Cut(trimmed, ": "); ok {
				out[k] = strings.Trim(v, `"'`)
			}
		}
	}
	for _, k := range []string{"auth_url", "username", "password", "project_name"} {
		if out[k] == "" {
			return nil, fmt.Errorf("%s: entry %q has no %s", file, entry, k)
		}
	}
	return out, nil
}

func TestAPIContractAgainstReferenceSamples(t *testing.T) {
	t.Run("lab", func(t *testing.T) { runContract(t, labTarget(t)) })
	runOnOpenStack(t, runContract)
}

// runContract sets a workload up on the target through internal/cloud,
// recording every exchange, then holds the recorded answers against the
// contracts.
func runContract(t *testing.T, tgt contractTarget) {
	start := time.Now()
	ctx := context.Background()
	rec := &recorder{rt: http.DefaultTransport}
	s := newRawSession(t, tgt, rec)
	cfg := tgt.cfg
	cfg.PollInterval, cfg.HTTPClient = 200*time.Millisecond, &http.Client{Transport: rec}
	if tgt.name == "lab" {
		cfg.PollInterval = 10 * time.Millisecond
	}
	c, err := cloud.Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("%s: %v", tgt.name, err)
	}

	// A workload as internal/cloud sees it: a server with user data, tags
	// and metadata, an attached volume, in a Heat stack and a server group.
	meta := &cloud.ServerMeta{
		Name: "app-1", Metadata: map[string]string{cloud.WorkloadKey: "contract"}, Tags: []string{"tier=app"},
		UserData: base64.StdEncoding.EncodeToString([]byte("#!/bin/sh\necho hello\n")),
		Flavor:   cloud.FlavorMeta{ID: "1"}, Image: &cloud.ImageMeta{Name: lab.GuestImage},
	}
	if tgt.bootNetwork != "" {
		meta.Ports = []cloud.PortMeta{{NetworkName: tgt.bootNetwork}}
	}
	if tgt.securityGroups {
		meta.SecurityGroups = []cloud.SecurityGroupMeta{{Name: "default"}}
	}
	serverID, err := c.CreateServer(ctx, meta, nil, cloud.Remap{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.DeleteServer(ctx, serverID); err == nil {
			_ = c.WaitServerGone(ctx, serverID, tgt.wait)
		}
	})
	volID, err := c.CreateVolume(ctx, cloud.VolumeOpts{Name: "app-1-data", Description: "data of app-1", SizeGB: 1,
		Metadata: map[string]string{cloud.WorkloadKey: "contract"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.RemoveVolume(ctx, volID, tgt.wait); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := c.WaitServer(ctx, serverID, "ACTIVE", tgt.wait); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitVolume(ctx, volID, "available", tgt.wait); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AttachVolume(ctx, serverID, volID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitVolume(ctx, volID, "in-use", tgt.wait); err != nil {
		t.Fatal(err)
	}
	tgt.stack(t, s, serverID)
	groupID := s.createServerGroup(t)

	w, err := c.DiscoverWorkload(ctx, "contract", cloud.Selector{Workload: "contract"})
	if err != nil {
		t.Fatal(err)
	}
	wantPorts := 0
	if tgt.bootNetwork != "" {
		wantPorts = 1
	}
	if len(w.Servers) != 1 || len(w.Servers[0].Volumes) != 1 || len(w.Servers[0].Ports) != wantPorts {
		t.Fatalf("discovered %+v", w)
	}
	if list, err := c.Discover(ctx, cloud.Selector{Stack: "app"}); err != nil || len(list) != 1 {
		t.Fatalf("discover by stack: %v %v", list, err)
	}
	if _, err := c.Discover(ctx, cloud.Selector{ServerGroup: groupID}); err != nil {
		t.Fatalf("discover by server group: %v", err)
	}
	snapID, err := c.CreateSnapshot(ctx, volID, cloud.SnapshotOpts{Name: "app-1-data-snap", Description: "contract", Force: true,
		Metadata: map[string]string{"raksha.backup": "b1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.DeleteSnapshot(ctx, snapID); err == nil {
			_ = c.WaitSnapshotGone(ctx, snapID, tgt.wait)
		}
	})
	if _, err := c.WaitSnapshot(ctx, snapID, tgt.wait); err != nil {
		t.Fatal(err)
	}
	// Before microversion 2.47 internal/cloud reads the extra specs apart.
	s.must(t, "GET", "compute", "/flavors/1/os-extra_specs", nil, http.StatusOK, nil)
	if tgt.neutronNetwork != "" {
		s.neutronReads(t, tgt.neutronNetwork)
	}
	t.Logf("%s: workload set up and captured through internal/cloud in %s", tgt.name, time.Since(start).Round(time.Millisecond))

	for _, ct := range contracts {
		t.Run(ct.name, func(t *testing.T) {
			e, ok := rec.last(ct.method, regexp.MustCompile(ct.path))
			if !ok {
				t.Fatalf("no successful %s matching %s was made: the contract is stale or the call is gone", ct.method, ct.path)
			}
			checkContract(t, ct.with(tgt.deployment[ct.name]), e)
		})
	}
}

// rawSession sends requests the suite makes beside internal/cloud, with a
// token of the target's admin and the endpoints of its catalog, through
// the recorder.
type rawSession struct {
	token     string
	endpoints map[string]string // service type → URL
	client    *http.Client
}

// newRawSession gets a token and the catalog, and tells the recorder the
// hosts of a cloud whose services listen on ports of their own.
func newRawSession(t *testing.T, tgt contractTarget, rec *recorder) *rawSession {
	t.Helper()
	body := fmt.Sprintf(`{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":%q,"domain":{"id":"default"},"password":%q}}},"scope":{"project":{"name":%q,"domain":{"id":"default"}}}}}`,
		tgt.user, tgt.password, tgt.project)
	resp, err := http.Post(strings.TrimSuffix(tgt.authURL, "/")+"/auth/tokens", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("%s: token: %v", tgt.name, err)
	}
	defer resp.Body.Close()
	var tok struct {
		Token struct {
			Catalog []struct {
				Type      string
				Endpoints []struct{ Interface, URL string }
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("%s: token: %d %v", tgt.name, resp.StatusCode, err)
	}
	s := &rawSession{token: resp.Header.Get("X-Subject-Token"), endpoints: map[string]string{}, client: &http.Client{Transport: rec}}
	// The lab's prefix of every service type internal/cloud uses.
	labPrefix := map[string]string{"identity": "/identity", "compute": "/compute", "volumev3": "/volume", "network": "/network",
		"image": "/image", "orchestration": "/orchestration"}
	hosts := map[string][]string{}
	for _, svc := range tok.Token.Catalog {
		for _, ep := range svc.Endpoints {
			if ep.Interface != "public" {
				continue
			}
			s.endpoints[svc.Type] = strings.TrimSuffix(ep.URL, "/")
			if u, err := url.Parse(ep.URL); err == nil && labPrefix[svc.Type] != "" {
				hosts[u.Host] = append(hosts[u.Host], labPrefix[svc.Type])
			}
		}
	}
	rec.mu.Lock()
	rec.prefix = map[string]string{}
	for h, ps := range hosts {
		if len(ps) == 1 { // a host of its own: a real service
			rec.prefix[h] = ps[0]
		}
	}
	rec.mu.Unlock()
	return s
}

// do sends a request to a service of the catalog: the status, the body,
// decoded into out when it is given and the answer is 2xx.
func (s *rawSession) do(ctx context.Context, method, service, path string, in, out any) (int, []byte, error) {
	base, ok := s.endpoints[service]
	if !ok {
		return 0, nil, fmt.Errorf("no %s endpoint in the catalog", service)
	}
	var rd io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("X-Auth-Token", s.token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	switch service {
	case "compute":
		req.Header.Set("OpenStack-API-Version", "compute "+cloud.DefaultComputeMicroversion)
	case "volumev3":
		req.Header.Set("OpenStack-API-Version", "volume "+cloud.DefaultVolumeMicroversion)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if out != nil && resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(body, out); err != nil {
			return resp.StatusCode, body, fmt.Errorf("%s %s: %w: %s", method, path, err, body)
		}
	}
	return resp.StatusCode, body, nil
}

// must is do that fails the test unless the status is want.
func (s *rawSession) must(t *testing.T, method, service, path string, in any, want int, out any) []byte {
	t.Helper()
	st, body, err := s.do(context.Background(), method, service, path, in, out)
	if err != nil {
		t.Fatal(err)
	}
	if st != want {
		t.Fatalf("%s %s %s: %d (want %d): %s", method, service, path, st, want, body)
	}
	return body
}

// createServerGroup makes an empty server group (internal/cloud only reads
// them), deleted when the test ends.
func (s *rawSession) createServerGroup(t *testing.T) string {
	t.Helper()
	var out struct {
		ServerGroup struct{ ID string } `json:"server_group"`
	}
	s.must(t, "POST", "compute", "/os-server-groups",
		map[string]any{"server_group": map[string]any{"name": "app-group", "policy": "anti-affinity"}}, http.StatusOK, &out)
	if out.ServerGroup.ID == "" {
		t.Fatal("create server group: no id")
	}
	t.Cleanup(func() {
		s.do(context.Background(), "DELETE", "compute", "/os-server-groups/"+out.ServerGroup.ID, nil, nil)
	})
	return out.ServerGroup.ID
}

// neutronReads makes a port on network and reads what the Neutron
// contracts compare: the port list, the default security group, the
// network and its subnet.
func (s *rawSession) neutronReads(t *testing.T, network string) {
	t.Helper()
	var nets struct {
		Networks []struct {
			ID      string
			Subnets []string
		}
	}
	s.must(t, "GET", "network", "/v2.0/networks?name="+url.QueryEscape(network), nil, http.StatusOK, &nets)
	if len(nets.Networks) != 1 || len(nets.Networks[0].Subnets) == 0 {
		t.Fatalf("network %s: %+v", network, nets)
	}
	n := nets.Networks[0]
	var port struct{ Port struct{ ID string } }
	s.must(t, "POST", "network", "/v2.0/ports", map[string]any{"port": map[string]any{"network_id": n.ID, "name": "contract-port"}},
		http.StatusCreated, &port)
	t.Cleanup(func() { s.do(context.Background(), "DELETE", "network", "/v2.0/ports/"+port.Port.ID, nil, nil) })
	s.must(t, "GET", "network", "/v2.0/ports?network_id="+n.ID, nil, http.StatusOK, nil)
	var sgs struct {
		SecurityGroups []struct{ ID string } `json:"security_groups"`
	}
	s.must(t, "GET", "network", "/v2.0/security-groups?name=default", nil, http.StatusOK, &sgs)
	if len(sgs.SecurityGroups) == 0 {
		t.Fatal("no default security group")
	}
	s.must(t, "GET", "network", "/v2.0/security-groups/"+sgs.SecurityGroups[0].ID, nil, http.StatusOK, nil)
	s.must(t, "GET", "network", "/v2.0/networks/"+n.ID, nil, http.StatusOK, nil)
	s.must(t, "GET", "network", "/v2.0/subnets/"+n.Subnets[0], nil, http.StatusOK, nil)
}

// waitFor polls check every 0.5 s until it is done, fails or time runs out.
func waitFor(t *testing.T, what string, timeout time.Duration, check func() (bool, error)) {
	t.Helper()
	end := time.Now().Add(timeout)
	for {
		done, err := check()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if done {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
