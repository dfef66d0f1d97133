//go:build openstack && ceph

package integration

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
	"github.com/raksha-backup/raksha/workflows"
)

// The acceptance scenarios of issue 14 against the real OpenStack of
// scripts/openstack-up.sh (make acceptance): a Heat stack of two servers
// booted from the lab guest image (qemu-ga, the in-guest record writer)
// with one Cinder RBD volume each, carrying an ext4 file system labelled
// "data" (a Glance image the test uploads once), attached at boot so that
// the guest mounts it at /data/data and its writer writes there as on the
// root disk (/data/root), and a flavor with an ephemeral disk (m1.eph:
// Nova makes it in the instance directory, formatted ext4 and labelled
// ephemeral0, so the guest writes at /data/ephemeral0 too). Through Raksha's workers and a Temporal dev
// server, in order: an app-consistent backup, guest writes, an incremental
// backup; a restore as new servers into prod; a single-volume restore; a
// clone into staging (network map, post-hook, health check) and its
// delete; an in-place rollback of one server; a cancelled restore that
// leaves nothing behind. Every restored server's guest runs the in-guest
// checker; volumes and disks are compared by hash with the backup.

const (
	accDataImage = "raksha-acc-data" // a raw ext4 file system labelled "data"
	accStack     = "acc"
	accWorkload  = "acceptance"
	// accFlavor is scripts/openstack-up.sh's flavor with a 1 GB ephemeral
	// disk; accEphemeral is the backup's name of that disk.
	accFlavor    = "m1.eph"
	accEphemeral = "disk0"
	accEphSize   = 1 << 30
	// The networks of scripts/openstack-up.sh: prod's and staging's.
	accProdNet    = "prod-net"
	accStagingNet = "staging-net"
)

// accDataDirs are the guest's record directories: the root disk, the data
// volume and the ephemeral disk.
var accDataDirs = []string{"/data/root/", "/data/data/", "/data/ephemeral0/"}

// accStackTemplate is the Heat template of the workload: the volumes are
// made from the data image and attached at boot (block_device_mapping_v2),
// so the guest's init mounts them. Each server has a port on prod's
// network (bound by the cloud's Linux bridge agent; no DHCP, the guest
// configures no address).
const accStackTemplate = `heat_template_version: 2021-04-16
parameters:
  workload: {type: string}
resources:
  vol1:
    type: OS::Cinder::Volume
    properties: {name: acc-data-1, size: 1, image: ` + accDataImage + `, metadata: {raksha.workload: {get_param: workload}}}
  vol2:
    type: OS::Cinder::Volume
    properties: {name: acc-data-2, size: 1, image: ` + accDataImage + `, metadata: {raksha.workload: {get_param: workload}}}
  srv1:
    type: OS::Nova::Server
    properties:
      name: acc-1
      image: ` + lab.GuestImage + `
      flavor: ` + accFlavor + `
      networks: [{network: ` + accProdNet + `}]
      metadata: {raksha.workload: {get_param: workload}}
      block_device_mapping_v2: [{volume_id: {get_resource: vol1}, boot_index: -1, delete_on_termination: false}]
  srv2:
    type: OS::Nova::Server
    properties:
      name: acc-2
      image: ` + lab.GuestImage + `
      flavor: ` + accFlavor + `
      networks: [{network: ` + accProdNet + `}]
      metadata: {raksha.workload: {get_param: workload}}
      block_device_mapping_v2: [{volume_id: {get_resource: vol2}, boot_index: -1, delete_on_termination: false}]
`

// osEnv runs the openstack CLI against the cloud of clouds.yaml.
type osEnv struct {
	t      *testing.T
	clouds string
	ceph   string
}

