package cloud

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/snapshots"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/flavors"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/keypairs"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/volumeattach"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/networks"
)

// ---- Cinder snapshots ----

// SnapshotOpts describe a Cinder snapshot to take.
type SnapshotOpts struct {
	Name        string
	Description string
	// Force allows snapshotting an in-use volume (Cinder refuses it
	// otherwise before microversion 3.66). Raksha snapshots inside the
	// freeze window, so it always sets it for attached volumes.
	Force    bool
	Metadata map[string]string
}

// Snapshot is the state of a Cinder snapshot.
type Snapshot struct {
	ID       string    `json:"id"`
	VolumeID string    `json:"volume_id"`
	Name     string    `json:"name,omitempty"`
	Status   string    `json:"status"`
	SizeGB   int       `json:"size_gib"`
	Created  time.Time `json:"created_at"`
}

// CreateSnapshot asks Cinder for a snapshot of the volume and returns its id
// at once (status "creating"); WaitSnapshot waits for it.
func (c *Client) CreateSnapshot(ctx context.Context, volumeID string, o SnapshotOpts) (string, error) {
	s, err := snapshots.Create(ctx, c.volume, snapshots.CreateOpts{
		VolumeID: volumeID, Force: o.Force, Name: o.Name, Description: o.Description, Metadata: o.Metadata,
	}).Extract()
	if err != nil {
		return "", classify("create snapshot of volume "+volumeID, err)
	}
	c.log.Debug("snapshot requested", "snapshot", s.ID, "volume", volumeID, "force", o.Force)
	return s.ID, nil
}

// GetSnapshot shows a snapshot.
func (c *Client) GetSnapshot(ctx context.Context, id string) (*Snapshot, error) {
	s, err := snapshots.Get(ctx, c.volume, id).Extract()
	if err != nil {
		return nil, classify("show snapshot "+id, err)
	}
	return &Snapshot{ID: s.ID, VolumeID: s.VolumeID, Name: s.Name, Status: s.Status, SizeGB: s.Size, Created: s.CreatedAt}, nil
}

// WaitSnapshot waits until the snapshot is available. A snapshot in
// "error" is ErrFailed; one still not available after timeout is ErrTimeout.
func (c *Client) WaitSnapshot(ctx context.Context, id string, timeout time.Duration) (*Snapshot, error) {
	op := "wait for snapshot " + id + " to become available"
	var last *Snapshot
	err := c.poll(ctx, op, timeout, func() (bool, error) {
		s, err := c.GetSnapshot(ctx, id)
		if err != nil {
			return false, err
		}
		last = s
		switch s.Status {
		case "available":
			return true, nil
		case "error", "error_deleting":
			return false, &Error{Op: op, Kind: ErrFailed, Msg: fmt.Sprintf(
				"snapshot %s of volume %s ended in status %q: the block storage backend failed to take it (delete it and take another)", id, s.VolumeID, s.Status)}
		}
		return false, nil
	})
	return last, err
}

// DeleteSnapshot deletes a snapshot; one already gone is no error.
func (c *Client) DeleteSnapshot(ctx context.Context, id string) error {
	err := snapshots.Delete(ctx, c.volume, id).ExtractErr()
	if err != nil {
		if err = classify("delete snapshot "+id, err); errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	}
	return nil
}

// WaitSnapshotGone waits until a deleted snapshot has disappeared.
func (c *Client) WaitSnapshotGone(ctx context.Context, id string, timeout time.Duration) error {
	op := "wait for snapshot " + id + " to be deleted"
	return c.poll(ctx, op, timeout, func() (bool, error) {
		s, err := c.GetSnapshot(ctx, id)
		if errors.Is(err, ErrNotFound) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		if s.Status == "error_deleting" {
			return false, &Error{Op: op, Kind: ErrFailed, Msg: "snapshot is in status error_deleting"}
		}
		return false, nil
	})
}

// ---- Cinder volumes ----

// VolumeOpts describe a volume to create: empty (SizeGB) or from a snapshot.
type VolumeOpts struct {
	Name             string
	Description      string
	SizeGB           int
	Type             string
	SnapshotID       string
	AvailabilityZone string
	Metadata         map[string]string
}

