package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// testCompute is the lab's compute backend for API tests that do not boot
// guests: it tracks which instances "run" and copies attached disks with
// qemu-img. It lives only in tests; `raksha lab` runs real QEMU.
type testCompute struct {
	mu      sync.Mutex
	running map[InstanceRef][]Disk
	calls   []string
}

func newTestCompute() *testCompute { return &testCompute{running: map[InstanceRef][]Disk{}} }

func (f *testCompute) log(format string, a ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, a...))
}

func (f *testCompute) Start(ctx context.Context, inst Instance) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range inst.Disks {
		if _, err := os.Stat(d.Path); err != nil {
			return fmt.Errorf("start %s: disk %s: %w", inst.Name, d.Node, err)
		}
	}
	f.running[inst.InstanceRef] = append([]Disk(nil), inst.Disks...)
	f.log("start %s %d", inst.Name, len(inst.Disks))
	return nil
}

func (f *testCompute) Stop(ctx context.Context, ref InstanceRef) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.running, ref)
	f.log("stop %s", ref.Name)
	return nil
}

func (f *testCompute) Running(ctx context.Context, ref InstanceRef) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.running[ref]
	return ok, nil
}

func (f *testCompute) Attach(ctx context.Context, ref InstanceRef, d Disk) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.running[ref]; !ok {
		return fmt.Errorf("attach to %s: not running", ref)
	}
	f.running[ref] = append(f.running[ref], d)
	f.log("attach %s %s", ref.Name, d.Node)
	return nil
}

func (f *testCompute) Detach(ctx context.Context, ref InstanceRef, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var keep []Disk
	for _, d := range f.running[ref] {
		if d.Node != node {
			keep = append(keep, d)
		}
	}
	f.running[ref] = keep
	f.log("detach %s %s", ref.Name, node)
	return nil
}

func (f *testCompute) CopyDisk(ctx context.Context, ref InstanceRef, node, target string) error {
	f.mu.Lock()
	var src string
	for _, d := range f.running[ref] {
		if d.Node == node {
			src = d.Path
		}
	}
	f.log("copy %s %s", ref.Name, node)
	f.mu.Unlock()
	if src == "" {
		return fmt.Errorf("copy %s on %s: no such drive", node, ref)
	}
	return copyQcow2(ctx, src, target, 0)
}

func needQemuImg(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("qemu-img missing in CI: run make test-deps (Debian package qemu-utils)")
		}
		t.Skip("SKIP: qemu-img not installed — run `make test-deps` (Debian package qemu-utils)")
	}
}

const testAdminPassword = "lab-admin-secret"

// startTestLab starts a lab in dir with an admin user.
func startTestLab(t *testing.T, dir string, comp Compute) *Lab {
	t.Helper()
	l, err := Start(context.Background(), Options{Dir: dir, Compute: comp})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.EnsureUser(AdminUser, testAdminPassword, AdminProject, "admin"); err != nil {
		t.Fatal(err)
	}
	return l
}

// client is a tiny raw HTTP client for the lab API.
type client struct {
	t       *testing.T
	l       *Lab
	token   string
	project string
	headers map[string]string
}

