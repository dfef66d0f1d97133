package lab_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/demo"
	"github.com/raksha-backup/raksha/internal/lab/labtest"
)

// openstackCLIPackage is the Debian package of the official client.
const openstackCLIPackage = "python3-openstackclient"

// needOpenstackCLI finds the official openstack client: missing, the test
// fails in CI and is skipped (loudly) elsewhere.
func needOpenstackCLI(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("openstack")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the openstack client is missing in CI: run `make test-deps` (Debian package %s)", openstackCLIPackage)
		}
		t.Skipf("SKIP: the openstack client is not installed — run `make test-deps` (Debian package %s)", openstackCLIPackage)
	}
	return path
}

// osc runs the openstack client against one cloud of a clouds.yaml.
type osc struct {
	t      *testing.T
	bin    string
	clouds string
	home   string
}

// run runs `openstack ARGS` as the given clouds.yaml entry and returns its
// standard output and error; ok is false when it exited non-zero.
func (o *osc) run(cloudName string, args ...string) (stdout, stderr string, ok bool) {
	o.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, o.bin, args...)
	// Only the clouds.yaml speaks: no OS_* of the caller's shell, no
	// clouds.yaml or cache of the caller's home.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OS_") && !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "OS_CLOUD="+cloudName, "OS_CLIENT_CONFIG_FILE="+o.clouds, "HOME="+o.home, "PYTHONDONTWRITEBYTECODE=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	o.t.Logf("openstack %s (as %s): %s, exit %v", strings.Join(args, " "), cloudName, time.Since(start).Round(time.Millisecond), cmd.ProcessState.ExitCode())
	if strings.Contains(errb.String(), "Traceback") {
		o.t.Errorf("openstack %s: the client crashed:\n%s", strings.Join(args, " "), errb.String())
	}
	if ctx.Err() != nil {
		o.t.Fatalf("openstack %s: %v", strings.Join(args, " "), ctx.Err())
	}
	return out.String(), errb.String(), err == nil
}

// json runs `openstack ARGS -f json`, requires success and decodes the output.
func (o *osc) json(cloudName string, out any, args ...string) {
	o.t.Helper()
	stdout, stderr, ok := o.run(cloudName, append(args, "-f", "json")...)
	if !ok {
		o.t.Fatalf("openstack %s failed:\n%s", strings.Join(args, " "), stderr)
	}
	if err := json.Unmarshal([]byte(stdout), out); err != nil {
		o.t.Fatalf("openstack %s: output is not JSON: %v\n%s", strings.Join(args, " "), err, stdout)
	}
}