// Volume is the state of a Cinder volume.
type Volume struct {
	ID       string `json:"id"`
	Name     string `json:"name,omitempty"`
	Status   string `json:"status"`
	SizeGB   int    `json:"size_gib"`
	Type     string `json:"type,omitempty"`
	Bootable bool   `json:"bootable"`
	ServerID string `json:"server_id,omitempty"`
	Device   string `json:"device,omitempty"`
}

// CreateVolume asks Cinder for a volume and returns its id at once (status
// "creating"); WaitVolume waits for it.
func (c *Client) CreateVolume(ctx context.Context, o VolumeOpts) (string, error) {
	v, err := volumes.Create(ctx, c.volume, volumes.CreateOpts{
		Name: o.Name, Description: o.Description, Size: o.SizeGB, VolumeType: o.Type, SnapshotID: o.SnapshotID,
		AvailabilityZone: o.AvailabilityZone, Metadata: o.Metadata,
	}, nil).Extract()
	if err != nil {
		return "", classify(fmt.Sprintf("create volume %q", o.Name), err)
	}
	return v.ID, nil
}

// GetVolume shows a volume.
func (c *Client) GetVolume(ctx context.Context, id string) (*Volume, error) {
	v, err := volumes.Get(ctx, c.volume, id).Extract()
	if err != nil {
		return nil, classify("show volume "+id, err)
	}
	out := &Volume{ID: v.ID, Name: v.Name, Status: v.Status, SizeGB: v.Size, Type: v.VolumeType, Bootable: v.Bootable == "true"}
	if len(v.Attachments) > 0 {
		out.ServerID, out.Device = v.Attachments[0].ServerID, v.Attachments[0].Device
	}
	return out, nil
}

// WaitVolume waits until the volume has the given status ("available",
// "in-use"). A volume in an error status is ErrFailed.
func (c *Client) WaitVolume(ctx context.Context, id, status string, timeout time.Duration) (*Volume, error) {
	op := fmt.Sprintf("wait for volume %s to become %s", id, status)
	var last *Volume
	err := c.poll(ctx, op, timeout, func() (bool, error) {
		v, err := c.GetVolume(ctx, id)
		if err != nil {
			return false, err
		}
		last = v
		switch {
		case v.Status == status:
			return true, nil
		case v.Status == "error" || v.Status == "error_restoring" || v.Status == "error_extending" || v.Status == "error_deleting":
			return false, &Error{Op: op, Kind: ErrFailed, Msg: fmt.Sprintf("volume is in status %q", v.Status)}
		}
		return false, nil
	})
	return last, err
}

// DeleteVolume deletes a volume; one already gone is no error.
func (c *Client) DeleteVolume(ctx context.Context, id string) error {
	if err := volumes.Delete(ctx, c.volume, id, nil).ExtractErr(); err != nil {
		if err = classify("delete volume "+id, err); errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	}
	return nil
}

// Connection is how a volume's bytes are reached (Cinder's connection_info,
// the subset Raksha writes through). Type "local": Path is a disk image file
// of Format ("qcow2", "raw") valid on Hosts. Type "rbd": Pool/Image.
type Connection struct {
	Type   string   `json:"type"`
	Path   string   `json:"path,omitempty"`
	Format string   `json:"format,omitempty"`
	Hosts  []string `json:"hosts,omitempty"`
	Pool   string   `json:"pool,omitempty"`
	Image  string   `json:"image,omitempty"`
}