func (o osEnv) cli(cloudName string, args ...string) (string, error) {
	cmd := exec.Command("openstack", args...)
	cmd.Env = append(os.Environ(), "OS_CLIENT_CONFIG_FILE="+o.clouds, "OS_CLOUD="+cloudName)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("openstack %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (o osEnv) mustCLI(cloudName string, args ...string) string {
	o.t.Helper()
	out, err := o.cli(cloudName, args...)
	if err != nil {
		o.t.Fatal(err)
	}
	return out
}

// jsonCLI runs a listing command with -f json and decodes it.
func (o osEnv) jsonCLI(cloudName string, v any, args ...string) {
	o.t.Helper()
	out := o.mustCLI(cloudName, append(args, "-f", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		o.t.Fatalf("openstack %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (o osEnv) rbd(args ...string) (string, error) {
	out, err := exec.Command("rbd", append([]string{"--conf", o.ceph}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rbd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// ensureDataImage uploads the data volume image (an empty ext4 file system
// labelled "data") once.
func (o osEnv) ensureDataImage() {
	o.t.Helper()
	if _, err := o.cli("admin", "image", "show", accDataImage); err == nil {
		return
	}
	img := filepath.Join(o.t.TempDir(), "data.img")
	mkfs := "mkfs.ext4"
	for _, p := range []string{"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"} {
		if _, err := os.Stat(p); err == nil {
			mkfs = p
		}
	}
	if out, err := exec.Command("truncate", "-s", "64M", img).CombinedOutput(); err != nil {
		o.t.Fatalf("truncate: %v\n%s", err, out)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", "-L", "data", img).CombinedOutput(); err != nil {
		o.t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	o.mustCLI("admin", "image", "create", "--disk-format", "raw", "--container-format", "bare", "--public", "--file", img, accDataImage)
}

// accEnv is the acceptance tests' shared state.
type accEnv struct {
	osEnv
	ctx     context.Context
	admin   *cloud.Client
	tc      client.Client
	be      *local.Backend
	lvc     *libvirt.Conn
	lockDir string
	servers map[string]string // name → id
}

// agentRun runs a shell command in the guest of a server (its domain's
// UUID is the server id) through libvirt's agent pass-through.
func (e *accEnv) agentRun(serverID, script string, timeout time.Duration) (*guest.ExecResult, error) {
	ctx, cancel := context.WithTimeout(e.ctx, timeout)
	defer cancel()
	var ag *guest.Client
	var err error
	for ctx.Err() == nil {
		if ag, err = libvirt.OpenAgent(ctx, e.lvc, serverID, libvirt.AgentOptions{LockDir: e.lockDir, Guest: guest.Options{Owner: "test"}}); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		return nil, fmt.Errorf("agent of %s: %w", serverID, err)
	}
	defer ag.Close()
	return ag.Run(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", script}, Capture: true})
}

// guestCheck runs the in-guest checker on every /data/<label> of a server
// and fails unless the root disk's and the data volume's records are
// intact.
func (e *accEnv) guestCheck(what, serverID string) {
	e.t.Helper()
	res, err := e.agentRun(serverID, "guestapp check /data/*", 3*time.Minute)
	if err != nil {
		e.t.Fatalf("%s: in-guest check: %v", what, err)
	}
	out := string(res.Stdout)
	if res.ExitCode != 0 {
		e.t.Errorf("%s: in-guest check exit %d\n%s%s", what, res.ExitCode, res.Stdout, res.Stderr)
	}
	for _, dir := range accDataDirs {
		if !strings.Contains(out, "OK "+dir) {
			e.t.Errorf("%s: the in-guest check does not find %s intact:\n%s", what, dir, out)
		}
	}
	e.t.Logf("%s: in-guest check passed:\n%s", what, strings.TrimSpace(out))
}

// recordFiles lists the record files the writer left in a directory of a
// server's guest (each writer run makes one of its own, named at random).
func (e *accEnv) recordFiles(serverID, dir string) []string {
	e.t.Helper()
	res, err := e.agentRun(serverID, "ls "+dir+"/raksha-writer", time.Minute)
	if err != nil || res.ExitCode != 0 {
		e.t.Fatalf("ls %s/raksha-writer in %s: %v %+v", dir, serverID, err, res)
	}
	return strings.Fields(string(res.Stdout))
}

// checkCarried fails unless a restored server's disk at dir holds a
// record file the original's writer made: the disk's content came back
// from the backup (a new, empty disk would hold only the new writer's).
func (e *accEnv) checkCarried(what, originalID, restoredID, dir string) {
	e.t.Helper()
	orig, got := e.recordFiles(originalID, dir), e.recordFiles(restoredID, dir)
	for _, f := range got {
		if slices.Contains(orig, f) {
			e.t.Logf("%s: %s holds the original's %s", what, dir, f)
			return
		}
	}
	e.t.Errorf("%s: %s holds %v, none of the original's %v", what, dir, got, orig)
}

// port is a Neutron port as the openstack CLI lists it.
type port struct {
	ID, Status, NetworkID string
	Network               string
	VIFType               string
}

// serverPorts lists a server's ports with their network's name and their
// binding (the openstack CLI, as admin).
func (e *accEnv) serverPorts(serverID string) []port {
	e.t.Helper()
	var ps []struct {
		ID     string `json:"ID"`
		Status string `json:"Status"`
	}
	e.jsonCLI("admin", &ps, "port", "list", "--device-id", serverID)
	var out []port
	for _, p := range ps {
		var show struct {
			NetworkID string `json:"network_id"`
			VIFType   string `json:"binding_vif_type"`
		}
		e.jsonCLI("admin", &show, "port", "show", p.ID)
		var net struct {
			Name string `json:"name"`
		}
		e.jsonCLI("admin", &net, "network", "show", show.NetworkID)
		out = append(out, port{ID: p.ID, Status: p.Status, NetworkID: show.NetworkID, Network: net.Name, VIFType: show.VIFType})
	}
	return out
}

// checkPorts fails unless the server has exactly one port, bound (Linux
// bridge) and ACTIVE, on the network named.
func (e *accEnv) checkPorts(what, serverID, network string) {
	e.t.Helper()
	ps := e.serverPorts(serverID)
	if len(ps) != 1 || ps[0].Network != network || ps[0].Status != "ACTIVE" || ps[0].VIFType != "bridge" {
		e.t.Errorf("%s: ports %+v; want one ACTIVE port bound as bridge on %s", what, ps, network)
		return
	}
	e.t.Logf("%s: port %s on %s, %s, bound (%s)", what, ps[0].ID, network, ps[0].Status, ps[0].VIFType)
}

// ephemeralFile is the file of a server's ephemeral disk in its instance
// directory: the disk Raksha's capture names (its libvirt locator),
// resolved in the domain's definition as the host worker resolves it.
func (e *accEnv) ephemeralFile(serverID string) string {
	e.t.Helper()
	m, err := e.admin.Capture(e.ctx, serverID)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(m.Ephemeral) != 1 || m.Ephemeral[0].Locator.Scheme != "libvirt" {
		e.t.Fatalf("server %s: captured ephemeral disks %+v, want one with a libvirt locator", serverID, m.Ephemeral)
	}
	dom, err := e.lvc.Domain(e.ctx, serverID)
	if err != nil {
		e.t.Fatal(err)
	}
	disks, err := e.lvc.Disks(e.ctx, dom)
	if err != nil {
		e.t.Fatal(err)
	}
	d, err := libvirt.ResolveDisk(disks, m.Ephemeral[0].Locator.Node)
	if err != nil {
		e.t.Fatalf("server %s: the ephemeral disk %s: %v", serverID, m.Ephemeral[0].Locator, err)
	}
	return d.File
}

// backupHash restores a disk manifest into a raw file and hashes it.
func (e *accEnv) backupHash(manifest string, size int64) string {
	e.t.Helper()
	r := mustRepo(e.t, e.be)
	out := filepath.Join(e.t.TempDir(), "backup.raw")
	f, err := os.Create(out)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		e.t.Fatal(err)
	}
	if _, err := r.RestoreDisk(e.ctx, manifest, f, repo.RestoreOptions{}); err != nil {
		e.t.Fatal(err)
	}
	f.Close()
	defer os.Remove(out)
	return fileSHA(e.t, out)
}

// volumeHash is the sha256 of a Cinder volume's RBD image (rbd export).
func (e *accEnv) volumeHash(volumeID string) string {
	e.t.Helper()
	cmd := exec.Command("rbd", "--conf", e.ceph, "export", "--no-progress", "volumes/volume-"+volumeID, "-")
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	h := sha256.New()
	_, cerr := io.Copy(h, out)
	if err := cmd.Wait(); err != nil || cerr != nil {
		e.t.Fatalf("rbd export volumes/volume-%s: %v %v", volumeID, err, cerr)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func (e *accEnv) restore(id string, req workflows.RestoreRequest) (*workflows.RestoreResult, time.Duration, error) {
	start := time.Now()
	wr, err := e.tc.ExecuteWorkflow(e.ctx, client.StartWorkflowOptions{ID: id, TaskQueue: activities.ControlQueue}, workflows.Restore, req)
	if err != nil {
		e.t.Fatal(err)
	}
	var res workflows.RestoreResult
	err = wr.Get(e.ctx, &res)
	return &res, time.Since(start), err
}

// removeRestored deletes what a restore made (servers first).
func (e *accEnv) removeRestored(c *cloud.Client, res *workflows.RestoreResult) {
	e.t.Helper()
	for _, s := range res.Servers {
		if err := c.DeleteServer(e.ctx, s.ServerID); err != nil {
			e.t.Errorf("delete restored server %s: %v", s.ServerID, err)
			continue
		}
		if err := c.WaitServerGone(e.ctx, s.ServerID, 3*time.Minute); err != nil {
			e.t.Errorf("restored server %s: %v", s.ServerID, err)
		}
	}
	for _, v := range res.Volumes {
		if err := c.RemoveVolume(e.ctx, v.VolumeID, 3*time.Minute); err != nil {
			e.t.Errorf("remove restored volume %s: %v", v.VolumeID, err)
		}
	}
}

// inventory is what the cloud holds that a restore could leave behind.
type inventory struct {
	Servers   []string // id name status
	Volumes   []string // id name status
	Snapshots []string // Cinder snapshots: id name
	RBD       []string // image@snapshot, and the images in the trash
	Jobs      []string // libvirt domains with a job running
	Ports     []string // Neutron ports: id network device
}

func (e *accEnv) inventory() inventory {
	e.t.Helper()
	var inv inventory
	var ss []struct{ ID, Name, Status string }
	e.jsonCLI("admin", &ss, "server", "list", "--all-projects")
	for _, s := range ss {
		inv.Servers = append(inv.Servers, s.ID+" "+s.Name+" "+s.Status)
	}
	var vs []struct{ ID, Name, Status string }
	e.jsonCLI("admin", &vs, "volume", "list", "--all-projects")
	for _, v := range vs {
		inv.Volumes = append(inv.Volumes, v.ID+" "+v.Name+" "+v.Status)
	}
	var sn []struct{ ID, Name string }
	e.jsonCLI("admin", &sn, "volume", "snapshot", "list", "--all-projects")
	for _, s := range sn {
		inv.Snapshots = append(inv.Snapshots, s.ID+" "+s.Name)
	}
	var ps []struct {
		ID       string `json:"ID"`
		DeviceID string `json:"device_id"`
	}
	e.jsonCLI("admin", &ps, "port", "list", "-c", "ID", "-c", "device_id")
	for _, p := range ps {
		inv.Ports = append(inv.Ports, p.ID+" "+p.DeviceID)
	}
	out, err := e.rbd("ls", "volumes")
	if err != nil {
		e.t.Fatal(err)
	}
	for _, img := range strings.Fields(out) {
		inv.RBD = append(inv.RBD, img)
		var snaps []struct{ Name string }
		js, err := e.rbd("snap", "ls", "--format", "json", "volumes/"+img)
		if err == nil && json.Unmarshal([]byte(js), &snaps) == nil {
			for _, s := range snaps {
				inv.RBD = append(inv.RBD, img+"@"+s.Name)
			}
		}
	}
	if out, err := e.rbd("trash", "ls", "volumes"); err == nil {
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if l != "" {
				inv.RBD = append(inv.RBD, "trash:"+l)
			}
		}
	}
	doms, err := exec.Command("virsh", "-c", "qemu:///system", "list", "--name").Output()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, d := range strings.Fields(string(doms)) {
		ji, _ := exec.Command("virsh", "-c", "qemu:///system", "domjobinfo", d).CombinedOutput()
		if !strings.Contains(string(ji), "None") {
			inv.Jobs = append(inv.Jobs, d+": "+strings.Join(strings.Fields(string(ji)), " "))
		}
	}
	for _, l := range [][]string{inv.Servers, inv.Volumes, inv.Snapshots, inv.RBD, inv.Jobs, inv.Ports} {
		sort.Strings(l)
	}
	return inv
}

// diff lists what after has that before had not.
func (a inventory) diff(before inventory) []string {
	var out []string
	add := func(kind string, b, a []string) {
		for _, x := range a {
			if !slices.Contains(b, x) {
				out = append(out, kind+" "+x)
			}
		}
	}
	add("server", before.Servers, a.Servers)
	add("volume", before.Volumes, a.Volumes)
	add("snapshot", before.Snapshots, a.Snapshots)
	add("rbd", before.RBD, a.RBD)
	add("libvirt job", nil, a.Jobs)
	add("port", before.Ports, a.Ports)
	return out
}

// TestAcceptance runs the scenarios of issue 14 in order on one Heat stack
// and one pair of backups (each subtest needs the ones before it).
func TestAcceptance(t *testing.T) {
	clouds, env := openstackEnv(t)
	ctx := context.Background()
	e := &accEnv{osEnv: osEnv{t: t, clouds: clouds, ceph: env["CEPH_CONF"]}, ctx: ctx, servers: map[string]string{}}
	admin, err := cloud.Connect(ctx, cloud.Config{Cloud: "prod-admin", CloudsFile: clouds, HostDriver: "libvirt", PollInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e.admin = admin
	staging, err := admin.ForProject(ctx, "staging")
	if err != nil {
		t.Fatal(err)
	}

	// The workload: a Heat stack.
	start := time.Now()
	e.ensureDataImage()
	tmpl := filepath.Join(t.TempDir(), "stack.yaml")
	if err := os.WriteFile(tmpl, []byte(accStackTemplate), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cli("prod-admin", "stack", "show", accStack); err == nil {
		t.Logf("a stack %s of an earlier run: deleting it", accStack)
		e.mustCLI("prod-admin", "stack", "delete", "--yes", "--wait", accStack)
	}
	e.mustCLI("prod-admin", "stack", "create", "--wait", "-t", tmpl, "--parameter", "workload="+accWorkload, accStack)
	t.Cleanup(func() {
		if out, err := e.cli("prod-admin", "stack", "delete", "--yes", "--wait", accStack); err != nil {
			t.Errorf("delete the stack: %v\n%s", err, out)
		}
	})
	w, err := admin.DiscoverWorkload(ctx, accWorkload, cloud.Selector{Stack: accStack})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Servers) != 2 {
		t.Fatalf("the stack's workload has %d servers", len(w.Servers))
	}
	for _, s := range w.Servers {
		e.servers[s.Name] = s.ID
	}
	host := w.Servers[0].Host
	for _, s := range w.Servers {
		if len(s.Ports) != 1 || s.Ports[0].NetworkName != accProdNet {
			t.Fatalf("%s: captured ports %+v; want one on %s", s.Name, s.Ports, accProdNet)
		}
		e.checkPorts(s.Name, s.ID, accProdNet)
	}
	t.Logf("Heat stack %s: 2 servers with an RBD volume each on host %s in %v", accStack, host, time.Since(start).Round(time.Second))

	// Temporal, the repository and the workers.
	tc, _ := startTemporal(t)
	e.tc = tc
	dir := t.TempDir()
	repoDir, pwFile := filepath.Join(dir, "repo"), filepath.Join(dir, "repo-pw")
	if err := os.WriteFile(pwFile, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	be, err := local.Open(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	e.be = be
	if _, err := repo.Init(ctx, be, repo.InitOptions{Password: "secret"}, repo.Options{}); err != nil {
		t.Fatal(err)
	}
	e.lvc = libvirttest.Conn(t)
	e.lockDir = filepath.Join(dir, "locks")
	// Every writer (root disk, data volume, ephemeral disk) has written
	// its first records before the first backup.
	for name, id := range e.servers {
		res, err := e.agentRun(id, "for i in $(seq 120); do test -e /run/raksha/writer.ready && grep -q ' /data/data ' /proc/mounts && grep -q ' /data/ephemeral0 ' /proc/mounts && exit 0; sleep 1; done; cat /proc/mounts; exit 1", 5*time.Minute)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("%s: the writer on /data/data and /data/ephemeral0 is not ready: %v %+v", name, err, res)
		}
	}
	t.Logf("both guests write on their root disk, data volume and ephemeral disk %v after the stack was created", time.Since(start).Round(time.Second))
	acts := activities.New(activities.Config{
		Repos:      map[string]activities.RepoConfig{"main": {URL: "file://" + repoDir, PasswordFile: pwFile}},
		WorkDir:    filepath.Join(dir, "work"),
		Log:        slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Discoverer: &activities.CloudDiscoverer{Client: admin}, CephConf: env["CEPH_CONF"],
		Libvirt: e.lvc, LockDir: e.lockDir,
		// Nova's instances_path of this cloud (an operator with a
		// non-default one sets write_roots so).
		WriteRoots: []string{env["OPENSTACK_INSTANCES"]},
	})
	t.Cleanup(func() { activities.Shutdown(context.Background(), acts) })
	startWorkers(t, tc, acts, activities.ControlQueue, activities.HostQueue(host), activities.DataQueue)

	backup := func(what string) *workflows.BackupResult {
		t.Helper()
		return runOpenStackBackup(ctx, t, tc, what, workflows.BackupRequest{Workload: accWorkload, Project: "prod", Repository: "main",
			Consistency: "app", Selector: cloud.Selector{Stack: accStack}, FreezeTimeout: 30 * time.Second})
	}

	var second *workflows.BackupResult
	ok := t.Run("BackupWritesIncremental", func(t *testing.T) {
		first := backup("first")
		if first.Consistency != "app" || first.VMs != 2 || len(first.Disks) != 6 {
			t.Fatalf("first backup (want 2 VMs with a root disk, a volume and an ephemeral disk each): %+v", first)
		}
		for _, vm := range []string{"acc-1", "acc-2"} {
			if d := diskOf(t, first, vm, accEphemeral); d.Size != accEphSize {
				t.Errorf("%s: the ephemeral disk's size %d, want %d", d.Manifest, d.Size, accEphSize)
			}
		}
		time.Sleep(5 * time.Second) // the writers go on, on both disks of both guests
		second = backup("incremental")
		if second.Consistency != "app" || len(second.Disks) != 6 {
			t.Fatalf("second backup: %+v", second)
		}
		r := mustRepo(t, be)
		var size int64
		for _, d := range second.Disks {
			size += d.Size
			if !d.Incremental {
				t.Errorf("%s: not incremental", d.Manifest)
			}
			m, err := r.LoadManifest(ctx, d.Manifest)
			if err != nil {
				t.Fatal(err)
			}
			vol := strings.Contains(d.Manifest, "/vol-")
			switch {
			case m.Checkpoint == nil:
				t.Errorf("%s: no checkpoint", d.Manifest)
			case vol && m.Checkpoint.Kind != "rbd-snapshot":
				t.Errorf("%s: checkpoint %s; want an RBD snapshot diff", d.Manifest, m.Checkpoint.Kind)
			case !vol && (m.Checkpoint.Kind != libvirt.CheckpointKind || m.Checkpoint.Mode != "incremental"):
				t.Errorf("%s: checkpoint %s %s (%s); want a libvirt checkpoint read incrementally", d.Manifest, m.Checkpoint.Kind, m.Checkpoint.Mode, m.Checkpoint.Reason)
			}
		}
		if second.BytesRead*10 > size {
			t.Errorf("the incremental read %d of %d bytes: more than 10%%", second.BytesRead, size)
		}
		// The ephemeral disks: found, read through libvirt checkpoints,
		// and the incremental read a small part of them.
		for _, vm := range []string{"acc-1", "acc-2"} {
			d := diskOf(t, second, vm, accEphemeral)
			if d.BytesRead*20 > d.Size || d.BytesRead == 0 {
				t.Errorf("%s: the incremental read %d of %d bytes; want more than none and under 5%%", d.Manifest, d.BytesRead, d.Size)
			}
			t.Logf("%s: incremental through a libvirt checkpoint, %d KiB read of %d MiB", d.Manifest, d.BytesRead>>10, d.Size>>20)
		}
		for _, vm := range []string{"acc-1", "acc-2"} {
			for _, disk := range []string{"root", "vol-", accEphemeral} {
				d := diskOf(t, second, vm, disk)
				st, files := restoreAndCheck(ctx, t, r, d.Manifest, d.Size, filepath.Join(t.TempDir(), "restored.raw"))
				if files == 0 {
					t.Errorf("%s: no record files", d.Manifest)
				}
				t.Logf("%s: %d MiB, %d record files intact (e2fsck clean)", d.Manifest, st.BytesWritten>>20, files)
			}
		}
	})
	if !ok {
		t.FailNow()
	}

	t.Run("RestoreAsNewServers", func(t *testing.T) {
		res, took, err := e.restore("restore/acc-new", workflows.RestoreRequest{Repository: "main", BackupID: second.BackupID,
			Project: "prod", NamePrefix: "r-"})
		if err != nil {
			t.Fatal(err)
		}
		defer e.removeRestored(admin, res)
		if len(res.Servers) != 2 || len(res.Volumes) != 2 {
			t.Fatalf("restore: %d servers, %d volumes: %+v", len(res.Servers), len(res.Volumes), res)
		}
		t.Logf("restored 2 servers and 2 volumes into prod in %v (%d MiB written, %d KiB fetched)", took.Round(time.Millisecond), res.Bytes>>20, res.BytesFetched>>10)
		// The openstack CLI shows what Raksha made.
		var ss []struct{ ID, Name, Status string }
		e.jsonCLI("prod-admin", &ss, "server", "list", "--name", "^r-acc-")
		if len(ss) != 2 {
			t.Errorf("openstack server list --name ^r-acc-: %+v", ss)
		}
		for _, s := range res.Servers {
			show := e.mustCLI("prod-admin", "server", "show", s.ServerID, "-f", "json")
			if !strings.Contains(show, activities.MetaRestore) || !strings.Contains(show, `"ACTIVE"`) {
				t.Errorf("openstack server show %s: not ACTIVE or without %s:\n%s", s.ServerID, activities.MetaRestore, show)
			}
			e.checkPorts("restored "+s.Name, s.ServerID, accProdNet)
			e.guestCheck("restored "+s.Name, s.ServerID)
			e.checkCarried("restored "+s.Name, s.From, s.ServerID, "/data/ephemeral0")
		}
	})

	t.Run("SingleVolumeRestore", func(t *testing.T) {
		d := diskOf(t, second, "acc-2", "vol-")
		volID := strings.TrimPrefix(strings.Split(d.Manifest, "/")[2], "vol-")
		res, took, err := e.restore("restore/acc-volume", workflows.RestoreRequest{Repository: "main", BackupID: second.BackupID,
			Volumes: []string{volID}, NamePrefix: "v-"})
		if err != nil {
			t.Fatal(err)
		}
		defer e.removeRestored(admin, res)
		if len(res.Volumes) != 1 || len(res.Servers) != 0 {
			t.Fatalf("single-volume restore: %+v", res)
		}
		v, err := admin.GetVolume(ctx, res.Volumes[0].VolumeID)
		if err != nil {
			t.Fatal(err)
		}
		if v.Status != "available" {
			t.Errorf("the restored volume is %s", v.Status)
		}
		if got, want := e.volumeHash(res.Volumes[0].VolumeID), e.backupHash(d.Manifest, d.Size); got != want {
			t.Errorf("restored volume %s: %s, backup %s", res.Volumes[0].VolumeID, got, want)
		}
		t.Logf("volume %s restored as %s in %v: its RBD image equals the backup", volID, res.Volumes[0].VolumeID, took.Round(time.Millisecond))
	})

	t.Run("CloneIntoStagingAndDelete", func(t *testing.T) {
		const name = "acc-staging"
		start := time.Now()
		req := workflows.CloneRequest{Name: name, RestoreRequest: workflows.RestoreRequest{Repository: "main", BackupID: second.BackupID,
			Project: "staging", NamePrefix: "stg-",
			// prod's network has no place in staging: remapped.
			Networks: map[string]string{accProdNet: accStagingNet},
			PostHooks: []activities.Hook{{Name: "mask", Path: "/bin/sh", Args: []string{"-c",
				"for d in /data/*; do echo masked >> $d/MASKED; done; sync"}, Timeout: time.Minute}},
			HealthCheck: &activities.Hook{Name: "health", Path: "/bin/sh", Args: []string{"-c", "guestapp check /data/* && cat /data/*/MASKED"}},
			Operator:    true}}
		wr, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.CloneWorkflowID(name), TaskQueue: activities.ControlQueue},
			workflows.Clone, req)
		if err != nil {
			t.Fatal(err)
		}
		var res workflows.RestoreResult
		err = wr.Get(ctx, &res)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("clone %s into staging in %v: %d servers, %d volumes", name, time.Since(start).Round(time.Millisecond), len(res.Servers), len(res.Volumes))
		if len(res.Servers) != 2 || len(res.Volumes) != 2 {
			t.Errorf("clone: %+v", res)
		}
		for _, h := range res.Hooks {
			if h.ExitCode != 0 {
				t.Errorf("clone hook %+v", h)
			}
		}
		if s, v, err := staging.FindByMetadata(ctx, activities.MetaClone, name); err != nil || len(s) != 2 || len(v) != 2 {
			t.Errorf("staging holds servers %v volumes %v labelled %s=%s (%v)", s, v, activities.MetaClone, name, err)
		}
		var ss []struct{ ID, Name, Status string }
		e.jsonCLI("staging-admin", &ss, "server", "list")
		if len(ss) != 2 {
			t.Errorf("openstack server list in staging: %+v", ss)
		}
		for _, s := range res.Servers {
			e.checkPorts("clone "+s.Name, s.ServerID, accStagingNet)
			e.guestCheck("clone "+s.Name, s.ServerID)
			e.checkCarried("clone "+s.Name, s.From, s.ServerID, "/data/ephemeral0")
		}
		start = time.Now()
		dw, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "clone-delete/" + name, TaskQueue: activities.ControlQueue},
			workflows.CloneDelete, workflows.CloneDeleteRequest{Name: name, Project: "staging"})
		if err != nil {
			t.Fatal(err)
		}
		var del workflows.CloneDeleteResult
		if err := dw.Get(ctx, &del); err != nil {
			t.Fatalf("clone delete: %v", err)
		}
		if s, v, err := staging.FindByMetadata(ctx, activities.MetaClone, name); err != nil || len(s)+len(v) != 0 {
			t.Errorf("after the clone's delete: servers %v volumes %v (%v)", s, v, err)
		}
		t.Logf("clone deleted in %v: %+v", time.Since(start).Round(time.Millisecond), del)
	})

	t.Run("InPlaceRollback", func(t *testing.T) {
		id := e.servers["acc-2"]
		if err := admin.StopServer(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := admin.WaitServer(ctx, id, "SHUTOFF", 3*time.Minute); err != nil {
			t.Fatal(err)
		}
		vol, root, eph := diskOf(t, second, "acc-2", "vol-"), diskOf(t, second, "acc-2", "root"), diskOf(t, second, "acc-2", accEphemeral)
		volID := strings.TrimPrefix(strings.Split(vol.Manifest, "/")[2], "vol-")
		rootPath := filepath.Join(env["OPENSTACK_INSTANCES"], id, "disk")
		ephPath := e.ephemeralFile(id)
		wantVol, wantRoot, wantEph := e.backupHash(vol.Manifest, vol.Size), e.backupHash(root.Manifest, root.Size), e.backupHash(eph.Manifest, eph.Size)
		if e.volumeHash(volID) == wantVol {
			t.Fatal("the volume already equals the backup: the writer wrote nothing after it, the rollback proves nothing")
		}
		if rawHash(t, rootPath) == wantRoot {
			t.Fatal("the root disk already equals the backup: the writer wrote nothing after it, the rollback proves nothing")
		}
		if rawHash(t, ephPath) == wantEph {
			t.Fatal("the ephemeral disk already equals the backup: the writer wrote nothing after it, the rollback proves nothing")
		}
		res, took, err := e.restore("restore/acc-inplace", workflows.RestoreRequest{Repository: "main", BackupID: second.BackupID,
			VMs: []string{"acc-2"}, InPlace: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := e.volumeHash(volID); got != wantVol {
			t.Errorf("volume after the rollback: %s, backup %s", got, wantVol)
		}
		if got := rawHash(t, rootPath); got != wantRoot {
			t.Errorf("root disk after the rollback: %s, backup %s", got, wantRoot)
		}
		if got := rawHash(t, ephPath); got != wantEph {
			t.Errorf("ephemeral disk %s after the rollback: %s, backup %s", ephPath, got, wantEph)
		}
		t.Logf("in-place rollback of acc-2 (%d MiB) in %v: its volume, root disk and ephemeral disk (%s) equal the backup", res.Bytes>>20, took.Round(time.Millisecond), filepath.Base(ephPath))
		if err := admin.StartServer(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := admin.WaitServer(ctx, id, "ACTIVE", 3*time.Minute); err != nil {
			t.Fatal(err)
		}
		e.guestCheck("acc-2 after the rollback", id)
	})

	t.Run("CancelledRestoreLeavesNothing", func(t *testing.T) {
		before := e.inventory()
		wr, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "restore/acc-cancelled", TaskQueue: activities.ControlQueue},
			workflows.Restore, workflows.RestoreRequest{Repository: "main", BackupID: second.BackupID, Project: "prod", NamePrefix: "x-"})
		if err != nil {
			t.Fatal(err)
		}
		// Cancelled as soon as it creates the servers: its volumes are
		// made and written by then, the servers being built.
		waitRestorePhase(t, tc, wr, "creating servers")
		start := time.Now()
		if err := tc.CancelWorkflow(ctx, wr.GetID(), wr.GetRunID()); err != nil {
			t.Fatal(err)
		}
		var res workflows.RestoreResult
		err = wr.Get(ctx, &res)
		var canceled *temporal.CanceledError
		if !errors.As(err, &canceled) {
			t.Errorf("the cancelled restore ended with %v", err)
		}
		if err == nil {
			e.removeRestored(admin, &res)
		}
		t.Logf("the restore ended %v after the cancel: %v", time.Since(start).Round(time.Millisecond), err)
		var left []string
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(2 * time.Second) {
			left = e.inventory().diff(before)
			if len(left) == 0 || time.Now().After(deadline) {
				break
			}
		}
		if len(left) != 0 {
			t.Errorf("left behind by the cancelled restore: %q", left)
		}
	})
	// A volume under backup stays deletable and leaves nothing behind:
	// Cinder (Zed) moves the image of a deleted volume with Raksha's base
	// snapshot on it to the pool's trash; the next backup releases the
	// snapshot and removes the image (rbd.Conn.ReleaseTrashed), and is
	// still correct.
	t.Run("DeletedVolumeLeavesNothing", func(t *testing.T) {
		id := e.servers["acc-1"]
		vol := diskOf(t, second, "acc-1", "vol-")
		volID := strings.TrimPrefix(strings.Split(vol.Manifest, "/")[2], "vol-")
		img := "volume-" + volID
		if out, err := e.rbd("snap", "ls", "volumes/"+img); err != nil || !strings.Contains(out, "raksha-") {
			t.Fatalf("no Raksha snapshot on %s: %v\n%s", img, err, out)
		}
		// Detached from the stopped server (the busybox guest ignores
		// ACPI hot-unplug requests), then deleted through Cinder.
		start := time.Now()
		if err := admin.StopServer(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := admin.WaitServer(ctx, id, "SHUTOFF", 3*time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := admin.DetachVolume(ctx, id, volID); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.WaitVolume(ctx, volID, "available", 3*time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := admin.RemoveVolume(ctx, volID, 3*time.Minute); err != nil {
			t.Fatalf("Cinder's delete of a volume under backup: %v", err)
		}
		t.Logf("volume %s detached and deleted in %v", volID, time.Since(start).Round(time.Millisecond))
		trash, err := e.rbd("trash", "ls", "volumes")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("the pool's trash after Cinder's delete: %q", strings.TrimSpace(trash))
		if err := admin.StartServer(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := admin.WaitServer(ctx, id, "ACTIVE", 3*time.Minute); err != nil {
			t.Fatal(err)
		}
		if res, err := e.agentRun(id, "for i in $(seq 120); do test -e /run/raksha/writer.ready && exit 0; sleep 1; done; exit 1", 5*time.Minute); err != nil || res.ExitCode != 0 {
			t.Fatalf("acc-1's writer after the restart: %v %+v", err, res)
		}
		third := backup("after the volume's delete")
		if len(third.Disks) != 5 {
			t.Fatalf("backup after the volume's delete: %d disks: %+v", len(third.Disks), third)
		}
		for _, w := range third.Warnings {
			if strings.Contains(w, "RBD") {
				t.Errorf("warning: %s", w)
			}
		}
		trash, err = e.rbd("trash", "ls", "volumes")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(trash, img) {
			t.Errorf("%s is still in the pool's trash after the next backup:\n%s", img, trash)
		}
		if out, err := e.rbd("ls", "volumes"); err != nil || strings.Contains(out, img) {
			t.Errorf("rbd ls volumes: %v\n%s", err, out)
		}
		r := mustRepo(t, be)
		for _, d := range []activities.CopyResult{diskOf(t, third, "acc-1", "root"), diskOf(t, third, "acc-1", accEphemeral), diskOf(t, third, "acc-2", "vol-")} {
			_, files := restoreAndCheck(ctx, t, r, d.Manifest, d.Size, filepath.Join(t.TempDir(), "restored.raw"))
			if files == 0 {
				t.Errorf("%s: no record files", d.Manifest)
			}
		}
	})
}