// TestOpenstackCLI runs the official openstack client against the lab for
// the calls Raksha makes, with the clouds.yaml `raksha lab up` writes.
func TestOpenstackCLI(t *testing.T) {
	bin := needOpenstackCLI(t)
	start := time.Now()
	l := labtest.Start(t)
	ctx := context.Background()
	const demoPassword = "cli-demo-secret"
	demoProjectID, err := l.EnsureProject("demo")
	if err != nil {
		t.Fatal(err)
	}
	demoUserID, err := l.EnsureUser(demo.DemoUser, demoPassword, "demo", "member")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	clouds := filepath.Join(dir, "clouds.yaml")
	if err := demo.WriteClouds(clouds, l.AuthURL(), labtest.AdminPassword, demoPassword); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	o := &osc{t: t, bin: bin, clouds: clouds, home: home}

	// The demo workload's shape, made as the demo user: a server with an
	// attached (in-use) volume, and a spare available volume.
	c, err := cloud.Connect(ctx, cloud.Config{Cloud: demo.DemoCloud, CloudsFile: clouds, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	serverID, err := c.CreateServer(ctx, &cloud.ServerMeta{
		Name: "web-1", Metadata: map[string]string{cloud.WorkloadKey: "demo"},
		Flavor: cloud.FlavorMeta{Name: lab.Flavor}, Image: &cloud.ImageMeta{Name: lab.GuestImage},
		Ports: []cloud.PortMeta{{NetworkName: lab.Network}}, SecurityGroups: []cloud.SecurityGroupMeta{{Name: "default"}},
	}, nil, cloud.Remap{})
	if err != nil {
		t.Fatal(err)
	}
	volID, err := c.CreateVolume(ctx, cloud.VolumeOpts{Name: "web-1-data", SizeGB: 1})
	if err != nil {
		t.Fatal(err)
	}
	spareID, err := c.CreateVolume(ctx, cloud.VolumeOpts{Name: "spare", SizeGB: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitServer(ctx, serverID, "ACTIVE", time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{volID, spareID} {
		if _, err := c.WaitVolume(ctx, v, "available", time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.AttachVolume(ctx, serverID, volID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitVolume(ctx, volID, "in-use", time.Minute); err != nil {
		t.Fatal(err)
	}
	setup := time.Since(start)

	// token issue: a token of the demo user in project demo that the lab
	// takes.
	var tok struct {
		ID        string `json:"id"`
		Expires   string `json:"expires"`
		ProjectID string `json:"project_id"`
		UserID    string `json:"user_id"`
	}
	o.json(demo.DemoCloud, &tok, "token", "issue")
	if tok.ProjectID != demoProjectID || tok.UserID != demoUserID || tok.ID == "" {
		t.Errorf("token issue: %+v, want project %s and user %s", tok, demoProjectID, demoUserID)
	}
	if exp, err := time.Parse("2006-01-02T15:04:05-0700", tok.Expires); err != nil || !exp.After(time.Now()) {
		t.Errorf("token issue: expires %q (%v), want a time in the future", tok.Expires, err)
	}
	req, _ := http.NewRequest("GET", l.URL()+"/compute/v2.1/servers", nil)
	req.Header.Set("X-Auth-Token", tok.ID)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("the issued token is not accepted: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// server list / show, as the member and as the admin (who sees the
	// hypervisor host and instance name Raksha routes host work by).
	var list []map[string]any
	o.json(demo.DemoCloud, &list, "server", "list")
	if len(list) != 1 || list[0]["ID"] != serverID || list[0]["Name"] != "web-1" || list[0]["Status"] != "ACTIVE" ||
		list[0]["Image"] != lab.GuestImage || list[0]["Flavor"] != lab.Flavor {
		t.Errorf("server list: %v", list)
	}
	if nets, _ := list[0]["Networks"].(map[string]any); len(nets) != 1 || nets[lab.Network] == nil {
		t.Errorf("server list: networks %v, want one address on %s", list[0]["Networks"], lab.Network)
	}
	var show map[string]any
	o.json(demo.DemoCloud, &show, "server", "show", "web-1")
	props, _ := show["properties"].(map[string]any)
	vols, _ := show["volumes_attached"].([]any)
	if show["id"] != serverID || show["status"] != "ACTIVE" || props[cloud.WorkloadKey] != "demo" || len(vols) != 1 ||
		vols[0].(map[string]any)["id"] != volID {
		t.Errorf("server show web-1: %v", show)
	}
	if _, ok := show["OS-EXT-SRV-ATTR:host"]; ok {
		t.Errorf("server show: a member sees the hypervisor host: %v", show)
	}
	var info lab.ServerInfo
	for _, s := range l.Servers() {
		if s.ID == serverID {
			info = s
		}
	}
	o.json(demo.AdminCloud, &show, "--os-compute-api-version", cloud.DefaultComputeMicroversion, "server", "show", serverID)
	if show["OS-EXT-SRV-ATTR:host"] != info.Host || show["OS-EXT-SRV-ATTR:instance_name"] != info.InstanceRef.Name || show["host_status"] != "UP" {
		t.Errorf("server show as admin at %s: host %v instance %v host_status %v, want %s %s UP", cloud.DefaultComputeMicroversion,
			show["OS-EXT-SRV-ATTR:host"], show["OS-EXT-SRV-ATTR:instance_name"], show["host_status"], info.Host, info.InstanceRef.Name)
	}

	// volume list / show.
	o.json(demo.DemoCloud, &list, "volume", "list")
	status := map[string]any{}
	for _, v := range list {
		status[v["ID"].(string)] = v["Status"]
	}
	if len(list) != 2 || status[volID] != "in-use" || status[spareID] != "available" {
		t.Errorf("volume list: %v", list)
	}
	o.json(demo.DemoCloud, &show, "volume", "show", "web-1-data")
	atts, _ := show["attachments"].([]any)
	if show["id"] != volID || show["status"] != "in-use" || show["size"] != 1.0 || show["type"] != lab.VolumeType || len(atts) != 1 ||
		atts[0].(map[string]any)["server_id"] != serverID {
		t.Errorf("volume show web-1-data: %v", show)
	}

	// volume snapshot create: refused for the in-use volume without
	// --force (HTTP 400, as Cinder), taken with it; an available volume
	// needs no force.
	stdout, stderr, ok := o.run(demo.DemoCloud, "volume", "snapshot", "create", "--volume", "web-1-data", "snap-1", "-f", "json")
	if ok || !strings.Contains(stderr, "must be available, but current status is: in-use") ||
		!strings.Contains(stderr, "(HTTP 400)") || !strings.Contains(stderr, "(Request-ID: req-") {
		t.Errorf("snapshot of an in-use volume without --force: ok=%t\nstdout: %s\nstderr: %s", ok, stdout, stderr)
	}
	var snap map[string]any
	o.json(demo.DemoCloud, &snap, "volume", "snapshot", "create", "--volume", "web-1-data", "--force", "snap-1")
	if snap["volume_id"] != volID || snap["name"] != "snap-1" || snap["status"] != "creating" || snap["size"] != 1.0 {
		t.Errorf("snapshot create --force: %v", snap)
	}
	snapID, _ := snap["id"].(string)
	o.json(demo.DemoCloud, &snap, "volume", "snapshot", "create", "--volume", "spare", "snap-spare")
	if snap["volume_id"] != spareID {
		t.Errorf("snapshot create of an available volume: %v", snap)
	}
	l.Wait()

	// snapshot show / delete.
	o.json(demo.DemoCloud, &snap, "volume", "snapshot", "show", "snap-1")
	if snap["id"] != snapID || snap["status"] != "available" || snap["volume_id"] != volID ||
		snap["os-extended-snapshot-attributes:progress"] != "100%" {
		t.Errorf("snapshot show snap-1: %v", snap)
	}
	if _, stderr, ok := o.run(demo.DemoCloud, "volume", "snapshot", "delete", "snap-1"); !ok {
		t.Errorf("snapshot delete snap-1: %s", stderr)
	}
	l.Wait()
	if _, stderr, ok := o.run(demo.DemoCloud, "volume", "snapshot", "show", snapID); ok || !strings.Contains(stderr, "No snapshot") {
		t.Errorf("snapshot show after delete: ok=%t %s", ok, stderr)
	}
	t.Logf("setup through internal/cloud %s, the whole test %s", setup.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}