// ConnectVolume asks Cinder to export the volume to host (os-initialize_
// connection, as os-brick does) and returns where its bytes are. Types other
// than local and rbd are ErrBadRequest: Raksha cannot write them yet.
func (c *Client) ConnectVolume(ctx context.Context, id, host string) (*Connection, error) {
	op := "connect volume " + id
	info, err := volumes.InitializeConnection(ctx, c.volume, id, volumes.InitializeConnectionOpts{Host: host, Platform: "x86_64", OSType: "linux2"}).Extract()
	if err != nil {
		return nil, classify(op, err)
	}
	typ, _ := info["driver_volume_type"].(string)
	data, _ := info["data"].(map[string]any)
	str := func(k string) string { v, _ := data[k].(string); return v }
	switch typ {
	case "local":
		conn := &Connection{Type: typ, Path: str("device_path"), Format: str("format")}
		if hs, ok := data["hosts"].([]any); ok {
			for _, h := range hs {
				if s, ok := h.(string); ok {
					conn.Hosts = append(conn.Hosts, s)
				}
			}
		}
		if conn.Path == "" {
			return nil, &Error{Op: op, Kind: ErrBadRequest, Msg: "local connection without a device_path"}
		}
		if conn.Format == "" {
			conn.Format = "raw"
		}
		return conn, nil
	case "rbd":
		pool, image, ok := strings.Cut(str("name"), "/")
		if !ok {
			return nil, &Error{Op: op, Kind: ErrBadRequest, Msg: fmt.Sprintf("rbd connection with name %q (want POOL/IMAGE)", str("name"))}
		}
		return &Connection{Type: typ, Pool: pool, Image: image}, nil
	}
	return nil, &Error{Op: op, Kind: ErrBadRequest, Msg: fmt.Sprintf("volume connection type %q is not supported (Raksha writes local and rbd volumes)", typ)}
}

// DisconnectVolume ends an export made by ConnectVolume.
func (c *Client) DisconnectVolume(ctx context.Context, id, host string) error {
	err := volumes.TerminateConnection(ctx, c.volume, id, volumes.TerminateConnectionOpts{Host: host, Platform: "x86_64", OSType: "linux2"}).ExtractErr()
	if err = classify("disconnect volume "+id, err); errors.Is(err, ErrNotFound) {
		return nil
	}
	// Cinder (the fix of bug 2004555, in Zed's updates) refuses a user's
	// terminate_connection on a volume Nova has attached, lest the
	// attachment go while the compute host still uses the volume. Raksha's
	// initialize_connection made no attachment, so there is nothing of its
	// own to end: the volume stays Nova's.
	if errors.Is(err, ErrConflict) && strings.Contains(err.Error(), "ConflictNovaUsingAttachment") {
		c.log.Debug("volume attached by Nova: no connection of Raksha's to terminate", "volume", id)
		return nil
	}
	return err
}

// ---- Nova servers ----

// Remap changes what a restored server is made of. Keys are what was
// captured (id or name), values what to use instead (id or name).
type Remap struct {
	Networks map[string]string
	Flavors  map[string]string
	Images   map[string]string
	// NamePrefix is put before the captured name ("staging-").
	NamePrefix string
	// KeepFixedIPs asks for the captured addresses on networks that are
	// not remapped.
	KeepFixedIPs bool
}