func login(t *testing.T, l *Lab, userName, password, projectName string) *client {
	t.Helper()
	body := fmt.Sprintf(`{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":%q,"domain":{"id":"default"},"password":%q}}},"scope":{"project":{"name":%q,"domain":{"id":"default"}}}}}`, userName, password, projectName)
	resp, err := http.Post(l.AuthURL()+"/auth/tokens", "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("login %s: %d %s", userName, resp.StatusCode, b)
	}
	var tok struct {
		Token struct {
			Project struct{ ID string } `json:"project"`
		} `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil {
		t.Fatal(err)
	}
	return &client{t: t, l: l, token: resp.Header.Get("X-Subject-Token"), project: tok.Token.Project.ID, headers: map[string]string{}}
}

// do sends a request to path (relative to the lab's base URL, with
// {project} replaced) and decodes the JSON answer into out.
func (c *client) do(method, path string, in any, out any) int {
	c.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	path = replaceProject(path, c.project)
	req, _ := http.NewRequest(method, c.l.URL()+path, body)
	req.Header.Set("X-Auth-Token", c.token)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range c.headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			c.t.Fatalf("%s %s: %v: %s", method, path, err, data)
		}
	}
	return resp.StatusCode
}

func replaceProject(p, id string) string {
	return string(bytes.ReplaceAll([]byte(p), []byte("{project}"), []byte(id)))
}

type obj = map[string]any

func (c *client) createVolume(name string, size int) string {
	c.t.Helper()
	var out struct{ Volume struct{ ID, Status string } }
	if st := c.do("POST", "/volume/v3/{project}/volumes", obj{"volume": obj{"name": name, "size": size}}, &out); st != 202 {
		c.t.Fatalf("create volume: %d", st)
	}
	if out.Volume.Status != "creating" {
		c.t.Fatalf("new volume status %q, want creating", out.Volume.Status)
	}
	c.l.Wait()
	return out.Volume.ID
}

func (c *client) volumeStatus(id string) string {
	var out struct{ Volume struct{ Status string } }
	c.do("GET", "/volume/v3/{project}/volumes/"+id, nil, &out)
	return out.Volume.Status
}

// rawSHA256 hashes the guest-visible content of a qcow2 image: SHA-256
// over the virtual size and every non-zero 64 KiB block with its offset
// (zero blocks, allocated or not, read as zeros to a guest, so they are
// left out; this keeps hashing a sparse 1 GiB disk fast).
func rawSHA256(t *testing.T, path string) string {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", path, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "size %d\n", fi.Size())
	const block = 64 << 10
	buf := make([]byte, block)
	zero := make([]byte, block)
	for off := int64(0); off < fi.Size(); {
		data, err := f.Seek(off, 3 /* SEEK_DATA */)
		if err != nil {
			break // no more data
		}
		off = data &^ (block - 1)
		n, err := f.ReadAt(buf, off)
		if n == 0 && err != nil {
			break
		}
		if !bytes.Equal(buf[:n], zero[:n]) {
			fmt.Fprintf(h, "%d ", off)
			h.Write(buf[:n])
		}
		off += block
	}
	return hex.EncodeToString(h.Sum(nil))
}

func qemuWrite(t *testing.T, path string, pattern int) {
	t.Helper()
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d 0 1M", pattern), path).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io write: %v: %s", err, out)
	}
}

func TestStateSurvivesRestartAndSnapshotIsPointInTime(t *testing.T) {
	needQemuImg(t)
	if _, err := exec.LookPath("qemu-io"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("qemu-io missing in CI: run make test-deps (Debian package qemu-utils)")
		}
		t.Skip("SKIP: qemu-io not installed — run `make test-deps` (Debian package qemu-utils)")
	}
	dir := t.TempDir()
	l := startTestLab(t, dir, newTestCompute())
	c := login(t, l, AdminUser, testAdminPassword, AdminProject)
	vol := c.createVolume("data", 1)
	if st := c.volumeStatus(vol); st != "available" {
		t.Fatalf("volume status %q after creation, want available", st)
	}
	volPath := filepath.Join(dir, "volumes", "volume-"+vol+".qcow2")
	qemuWrite(t, volPath, 0xab)
	before := rawSHA256(t, volPath)

	var snap struct{ Snapshot struct{ ID, Status string } }
	if st := c.do("POST", "/volume/v3/{project}/snapshots", obj{"snapshot": obj{"volume_id": vol, "name": "s1"}}, &snap); st != 202 {
		t.Fatalf("create snapshot: %d", st)
	}
	l.Wait()
	snapPath := filepath.Join(dir, "snapshots", "snapshot-"+snap.Snapshot.ID+".qcow2")
	qemuWrite(t, volPath, 0xcd)
	if got := rawSHA256(t, snapPath); got != before {
		t.Fatalf("snapshot content changed with its volume: %s, want %s", got, before)
	}
	if rawSHA256(t, volPath) == before {
		t.Fatal("volume did not change after the write")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l2, err := Start(context.Background(), Options{Dir: dir, Compute: newTestCompute()})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	c2 := login(t, l2, AdminUser, testAdminPassword, AdminProject)
	if st := c2.volumeStatus(vol); st != "available" {
		t.Fatalf("after restart: volume status %q, want available", st)
	}
	var sn struct {
		Snapshot struct {
			Status string
		}
	}
	if st := c2.do("GET", "/volume/v3/{project}/snapshots/"+snap.Snapshot.ID, nil, &sn); st != 200 || sn.Snapshot.Status != "available" {
		t.Fatalf("after restart: snapshot %d %+v", st, sn)
	}
	if got := rawSHA256(t, snapPath); got != before {
		t.Fatal("snapshot content changed across the restart")
	}
	// The old token is gone with the old process; a deleted snapshot's file goes too.
	c.l = l2
	if st := c.do("GET", "/volume/v3/{project}/volumes/"+vol, nil, nil); st != 401 {
		t.Fatalf("old token after restart: %d, want 401", st)
	}
	if st := c2.do("DELETE", "/volume/v3/{project}/snapshots/"+snap.Snapshot.ID, nil, nil); st != 202 {
		t.Fatalf("delete snapshot: %d", st)
	}
	l2.Wait()
	if _, err := os.Stat(snapPath); !os.IsNotExist(err) {
		t.Fatalf("snapshot file still there after delete: %v", err)
	}
}

func TestServerLifecycleAndSnapshotForce(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	comp := newTestCompute()
	l := startTestLab(t, dir, comp)
	defer l.Close()
	c := login(t, l, AdminUser, testAdminPassword, AdminProject)
	c.headers["OpenStack-API-Version"] = "compute 2.79"

	var nets struct{ Networks []struct{ ID, Name string } }
	c.do("GET", "/network/v2.0/networks?name="+Network, nil, &nets)
	var images struct{ Images []struct{ ID string } }
	c.do("GET", "/image/v2/images?name="+GuestImage, nil, &images)
	var created struct{ Server struct{ ID string } }
	st := c.do("POST", "/compute/v2.1/servers", obj{"server": obj{
		"name": "web-1", "flavorRef": "1", "imageRef": images.Images[0].ID,
		"networks": []obj{{"uuid": nets.Networks[0].ID}}, "metadata": obj{"raksha.workload": "demo"}, "tags": []string{"prod"},
	}}, &created)
	if st != 202 {
		t.Fatalf("create server: %d", st)
	}
	l.Wait()
	var show struct{ Server map[string]any }
	c.do("GET", "/compute/v2.1/servers/"+created.Server.ID, nil, &show)
	if show.Server["status"] != "ACTIVE" || show.Server["OS-EXT-SRV-ATTR:instance_name"] == "" {
		t.Fatalf("server after build: %v", show.Server)
	}
	for _, k := range []string{"id", "name", "status", "tenant_id", "user_id", "metadata", "hostId", "image", "flavor", "created", "updated",
		"addresses", "links", "key_name", "OS-EXT-STS:power_state", "OS-EXT-STS:vm_state", "OS-EXT-STS:task_state",
		"os-extended-volumes:volumes_attached", "OS-EXT-SRV-ATTR:host", "OS-EXT-AZ:availability_zone", "tags", "description", "locked"} {
		if _, ok := show.Server[k]; !ok {
			t.Errorf("server show lacks %q", k)
		}
	}
	eph := filepath.Join(InstanceDir(dir, InstanceRef{show.Server["OS-EXT-SRV-ATTR:host"].(string), show.Server["OS-EXT-SRV-ATTR:instance_name"].(string)}), "disk.eph0")
	if _, err := os.Stat(eph); err != nil {
		t.Fatalf("ephemeral disk: %v", err)
	}

	vol := c.createVolume("data", 1)
	if st := c.do("POST", "/compute/v2.1/servers/"+created.Server.ID+"/os-volume_attachments", obj{"volumeAttachment": obj{"volumeId": vol}}, nil); st != 200 {
		t.Fatalf("attach: %d", st)
	}
	l.Wait()
	if s := c.volumeStatus(vol); s != "in-use" {
		t.Fatalf("volume %q after attach, want in-use", s)
	}
	var fail struct {
		BadRequest struct {
			Code    int
			Message string
		} `json:"badRequest"`
	}
	if st := c.do("POST", "/volume/v3/{project}/snapshots", obj{"snapshot": obj{"volume_id": vol}}, &fail); st != 400 || fail.BadRequest.Code != 400 {
		t.Fatalf("snapshot of in-use volume without force: %d %+v, want 400 badRequest", st, fail)
	}
	var snap struct{ Snapshot struct{ ID string } }
	if st := c.do("POST", "/volume/v3/{project}/snapshots", obj{"snapshot": obj{"volume_id": vol, "force": true}}, &snap); st != 202 {
		t.Fatalf("snapshot with force: %d", st)
	}
	l.Wait()
	var sn struct{ Snapshot struct{ Status string } }
	c.do("GET", "/volume/v3/{project}/snapshots/"+snap.Snapshot.ID, nil, &sn)
	if sn.Snapshot.Status != "available" {
		t.Fatalf("snapshot status %q", sn.Snapshot.Status)
	}
	if !contains(comp.calls, "copy "+show.Server["OS-EXT-SRV-ATTR:instance_name"].(string)+" "+VolumeNode(vol)) {
		t.Fatalf("snapshot of an attached volume did not go through the running instance: %v", comp.calls)
	}
	// Volume delete while in use is refused; stop/start; detach.
	if st := c.do("DELETE", "/volume/v3/{project}/volumes/"+vol, nil, nil); st != 400 {
		t.Fatalf("delete in-use volume: %d, want 400", st)
	}
	if st := c.do("POST", "/compute/v2.1/servers/"+created.Server.ID+"/action", obj{"os-start": nil}, nil); st != 409 {
		t.Fatalf("start an active server: %d, want 409", st)
	}
	// A hard reboot stops and starts the guest; a bad reboot type and a
	// resize on a backend that cannot resize are refused.
	n := len(comp.calls)
	if st := c.do("POST", "/compute/v2.1/servers/"+created.Server.ID+"/action", obj{"reboot": obj{"type": "HARD"}}, nil); st != 202 {
		t.Fatalf("hard reboot: %d", st)
	}
	l.Wait()
	c.do("GET", "/compute/v2.1/servers/"+created.Server.ID, nil, &show)
	inst := show.Server["OS-EXT-SRV-ATTR:instance_name"].(string)
	if show.Server["status"] != "ACTIVE" || !contains(comp.calls[n:], "stop "+inst) || !contains(comp.calls[n:], "start "+inst+" 2") {
		t.Fatalf("after a hard reboot: %v; calls %v", show.Server["status"], comp.calls[n:])
	}
	if st := c.do("POST", "/compute/v2.1/servers/"+created.Server.ID+"/action", obj{"reboot": obj{"type": "WARM"}}, nil); st != 400 {
		t.Fatalf("reboot of type WARM: %d, want 400", st)
	}
	if st := c.do("POST", "/compute/v2.1/servers/"+created.Server.ID+"/action", obj{"resize": obj{"flavorRef": "4"}}, nil); st != 400 {
		t.Fatalf("resize on a backend without resize: %d, want 400", st)
	}
	c.do("POST", "/compute/v2.1/servers/"+created.Server.ID+"/action", obj{"os-stop": nil}, nil)
	l.Wait()
	c.do("GET", "/compute/v2.1/servers/"+created.Server.ID, nil, &show)
	if show.Server["status"] != "SHUTOFF" {
		t.Fatalf("after stop: %v", show.Server["status"])
	}
	if st := c.do("POST", "/compute/v2.1/servers/"+created.Server.ID+"/action", obj{"reboot": obj{"type": "SOFT"}}, nil); st != 409 {
		t.Fatalf("soft reboot of a stopped server: %d, want 409", st)
	}
	c.do("DELETE", "/compute/v2.1/servers/"+created.Server.ID+"/os-volume_attachments/"+vol, nil, nil)
	l.Wait()
	if s := c.volumeStatus(vol); s != "available" {
		t.Fatalf("volume %q after detach", s)
	}
	c.do("DELETE", "/compute/v2.1/servers/"+created.Server.ID, nil, nil)
	l.Wait()
	if st := c.do("GET", "/compute/v2.1/servers/"+created.Server.ID, nil, nil); st != 404 {
		t.Fatalf("deleted server: %d", st)
	}
	if _, err := os.Stat(eph); !os.IsNotExist(err) {
		t.Fatalf("ephemeral disk left after delete: %v", err)
	}
	_ = time.Second
}

// TestMetadataShowReplaceMerge: Nova's and Cinder's metadata calls — POST
// merges, PUT replaces, GET shows — on a server and on a volume.
func TestMetadataShowReplaceMerge(t *testing.T) {
	needQemuImg(t)
	l := startTestLab(t, t.TempDir(), newTestCompute())
	defer l.Close()
	c := login(t, l, AdminUser, testAdminPassword, AdminProject)
	var images struct{ Images []struct{ ID string } }
	c.do("GET", "/image/v2/images?name="+GuestImage, nil, &images)
	var created struct{ Server struct{ ID string } }
	if st := c.do("POST", "/compute/v2.1/servers", obj{"server": obj{"name": "m-1", "flavorRef": "1", "imageRef": images.Images[0].ID,
		"networks": "none", "metadata": obj{"a": "1"}}}, &created); st != 202 {
		t.Fatalf("create server: %d", st)
	}
	vol := c.createVolume("m-vol", 1)
	l.Wait()
	for _, base := range []string{"/compute/v2.1/servers/" + created.Server.ID, "/volume/v3/{project}/volumes/" + vol} {
		var md struct{ Metadata map[string]string }
		if st := c.do("POST", base+"/metadata", obj{"metadata": obj{"b": "2"}}, &md); st != 200 || md.Metadata["b"] != "2" {
			t.Fatalf("%s: merge: %d %v", base, st, md.Metadata)
		}
		md.Metadata = nil // Unmarshal merges into a map it is given
		if st := c.do("PUT", base+"/metadata", obj{"metadata": obj{"c": "3"}}, &md); st != 200 || len(md.Metadata) != 1 || md.Metadata["c"] != "3" {
			t.Fatalf("%s: replace: %d %v", base, st, md.Metadata)
		}
		md.Metadata = nil
		if st := c.do("GET", base+"/metadata", nil, &md); st != 200 || len(md.Metadata) != 1 || md.Metadata["c"] != "3" {
			t.Fatalf("%s: show: %d %v", base, st, md.Metadata)
		}
		if st := c.do("GET", base+"-nope/metadata", nil, nil); st != 404 {
			t.Errorf("%s: metadata of a missing resource: %d, want 404", base, st)
		}
	}
}
