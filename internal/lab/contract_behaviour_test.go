package lab_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/lab"
)

// TestAPIBehaviourContract holds what the targets do, beside what they
// answer: the status codes, error bodies and the kinds internal/cloud makes
// of them for the refusals Raksha meets, and the statuses a volume, a
// snapshot and a server pass through. The expectations are the real Zed's
// (seen with scripts/openstack-up.sh); the lab must show the same.
func TestAPIBehaviourContract(t *testing.T) {
	t.Run("lab", func(t *testing.T) { runBehaviour(t, labTarget(t)) })
	runOnOpenStack(t, runBehaviour)
}

func runBehaviour(t *testing.T, tgt contractTarget) {
	ctx := context.Background()
	rec := &recorder{rt: http.DefaultTransport}
	s := newRawSession(t, tgt, rec)
	cfg := tgt.cfg
	cfg.PollInterval = 100 * time.Millisecond
	c, err := cloud.Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("%s: %v", tgt.name, err)
	}
	const missing = "00000000-0000-4000-8000-000000000000"

	// Not found: 404 with the service's fault key, ErrNotFound.
	for _, nf := range []struct{ service, path, fault string }{
		{"compute", "/servers/" + missing, "itemNotFound"},
		{"volumev3", "/volumes/" + missing, "itemNotFound"},
		{"volumev3", "/snapshots/" + missing, "itemNotFound"},
		{"network", "/v2.0/ports/" + missing, "NeutronError"},
	} {
		st, body, err := s.do(ctx, "GET", nf.service, nf.path, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkFault(t, "GET "+nf.service+nf.path, st, body, http.StatusNotFound, nf.fault)
	}
	if _, err := c.GetServer(ctx, missing); !errors.Is(err, cloud.ErrNotFound) {
		t.Errorf("GetServer of a missing server: %v, want ErrNotFound", err)
	}
	if _, err := c.GetVolume(ctx, missing); !errors.Is(err, cloud.ErrNotFound) {
		t.Errorf("GetVolume of a missing volume: %v, want ErrNotFound", err)
	}

	// A server and a volume, with the statuses they pass through.
	meta := &cloud.ServerMeta{Name: "behaviour-1", Flavor: cloud.FlavorMeta{ID: "1"}, Image: &cloud.ImageMeta{Name: lab.GuestImage}}
	if tgt.bootNetwork != "" {
		meta.Ports = []cloud.PortMeta{{NetworkName: tgt.bootNetwork}}
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
	volID, err := c.CreateVolume(ctx, cloud.VolumeOpts{Name: "behaviour-data", SizeGB: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.RemoveVolume(ctx, volID, tgt.wait); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	statuses(t, s, "volume create", "volumev3", "/volumes/"+volID, "volume", "available", tgt.wait,
		"creating", "available")
	statuses(t, s, "server build", "compute", "/servers/"+serverID, "server", "ACTIVE", tgt.wait,
		"BUILD", "ACTIVE")

	// An image-booted server with a volume in block_device_mapping_v2 and
	// no root mapping (boot_index 0) in it: Nova refuses the boot
	// sequence (python-novaclient inserts the image's mapping; so does
	// cloud.CreateServer).
	captured, err := c.Capture(ctx, serverID)
	if err != nil || captured.Image == nil {
		t.Fatalf("capture: %+v %v", captured, err)
	}
	var made map[string]struct {
		ID string `json:"id"`
	}
	st, body, err := s.do(ctx, "POST", "compute", "/servers", map[string]any{"server": map[string]any{
		"name": "behaviour-bdm", "imageRef": captured.Image.ID, "flavorRef": "1", "networks": "none",
		"block_device_mapping_v2": []any{map[string]any{"source_type": "volume", "destination_type": "volume",
			"uuid": volID, "boot_index": -1}}}}, &made)
	if err != nil {
		t.Fatal(err)
	}
	if id := made["server"].ID; id != "" {
		t.Cleanup(func() {
			if err := c.DeleteServer(ctx, id); err == nil {
				_ = c.WaitServerGone(ctx, id, tgt.wait)
			}
		})
	}
	checkFault(t, "an image-booted server with a volume mapping and no root mapping", st, body, http.StatusBadRequest, "badRequest")
	if !strings.Contains(string(body), "Boot sequence") {
		t.Errorf("the refusal does not name the boot sequence: %s", body)
	}

	ephemeralMapping(t, tgt, s, c, captured.Image.ID)

	if _, err := c.AttachVolume(ctx, serverID, volID); err != nil {
		t.Fatal(err)
	}
	statuses(t, s, "volume attach", "volumev3", "/volumes/"+volID, "volume", "in-use", tgt.wait,
		"available", "reserved", "attaching", "in-use")

	// A user may not end the connection of a volume Nova uses: Cinder's
	// 409 ConflictNovaUsingAttachment (bug 2004555); DisconnectVolume, which
	// made no attachment, takes it as nothing to do.
	if _, err := c.ConnectVolume(ctx, volID, "raksha"); err != nil {
		t.Fatal(err)
	}
	st, body, err = s.do(ctx, "POST", "volumev3", "/volumes/"+volID+"/action", map[string]any{"os-terminate_connection": map[string]any{
		"connector": map[string]any{"host": "raksha", "platform": "x86_64", "os_type": "linux2"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkFault(t, "terminate the connection of an in-use volume", st, body, http.StatusConflict, "conflictingRequest")
	if !strings.Contains(string(body), "ConflictNovaUsingAttachment") && !strings.Contains(string(body), "using the Compute API") {
		t.Errorf("the refusal does not say to detach through Nova: %s", body)
	}
	if err := c.DisconnectVolume(ctx, volID, "raksha"); err != nil {
		t.Errorf("DisconnectVolume of an in-use volume: %v, want nil", err)
	}

	// Refusals on an in-use volume: Cinder's 400 with "status must be"
	// (ErrConflict: retryable), a snapshot without force is a bad request.
	st, body, err = s.do(ctx, "DELETE", "volumev3", "/volumes/"+volID, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkFault(t, "DELETE an in-use volume", st, body, http.StatusBadRequest, "badRequest")
	if err := c.DeleteVolume(ctx, volID); !errors.Is(err, cloud.ErrConflict) {
		t.Errorf("DeleteVolume of an in-use volume: %v, want ErrConflict", err)
	}
	st, body, err = s.do(ctx, "POST", "volumev3", "/snapshots",
		map[string]any{"snapshot": map[string]any{"volume_id": volID, "name": "no-force"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkFault(t, "snapshot an in-use volume without force", st, body, http.StatusBadRequest, "badRequest")
	if _, err := c.CreateSnapshot(ctx, volID, cloud.SnapshotOpts{Name: "no-force"}); !errors.Is(err, cloud.ErrConflict) {
		t.Errorf("CreateSnapshot of an in-use volume without force: %v, want ErrConflict", err)
	}
	// Nova refuses to start an active server: 409.
	st, body, err = s.do(ctx, "POST", "compute", "/servers/"+serverID+"/action", map[string]any{"os-start": nil}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkFault(t, "start an active server", st, body, http.StatusConflict, "conflictingRequest")
	if err := c.StartServer(ctx, serverID); !errors.Is(err, cloud.ErrConflict) {
		t.Errorf("StartServer of an active server: %v, want ErrConflict", err)
	}

	snapID, err := c.CreateSnapshot(ctx, volID, cloud.SnapshotOpts{Name: "forced", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	statuses(t, s, "snapshot create", "volumev3", "/snapshots/"+snapID, "snapshot", "available", tgt.wait,
		"creating", "available")
	if err := c.DeleteSnapshot(ctx, snapID); err != nil {
		t.Fatal(err)
	}
	statuses(t, s, "snapshot delete", "volumev3", "/snapshots/"+snapID, "snapshot", "", tgt.wait,
		"available", "deleting")

	if err := c.StopServer(ctx, serverID); err != nil {
		t.Fatal(err)
	}
	statuses(t, s, "server stop", "compute", "/servers/"+serverID, "server", "SHUTOFF", tgt.wait,
		"ACTIVE", "SHUTOFF")
	if err := c.StartServer(ctx, serverID); err != nil {
		t.Fatal(err)
	}
	statuses(t, s, "server start", "compute", "/servers/"+serverID, "server", "ACTIVE", tgt.wait,
		"SHUTOFF", "ACTIVE")

	if err := c.DetachVolume(ctx, serverID, volID); err != nil {
		t.Fatal(err)
	}
	statuses(t, s, "volume detach", "volumev3", "/volumes/"+volID, "volume", "available", tgt.wait,
		"in-use", "detaching", "available")
	if err := c.DeleteVolume(ctx, volID); err != nil {
		t.Fatal(err)
	}
	statuses(t, s, "volume delete", "volumev3", "/volumes/"+volID, "volume", "", tgt.wait,
		"available", "deleting")
}

// checkFault checks a refusal's status and the fault key of its body.
func checkFault(t *testing.T, what string, st int, body []byte, want int, fault string) {
	t.Helper()
	if st != want {
		t.Errorf("%s: %d, want %d: %s", what, st, want, body)
		return
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		t.Errorf("%s: the body is no JSON object: %v: %s", what, err, body)
		return
	}
	if _, ok := m[fault]; !ok {
		t.Errorf("%s: no %q in the body: %s", what, fault, body)
	}
}

// statuses polls the resource's status every 50 ms until it is until ("":
// until the resource is gone, 404) and checks that every status seen is
// one of allowed, in that order.
func statuses(t *testing.T, s *rawSession, what, service, path, key, until string, timeout time.Duration, allowed ...string) {
	t.Helper()
	var seen []string
	end := time.Now().Add(timeout)
	for {
		var got map[string]struct {
			Status string `json:"status"`
		}
		st, body, err := s.do(context.Background(), "GET", service, path, nil, &got)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if st == http.StatusNotFound && until == "" {
			break
		}
		if st != http.StatusOK {
			t.Fatalf("%s: GET %s: %d: %s", what, path, st, body)
		}
		status := got[key].Status
		if len(seen) == 0 || seen[len(seen)-1] != status {
			seen = append(seen, status)
		}
		if until != "" && status == until {
			break
		}
		if strings.Contains(strings.ToLower(status), "error") {
			t.Fatalf("%s: status %s (seen %v)", what, status, seen)
		}
		if time.Now().After(end) {
			t.Fatalf("%s: not %q within %s (seen %v)", what, until, timeout, seen)
		}
		time.Sleep(50 * time.Millisecond)
	}
	last := -1
	for _, st := range seen {
		i := slices.Index(allowed, st)
		if i < 0 || i < last {
			t.Errorf("%s: statuses %v, want a subsequence of %v", what, seen, allowed)
			return
		}
		last = i
	}
	t.Logf("%s: %v", what, seen)
}

// ephemeralMapping: a block device mapping with source_type blank and
// destination_type local is an ephemeral disk in the instance directory,
// not a volume (Nova: new_format_is_ephemeral); the server has no volume
// attached and the project no new volume. Larger than the flavor's
// ephemeral disk, it is refused.
func ephemeralMapping(t *testing.T, tgt contractTarget, s *rawSession, c *cloud.Client, imageID string) {
	t.Helper()
	ctx := context.Background()
	boot := func(name string, size int, imageRef string) (int, []byte, string) {
		var made map[string]struct {
			ID string `json:"id"`
		}
		server := map[string]any{
			"name": name, "flavorRef": tgt.ephemeralFlavor, "networks": "none",
			"block_device_mapping_v2": []any{
				map[string]any{"source_type": "image", "destination_type": "local", "uuid": imageID, "boot_index": 0, "delete_on_termination": true},
				map[string]any{"source_type": "blank", "destination_type": "local", "volume_size": size, "guest_format": "ext4", "boot_index": -1, "delete_on_termination": true},
			}}
		if imageRef != "" {
			server["imageRef"] = imageRef
		}
		st, body, err := s.do(ctx, "POST", "compute", "/servers", map[string]any{"server": server}, &made)
		if err != nil {
			t.Fatal(err)
		}
		id := made["server"].ID
		if id != "" {
			t.Cleanup(func() {
				if err := c.DeleteServer(ctx, id); err == nil {
					_ = c.WaitServerGone(ctx, id, tgt.wait)
				}
			})
		}
		return st, body, id
	}
	var before struct {
		Volumes []struct{ ID string } `json:"volumes"`
	}
	s.must(t, "GET", "volumev3", "/volumes", nil, http.StatusOK, &before)
	// The image mapped to the local root disk needs the request's imageRef
	// too (Nova's BlockDeviceDict; cloud.CreateServer sends both): without
	// the key, refused.
	st, body, _ := boot("behaviour-eph-noimage", 1, "")
	checkFault(t, "an image mapped to local without imageRef", st, body, http.StatusBadRequest, "badRequest")
	if !strings.Contains(string(body), "Mapping image to local is not supported") {
		t.Errorf("the refusal does not name the image mapping: %s", body)
	}
	st, body, id := boot("behaviour-eph", 1, imageID)
	if st != http.StatusAccepted || id == "" {
		t.Fatalf("a server with a blank local mapping: %d %s", st, body)
	}
	if err := c.WaitServer(ctx, id, "ACTIVE", tgt.wait); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Server struct {
			Volumes []any `json:"os-extended-volumes:volumes_attached"`
		} `json:"server"`
	}
	s.must(t, "GET", "compute", "/servers/"+id, nil, http.StatusOK, &got)
	if len(got.Server.Volumes) != 0 {
		t.Errorf("a blank local mapping made the server's volumes %v; want none (an ephemeral disk)", got.Server.Volumes)
	}
	var after struct {
		Volumes []struct{ ID string } `json:"volumes"`
	}
	s.must(t, "GET", "volumev3", "/volumes", nil, http.StatusOK, &after)
	if len(after.Volumes) != len(before.Volumes) {
		t.Errorf("a blank local mapping: %d volumes before, %d after; want no new volume", len(before.Volumes), len(after.Volumes))
	}
	st, body, _ = boot("behaviour-eph-big", 5, imageID)
	checkFault(t, "a blank local mapping larger than the flavor's ephemeral disk", st, body, http.StatusBadRequest, "badRequest")
	if !strings.Contains(string(body), "Ephemeral disks requested are larger than the instance type allows") {
		t.Errorf("the refusal does not name the ephemeral size: %s", body)
	}
}