// CreateServer creates a server from captured metadata, in this client's
// project (use ForProject to restore into another one). volumes maps the
// captured volume ids to the restored volumes to attach (the root volume
// of a server booted from a volume included); captured volumes missing from
// the map are left out. It returns the new server's id at once (status
// BUILD); WaitServer waits for it.
func (c *Client) CreateServer(ctx context.Context, m *ServerMeta, vols map[string]string, r Remap) (string, error) {
	name := r.NamePrefix + m.Name
	op := fmt.Sprintf("create server %s from %s", name, m.ID)
	flavorRef, err := c.resolveFlavor(ctx, remap(r.Flavors, m.Flavor.Name, m.Flavor.ID))
	if err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	opts := servers.CreateOpts{
		Name: name, FlavorRef: flavorRef, Metadata: m.Metadata, AvailabilityZone: m.AvailabilityZone,
		Tags: m.Tags,
	}
	if m.ConfigDrive {
		t := true
		opts.ConfigDrive = &t
	}
	if m.UserData != "" {
		ud, err := base64.StdEncoding.DecodeString(m.UserData)
		if err != nil {
			return "", &Error{Op: op, Kind: ErrBadRequest, Msg: "captured user data is not base64"}
		}
		opts.UserData = ud
	}
	if !m.BootFromVolume && m.Image != nil {
		if opts.ImageRef, err = c.resolveImage(ctx, remap(r.Images, m.Image.Name, m.Image.ID)); err != nil {
			return "", fmt.Errorf("%s: %w", op, err)
		}
	}
	var nets []servers.Network
	for _, p := range m.Ports {
		target := remap(r.Networks, p.NetworkName, p.NetworkID)
		netID, err := c.resolveNetwork(ctx, target)
		if err != nil {
			return "", fmt.Errorf("%s: %w", op, err)
		}
		n := servers.Network{UUID: netID}
		if r.KeepFixedIPs && netID == p.NetworkID && len(p.FixedIPs) > 0 {
			n.FixedIP = p.FixedIPs[0].IPAddress
		}
		nets = append(nets, n)
	}
	if len(nets) == 0 {
		opts.Networks = "none"
	} else {
		opts.Networks = nets
	}
	seen := map[string]bool{}
	for _, g := range m.SecurityGroups {
		if !seen[g.Name] {
			seen[g.Name] = true
			opts.SecurityGroups = append(opts.SecurityGroups, g.Name)
		}
	}
	for _, v := range m.Volumes {
		newID, ok := vols[v.ID]
		if !ok {
			continue
		}
		bd := servers.BlockDevice{SourceType: servers.SourceVolume, DestinationType: servers.DestinationVolume, UUID: newID,
			BootIndex: -1, DeleteOnTermination: v.DeleteOnTermination}
		if v.BootIndex == 0 {
			bd.BootIndex = 0
		}
		opts.BlockDevice = append(opts.BlockDevice, bd)
	}
	// Nova (API v2.1) builds the image's root mapping itself only when the
	// request has no block_device_mapping_v2; with one, the root disk must
	// be in it (boot_index 0), else the request is refused as an invalid
	// boot sequence. python-novaclient (and so Heat) inserts the image
	// mapping this way.
	if opts.ImageRef != "" && len(opts.BlockDevice) > 0 && !slices.ContainsFunc(opts.BlockDevice, func(b servers.BlockDevice) bool { return b.BootIndex == 0 }) {
		opts.BlockDevice = append([]servers.BlockDevice{{SourceType: servers.SourceImage, DestinationType: servers.DestinationLocal,
			UUID: opts.ImageRef, BootIndex: 0, DeleteOnTermination: true}}, opts.BlockDevice...)
	}
	if m.BootFromVolume && len(opts.BlockDevice) == 0 {
		return "", &Error{Op: op, Kind: ErrBadRequest, Msg: "the server booted from a volume and no restored root volume was given"}
	}
	var create servers.CreateOptsBuilder = opts
	if m.KeyName != "" {
		create = keypairs.CreateOptsExt{CreateOptsBuilder: opts, KeyName: m.KeyName}
	}
	s, err := servers.Create(ctx, c.compute, create, nil).Extract()
	if err != nil {
		return "", classify(op, err)
	}
	c.log.Debug("server create requested", "server", s.ID, "name", name, "from", m.ID)
	return s.ID, nil
}

func remap(m map[string]string, name, id string) string {
	if v, ok := m[id]; ok && id != "" {
		return v
	}
	if v, ok := m[name]; ok && name != "" {
		return v
	}
	if name != "" {
		return name
	}
	return id
}

func (c *Client) resolveFlavor(ctx context.Context, ref string) (string, error) {
	if f, err := flavors.Get(ctx, c.compute, ref).Extract(); err == nil {
		return f.ID, nil
	}
	pages, err := flavors.ListDetail(c.compute, flavors.ListOpts{AccessType: flavors.AllAccess}).AllPages(ctx)
	if err != nil {
		return "", classify("list flavors", err)
	}
	fs, err := flavors.ExtractFlavors(pages)
	if err != nil {
		return "", classify("list flavors", err)
	}
	for _, f := range fs {
		if f.Name == ref {
			return f.ID, nil
		}
	}
	return "", &Error{Op: "find flavor " + ref, Kind: ErrNotFound, Msg: "no flavor with this name or id (remap it)"}
}

func (c *Client) resolveImage(ctx context.Context, ref string) (string, error) {
	if im, err := images.Get(ctx, c.image, ref).Extract(); err == nil {
		return im.ID, nil
	}
	pages, err := images.List(c.image, images.ListOpts{Name: ref}).AllPages(ctx)
	if err != nil {
		return "", classify("list images", err)
	}
	ims, err := images.ExtractImages(pages)
	if err != nil {
		return "", classify("list images", err)
	}
	if len(ims) == 1 {
		return ims[0].ID, nil
	}
	if len(ims) > 1 {
		return "", &Error{Op: "find image " + ref, Kind: ErrConflict, Msg: fmt.Sprintf("%d images have this name; give the id", len(ims))}
	}
	return "", &Error{Op: "find image " + ref, Kind: ErrNotFound, Msg: "no image with this name or id (remap it)"}
}

func (c *Client) resolveNetwork(ctx context.Context, ref string) (string, error) {
	if n, err := networks.Get(ctx, c.network, ref).Extract(); err == nil {
		return n.ID, nil
	}
	pages, err := networks.List(c.network, networks.ListOpts{Name: ref}).AllPages(ctx)
	if err != nil {
		return "", classify("list networks", err)
	}
	ns, err := networks.ExtractNetworks(pages)
	if err != nil {
		return "", classify("list networks", err)
	}
	if len(ns) == 1 {
		return ns[0].ID, nil
	}
	if len(ns) > 1 {
		return "", &Error{Op: "find network " + ref, Kind: ErrConflict, Msg: fmt.Sprintf("%d networks have this name; give the id", len(ns))}
	}
	return "", &Error{Op: "find network " + ref, Kind: ErrNotFound, Msg: "no network with this name or id (remap it)"}
}

// GetServer shows a server as the client sees it.
func (c *Client) GetServer(ctx context.Context, id string) (*servers.Server, error) {
	s, err := servers.Get(ctx, c.compute, id).Extract()
	if err != nil {
		return nil, classify("show server "+id, err)
	}
	return s, nil
}

// WaitServer waits until the server has the given status ("ACTIVE",
// "SHUTOFF") and no task in progress. A server in ERROR is ErrFailed with
// Nova's fault message.
func (c *Client) WaitServer(ctx context.Context, id, status string, timeout time.Duration) error {
	op := fmt.Sprintf("wait for server %s to become %s", id, status)
	return c.poll(ctx, op, timeout, func() (bool, error) {
		s, err := c.GetServer(ctx, id)
		if err != nil {
			return false, err
		}
		if s.Status == "ERROR" {
			return false, &Error{Op: op, Kind: ErrFailed, Msg: "server is in ERROR: " + s.Fault.Message}
		}
		return s.Status == status && s.TaskState == "", nil
	})
}

// StopServer asks Nova to stop a server (os-stop); WaitServer waits for SHUTOFF.
func (c *Client) StopServer(ctx context.Context, id string) error {
	return classify("stop server "+id, servers.Stop(ctx, c.compute, id).ExtractErr())
}

// StartServer asks Nova to start a server (os-start); WaitServer waits for ACTIVE.
func (c *Client) StartServer(ctx context.Context, id string) error {
	return classify("start server "+id, servers.Start(ctx, c.compute, id).ExtractErr())
}

// RebootServer asks Nova to reboot a server, the hard way (the guest
// destroyed and started again; the libvirt driver defines its domain anew)
// or the soft way; WaitServer waits for ACTIVE.
func (c *Client) RebootServer(ctx context.Context, id string, hard bool) error {
	how := servers.SoftReboot
	if hard {
		how = servers.HardReboot
	}
	return classify("reboot server "+id, servers.Reboot(ctx, c.compute, id, servers.RebootOpts{Type: how}).ExtractErr())
}

// ResizeServer asks Nova to give a server another flavor; WaitServer waits
// for VERIFY_RESIZE, then ConfirmResize makes it final.
func (c *Client) ResizeServer(ctx context.Context, id, flavorID string) error {
	return classify("resize server "+id, servers.Resize(ctx, c.compute, id, servers.ResizeOpts{FlavorRef: flavorID}).ExtractErr())
}

// ConfirmResize confirms a server's resize (VERIFY_RESIZE to ACTIVE or
// SHUTOFF).
func (c *Client) ConfirmResize(ctx context.Context, id string) error {
	return classify("confirm the resize of server "+id, servers.ConfirmResize(ctx, c.compute, id).ExtractErr())
}

// DeleteServer deletes a server; one already gone is no error.
func (c *Client) DeleteServer(ctx context.Context, id string) error {
	if err := servers.Delete(ctx, c.compute, id).ExtractErr(); err != nil {
		if err = classify("delete server "+id, err); errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	}
	return nil
}

// WaitServerGone waits until a deleted server is gone.
func (c *Client) WaitServerGone(ctx context.Context, id string, timeout time.Duration) error {
	return c.poll(ctx, "wait for server "+id+" to be deleted", timeout, func() (bool, error) {
		_, err := c.GetServer(ctx, id)
		if errors.Is(err, ErrNotFound) {
			return true, nil
		}
		return false, err
	})
}

// RemoveVolume deletes a volume and waits until it is gone, detaching it
// first from a server that still has it. A volume already gone is no error.
func (c *Client) RemoveVolume(ctx context.Context, id string, timeout time.Duration) error {
	return c.poll(ctx, "remove volume "+id, timeout, func() (bool, error) {
		v, err := c.GetVolume(ctx, id)
		if errors.Is(err, ErrNotFound) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		switch v.Status {
		case "available", "error", "error_restoring":
			return false, c.DeleteVolume(ctx, id)
		case "in-use":
			if v.ServerID != "" {
				if err := c.DetachVolume(ctx, v.ServerID, id); err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrConflict) {
					return false, err
				}
			}
		}
		return false, nil // deleting, detaching: wait
	})
}

// AttachVolume attaches a volume to a server and returns the device Nova
// chose; the volume becomes in-use asynchronously (WaitVolume).
func (c *Client) AttachVolume(ctx context.Context, serverID, volumeID string) (string, error) {
	a, err := volumeattach.Create(ctx, c.compute, serverID, volumeattach.CreateOpts{VolumeID: volumeID}).Extract()
	if err != nil {
		return "", classify(fmt.Sprintf("attach volume %s to server %s", volumeID, serverID), err)
	}
	return a.Device, nil
}

// DetachVolume detaches a volume from a server; it becomes available
// asynchronously (WaitVolume).
func (c *Client) DetachVolume(ctx context.Context, serverID, volumeID string) error {
	err := volumeattach.Delete(ctx, c.compute, serverID, volumeID).ExtractErr()
	return classify(fmt.Sprintf("detach volume %s from server %s", volumeID, serverID), err)
}

// poll calls check until it reports done, fails, or timeout passes.
func (c *Client) poll(ctx context.Context, op string, timeout time.Duration, check func() (bool, error)) error {
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	interval := c.cfg.PollInterval
	if interval <= 0 {
		interval = time.Second
	}
	deadline := time.Now().Add(timeout)
	for {
		done, err := check()
		if err != nil || done {
			return err
		}
		if time.Now().After(deadline) {
			return &Error{Op: op, Kind: ErrTimeout, Msg: fmt.Sprintf("not done after %s", timeout)}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", op, ctx.Err())
		case <-time.After(interval):
		}
	}
}

// FindByMetadata lists the ids of this project's servers and volumes whose
// metadata has key=value (a restore's or clone's resources). It filters on
// the client: Nova's list has no metadata filter.
func (c *Client) FindByMetadata(ctx context.Context, key, value string) (serverIDs, volumeIDs []string, err error) {
	list, err := c.listServers(ctx, servers.ListOpts{})
	if err != nil {
		return nil, nil, classify("list servers", err)
	}
	for _, s := range list {
		if v, ok := s.Metadata[key]; ok && v == value {
			serverIDs = append(serverIDs, s.ID)
		}
	}
	pages, err := volumes.List(c.volume, volumes.ListOpts{}).AllPages(ctx)
	if err != nil {
		return nil, nil, classify("list volumes", err)
	}
	vols, err := volumes.ExtractVolumes(pages)
	if err != nil {
		return nil, nil, classify("list volumes", err)
	}
	for _, v := range vols {
		if m, ok := v.Metadata[key]; ok && m == value {
			volumeIDs = append(volumeIDs, v.ID)
		}
	}
	return serverIDs, volumeIDs, nil
}
