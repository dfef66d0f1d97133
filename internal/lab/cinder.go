package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

var cinderSvc = &service{
	name: "volume", mvHeader: "volume", legacyMV: "X-OpenStack-Volume-API-Version",
	major: 3, minMinor: 0, maxMinor: 70, errBody: novaStyleError, computeReqID: true,
}

func (l *Lab) cinderRoutes(mux *http.ServeMux) {
	h := func(fn func(http.ResponseWriter, *http.Request, *call) error) http.HandlerFunc {
		return l.handler(cinderSvc, func(w http.ResponseWriter, r *http.Request, c *call) error {
			if pid := r.PathValue("project"); pid != c.tok.ProjectID && !c.admin() {
				return errForbidden("Policy doesn't allow this operation to be performed on project %s.", pid)
			}
			return fn(w, r, c)
		})
	}
	versions := func(w http.ResponseWriter, r *http.Request) {
		l.writeJSON(w, http.StatusMultipleChoices, map[string]any{"versions": []any{map[string]any{
			"id": "v3.0", "status": "CURRENT", "version": fmt.Sprintf("3.%d", cinderSvc.maxMinor), "min_version": "3.0",
			"updated":     "2022-08-31T00:00:00Z",
			"links":       []any{map[string]any{"rel": "self", "href": l.base + "/volume/v3/"}},
			"media-types": []any{map[string]any{"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}},
		}}})
	}
	mux.HandleFunc("GET /volume", versions)
	mux.HandleFunc("GET /volume/{$}", versions)
	mux.HandleFunc("GET /volume/v3", versions)
	mux.HandleFunc("GET /volume/v3/{$}", versions)
	p := "/volume/v3/{project}"
	mux.HandleFunc("GET "+p+"/volumes", h(l.listVolumes))
	mux.HandleFunc("GET "+p+"/volumes/detail", h(l.listVolumes))
	mux.HandleFunc("POST "+p+"/volumes", h(l.createVolume))
	mux.HandleFunc("GET "+p+"/volumes/{id}", h(l.showVolume))
	mux.HandleFunc("DELETE "+p+"/volumes/{id}", h(l.deleteVolume))
	mux.HandleFunc("POST "+p+"/volumes/{id}/action", h(l.volumeAction))
	mux.HandleFunc("GET "+p+"/volumes/{id}/metadata", h(l.volumeMetadata))
	mux.HandleFunc("POST "+p+"/volumes/{id}/metadata", h(l.volumeMetadata))
	mux.HandleFunc("PUT "+p+"/volumes/{id}/metadata", h(l.volumeMetadata))
	mux.HandleFunc("GET "+p+"/snapshots", h(l.listSnapshots))
	mux.HandleFunc("GET "+p+"/snapshots/detail", h(l.listSnapshots))
	mux.HandleFunc("POST "+p+"/snapshots", h(l.createSnapshot))
	mux.HandleFunc("GET "+p+"/snapshots/{id}", h(l.showSnapshot))
	mux.HandleFunc("DELETE "+p+"/snapshots/{id}", h(l.deleteSnapshot))
	mux.HandleFunc("GET "+p+"/attachments/{id}", h(l.showCinderAttachment))
	mux.HandleFunc("GET "+p+"/types", h(l.listVolumeTypes))
	mux.HandleFunc("GET "+p+"/types/{id}", h(l.showVolumeType))
}

func (l *Lab) defaultTypeLocked() *volumeType {
	def := VolumeType
	if l.rbd != nil {
		def = VolumeTypeRBD
	}
	for _, t := range l.st.VolumeTypes {
		if t.Name == def {
			return t
		}
	}
	for _, t := range l.st.VolumeTypes {
		return t
	}
	return &volumeType{Name: "__DEFAULT__"}
}

func (l *Lab) volumeView(v *volume, c *call) map[string]any {
	self := l.base + "/volume/v3/" + v.ProjectID + "/volumes/" + v.ID
	atts := []any{}
	if v.ServerID != "" {
		s := l.st.Servers[v.ServerID]
		host := ""
		if s != nil {
			host = s.Host
		}
		if !c.admin() {
			host = "" // Cinder shows the attached host to admins only
		}
		atts = append(atts, map[string]any{
			"id": v.ID, "attachment_id": v.AttachmentID, "volume_id": v.ID, "server_id": v.ServerID,
			"host_name": nullIfEmpty(host), "device": v.Device, "attached_at": cinderTime(v.AttachedAt),
		})
	}
	typeName := ""
	if t := l.st.VolumeTypes[v.TypeID]; t != nil {
		typeName = t.Name
	}
	out := map[string]any{
		"id": v.ID, "name": v.Name, "description": nullIfEmpty(v.Description), "status": v.Status, "size": v.Size,
		"availability_zone": v.AZ, "created_at": cinderTime(v.Created), "updated_at": cinderTime(v.Updated),
		"attachments": atts, "bootable": strconv.FormatBool(v.Bootable), "encrypted": false,
		"volume_type": typeName, "snapshot_id": nullIfEmpty(v.SnapshotID), "source_volid": nullIfEmpty(v.SourceVolID),
		"metadata": nonNilMap(v.Metadata), "multiattach": false, "user_id": v.UserID,
		"os-vol-tenant-attr:tenant_id": v.ProjectID, "replication_status": nil, "consistencygroup_id": nil,
		"links": []any{map[string]any{"rel": "self", "href": self}, map[string]any{"rel": "bookmark", "href": self}},
	}
	if v.ImageID != "" {
		out["volume_image_metadata"] = map[string]string{"image_id": v.ImageID}
	}
	// As Cinder's v3 volume view: some fields for admins only, others
	// from a microversion on.
	if c.admin() {
		out["migration_status"] = nil
		out["os-vol-host-attr:host"] = "lab@lab-qcow2#lab-qcow2"
		if v.RBD != "" {
			out["os-vol-host-attr:host"] = "lab@lab-rbd#lab-rbd"
		}
		out["os-vol-mig-status-attr:migstat"] = nil
		out["os-vol-mig-status-attr:name_id"] = nil
	}
	if c.mv >= 13 {
		out["group_id"] = nil
	}
	if c.mv >= 21 && c.admin() {
		out["provider_id"] = nil
	}
	if c.mv >= 48 {
		out["service_uuid"] = "00000000-0000-4000-8000-00000000c1de"
		out["shared_targets"] = false
	}
	if c.mv >= 61 && c.admin() {
		out["cluster_name"] = nil
	}
	if c.mv >= 63 {
		out["volume_type_id"] = v.TypeID
	}
	if c.mv >= 65 {
		out["consumes_quota"] = true
	}
	return out
}

func (l *Lab) visibleVolume(c *call, id string) (*volume, error) {
	v := l.st.Volumes[id]
	if v == nil || (!c.admin() && v.ProjectID != c.tok.ProjectID) {
		return nil, errNotFound("Volume %s could not be found.", id)
	}
	return v, nil
}

func (l *Lab) listVolumes(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	all := c.admin() && boolQuery(r, "all_tenants")
	detail := strings.HasSuffix(r.URL.Path, "/detail")
	l.mu.Lock()
	defer l.mu.Unlock()
	var vs []*volume
	for _, v := range l.st.Volumes {
		if !all && v.ProjectID != r.PathValue("project") {
			continue
		}
		if n := q.Get("name"); n != "" && v.Name != n {
			continue
		}
		if st := q.Get("status"); st != "" && v.Status != st {
			continue
		}
		vs = append(vs, v)
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].Created.After(vs[j].Created) })
	out := []any{}
	for _, v := range vs {
		if detail {
			out = append(out, l.volumeView(v, c))
		} else {
			vv := l.volumeView(v, c)
			out = append(out, map[string]any{"id": v.ID, "name": v.Name, "links": vv["links"]})
		}
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"volumes": out})
	return nil
}

func (l *Lab) showVolume(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, err := l.visibleVolume(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"volume": l.volumeView(v, c)})
	return nil
}

// quotaUsedLocked counts a project's volumes, snapshots and gigabytes.
func (l *Lab) quotaUsedLocked(projectID string) (vols, snaps, gigs int) {
	for _, v := range l.st.Volumes {
		if v.ProjectID == projectID {
			vols++
			gigs += v.Size
		}
	}
	for _, s := range l.st.Snapshots {
		if s.ProjectID == projectID {
			snaps++
			gigs += s.Size
		}
	}
	return
}

func overLimit(format string, a ...any) error {
	return &apiError{http.StatusRequestEntityTooLarge, "overLimit", fmt.Sprintf(format, a...)}
}

func (l *Lab) createVolume(w http.ResponseWriter, r *http.Request, c *call) error {
	var body struct {
		Volume struct {
			Size        *int              `json:"size"`
			Name        string            `json:"name"`
			Description string            `json:"description"`
			VolumeType  string            `json:"volume_type"`
			SnapshotID  string            `json:"snapshot_id"`
			SourceVolID string            `json:"source_volid"`
			ImageRef    string            `json:"imageRef"`
			Metadata    map[string]string `json:"metadata"`
			AZ          string            `json:"availability_zone"`
		} `json:"volume"`
	}
	if err := decodeBody(r, &body); err != nil {
		return err
	}
	b := body.Volume
	l.mu.Lock()
	defer l.mu.Unlock()
	projectID := r.PathValue("project")
	p := l.st.Projects[projectID]
	if p == nil {
		return errNotFound("Project %s could not be found.", projectID)
	}
	v := &volume{ID: newID(), Name: b.Name, Description: b.Description, ProjectID: projectID, UserID: c.tok.UserID,
		Status: "creating", Metadata: b.Metadata, AZ: b.AZ, Created: time.Now()}
	v.Updated = v.Created
	if v.Metadata == nil {
		v.Metadata = map[string]string{}
	}
	if v.AZ == "" {
		v.AZ = "nova"
	}
	var src diskRef
	minSize := 0
	switch {
	case b.SnapshotID != "":
		sn := l.st.Snapshots[b.SnapshotID]
		if sn == nil || (!c.admin() && sn.ProjectID != c.tok.ProjectID) {
			return errNotFound("Snapshot %s could not be found.", b.SnapshotID)
		}
		if sn.Status != "available" {
			return errBadRequest("Invalid snapshot: Originating snapshot status must be one of 'available' values")
		}
		v.SnapshotID, src, minSize = sn.ID, l.snapshotRef(sn), sn.Size
		if ov := l.st.Volumes[sn.VolumeID]; ov != nil {
			v.TypeID, v.Bootable = ov.TypeID, ov.Bootable
		}
	case b.SourceVolID != "":
		sv, err := l.visibleVolume(c, b.SourceVolID)
		if err != nil {
			return err
		}
		if sv.Status != "available" {
			return errBadRequest("Invalid volume: Volume %s status must be available, but current status is: %s.", sv.ID, sv.Status)
		}
		v.SourceVolID, src, minSize, v.TypeID, v.Bootable = sv.ID, l.volumeRef(sv), sv.Size, sv.TypeID, sv.Bootable
	case b.ImageRef != "":
		im := l.st.Images[b.ImageRef]
		if im == nil {
			return errBadRequest("Invalid image identifier or unable to access requested image.")
		}
		v.ImageID, v.Bootable, minSize = im.ID, true, im.MinDisk
	}
	switch {
	case b.Size != nil:
		v.Size = *b.Size
	case minSize > 0:
		v.Size = minSize
	default:
		return errBadRequest("Invalid input for field/attribute size. Value: None. None is not of type 'integer', 'string'")
	}
	if v.Size <= 0 {
		return errBadRequest("Invalid input received: Volume size '%d' must be an integer and greater than 0.", v.Size)
	}
	if v.Size < minSize {
		return errBadRequest("Invalid input received: Volume size '%d'GB cannot be smaller than the snapshot size %dGB. They must be >= original snapshot size.", v.Size, minSize)
	}
	if b.VolumeType != "" {
		var t *volumeType
		for _, cand := range l.st.VolumeTypes {
			if cand.ID == b.VolumeType || cand.Name == b.VolumeType {
				t = cand
			}
		}
		if t == nil {
			return errNotFound("Volume type with name %s could not be found.", b.VolumeType)
		}
		v.TypeID = t.ID
	} else if v.TypeID == "" {
		v.TypeID = l.defaultTypeLocked().ID
	}
	vols, _, gigs := l.quotaUsedLocked(projectID)
	if vols+1 > p.Quota.Volumes {
		return overLimit("VolumeLimitExceeded: Maximum number of volumes allowed (%d) exceeded for quota 'volumes'.", p.Quota.Volumes)
	}
	if gigs+v.Size > p.Quota.Gigabytes {
		return overLimit("VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed gigabytes quota. Requested %dG, quota is %dG and %dG has been consumed.", v.Size, p.Quota.Gigabytes, gigs)
	}
	if err := l.placeVolumeLocked(v); err != nil {
		return err
	}
	l.st.Volumes[v.ID] = v
	if err := l.saveLocked(); err != nil {
		return err
	}
	id, size, dst, label := v.ID, v.Size, l.volumeRef(v), volumeLabel(v.Name, v.ID)
	format := l.opts.FormatDisks && v.ImageID == ""
	fail := l.takeBackendFaultLocked(VolumeCreate)
	l.async(func(ctx context.Context) {
		var err error
		if fail {
			err = errInjected
		} else {
			err = l.makeVolume(ctx, dst, src, size, format, label)
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if v := l.st.Volumes[id]; v != nil {
			v.Status, v.Updated = "available", time.Now()
			if err != nil {
				l.log.Error("lab cinder: create volume", "volume", id, "err", err)
				v.Status = "error"
			}
			_ = l.saveLocked()
		}
	})
	l.writeJSON(w, http.StatusAccepted, map[string]any{"volume": l.volumeView(v, c)})
	return nil
}

func (l *Lab) deleteVolume(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, err := l.visibleVolume(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	hasSnaps := false
	for _, s := range l.st.Snapshots {
		if s.VolumeID == v.ID {
			hasSnaps = true
		}
	}
	switch v.Status {
	case "available", "error", "error_restoring", "error_extending", "error_managing":
	default:
		hasSnaps = true
	}
	if hasSnaps || v.ServerID != "" {
		return errBadRequest("Invalid volume: Volume status must be available or error or error_restoring or error_extending or error_managing and must not be migrating, attached, belong to a group, have snapshots, awaiting a transfer, or be disassociated from snapshots after volume transfer.")
	}
	v.Status, v.Updated = "deleting", time.Now()
	if err := l.saveLocked(); err != nil {
		return err
	}
	id, ref := v.ID, l.volumeRef(v)
	l.async(func(ctx context.Context) {
		err := l.removeVolume(ctx, ref)
		l.mu.Lock()
		defer l.mu.Unlock()
		if err != nil {
			l.log.Error("lab cinder: delete volume", "volume", id, "err", err)
			if v := l.st.Volumes[id]; v != nil {
				v.Status = "error_deleting"
			}
		} else {
			delete(l.st.Volumes, id)
		}
		_ = l.saveLocked()
	})
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// volumeAction serves Cinder's os-initialize_connection and
// os-terminate_connection, the calls os-brick and cinder-backup make to reach
// a volume's bytes. The lab's volumes are qcow2 files every lab host can
// read, so the connection is os-brick's "local" type: data.device_path is
// the file, data.format its format, and data.hosts (a lab addition, as an
// NFS export names the hosts that mount it) the compute hosts where the
// path is valid.
func (l *Lab) volumeAction(w http.ResponseWriter, r *http.Request, c *call) error {
	var body map[string]json.RawMessage
	if err := decodeBody(r, &body); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	v, err := l.visibleVolume(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	switch {
	case body["os-initialize_connection"] != nil:
		var a struct {
			Connector map[string]any `json:"connector"`
		}
		if err := json.Unmarshal(body["os-initialize_connection"], &a); err != nil || a.Connector == nil {
			return errBadRequest("Invalid input for field/attribute connector. Value: None. None is not of type 'object'")
		}
		switch v.Status {
		case "available", "in-use", "reserved", "attaching", "maintenance":
		default:
			return errBadRequest("Invalid volume: Volume status must be available or in-use, but current status is: %s.", v.Status)
		}
		typ, data := l.connectionLocked(v)
		l.writeJSON(w, http.StatusOK, map[string]any{"connection_info": map[string]any{"driver_volume_type": typ, "data": data}})
		return nil
	case body["os-terminate_connection"] != nil:
		// As Cinder since the fix of bug 2004555 (in Zed's updates): a
		// user may not end the connection of a volume a server uses.
		if v.Status == "in-use" && v.ServerID != "" {
			return errConflict("ConflictNovaUsingAttachment: Detach volume from instance %s using the Compute API", v.ServerID)
		}
		w.WriteHeader(http.StatusAccepted)
		return nil
	}
	keys := make([]string, 0, len(body))
	for k := range body {
		keys = append(keys, k)
	}
	return errBadRequest("There is no such action: %v", keys)
}

// connectionLocked is a volume's connection: os-brick's "local" type for a
// qcow2 file, Cinder's RBD driver's "rbd" for an RBD image.
func (l *Lab) connectionLocked(v *volume) (string, map[string]any) {
	if v.RBD != "" {
		return "rbd", l.rbd.connectionData(v.RBD, v.ID)
	}
	return "local", map[string]any{
		"device_path": l.abs(v.Path), "format": "qcow2", "volume_id": v.ID, "name": "volume-" + v.ID,
		"access_mode": "rw", "encrypted": false, "hosts": l.opts.Hosts,
	}
}

// showCinderAttachment serves Cinder's attachment show (3.27+): the attachment
// with its connection info, flattened as Cinder stores it (the data keys
// beside driver_volume_type). It is how a backup tool learns, without
// changing anything, where an attached volume's bytes are.
func (l *Lab) showCinderAttachment(w http.ResponseWriter, r *http.Request, c *call) error {
	if c.mv < 27 {
		return errNotFound("The resource could not be found.")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	id := r.PathValue("id")
	for _, v := range l.st.Volumes {
		if v.AttachmentID != id || v.ServerID == "" || (!c.admin() && v.ProjectID != c.tok.ProjectID) {
			continue
		}
		typ, info := l.connectionLocked(v)
		info["driver_volume_type"] = typ
		info["attachment_id"] = id
		l.writeJSON(w, http.StatusOK, map[string]any{"attachment": map[string]any{
			"id": id, "volume_id": v.ID, "instance": v.ServerID, "status": "attached", "attach_mode": "rw",
			"attached_at": cinderTime(v.AttachedAt), "detached_at": nil, "connection_info": info,
		}})
		return nil
	}
	return errNotFound("Volume attachment %s could not be found.", id)
}

func (l *Lab) volumeMetadata(w http.ResponseWriter, r *http.Request, c *call) error {
	return l.metadata(w, r, func() (*map[string]string, func(), error) {
		v, err := l.visibleVolume(c, r.PathValue("id"))
		if err != nil {
			return nil, nil, err
		}
		return &v.Metadata, func() { v.Updated = time.Now() }, nil
	})
}

// metadata serves GET (show), PUT (replace) and POST (merge) of a
// resource's metadata, as Nova and Cinder do. find runs under the lab's
// lock and returns the resource's metadata and what to do when it changes.
func (l *Lab) metadata(w http.ResponseWriter, r *http.Request, find func() (*map[string]string, func(), error)) error {
	var body struct {
		Metadata map[string]string `json:"metadata"`
	}
	if r.Method != http.MethodGet {
		if err := decodeBody(r, &body); err != nil {
			return err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	md, touched, err := find()
	if err != nil {
		return err
	}
	switch r.Method {
	case http.MethodPut:
		*md = body.Metadata
	case http.MethodPost:
		if *md == nil {
			*md = map[string]string{}
		}
		for k, val := range body.Metadata {
			(*md)[k] = val
		}
	}
	if r.Method != http.MethodGet {
		touched()
		if err := l.saveLocked(); err != nil {
			return err
		}
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"metadata": nonNilMap(*md)})
	return nil
}

// snapshotView renders a snapshot; extended adds what Cinder's extended
// snapshot attributes extension adds to show and list (not to create).
func (l *Lab) snapshotView(s *snapshot, c *call, extended bool) map[string]any {
	out := map[string]any{
		"id": s.ID, "name": s.Name, "description": nullIfEmpty(s.Description), "status": s.Status, "size": s.Size,
		"volume_id": s.VolumeID, "created_at": cinderTime(s.Created), "updated_at": cinderTime(s.Updated),
		"metadata": nonNilMap(s.Metadata),
	}
	if extended && (c.admin() || s.ProjectID == c.tok.ProjectID) {
		progress := "0%"
		if s.Status == "available" {
			progress = "100%"
		}
		out["os-extended-snapshot-attributes:progress"] = progress
		out["os-extended-snapshot-attributes:project_id"] = s.ProjectID
	}
	if c.mv >= 14 {
		out["group_snapshot_id"] = nil
	}
	if c.mv >= 41 {
		out["user_id"] = s.UserID
	}
	if c.mv >= 65 {
		out["consumes_quota"] = true
	}
	return out
}

func (l *Lab) visibleSnapshot(c *call, id string) (*snapshot, error) {
	s := l.st.Snapshots[id]
	if s == nil || (!c.admin() && s.ProjectID != c.tok.ProjectID) {
		return nil, errNotFound("Snapshot %s could not be found.", id)
	}
	return s, nil
}

func (l *Lab) listSnapshots(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	all := c.admin() && boolQuery(r, "all_tenants")
	l.mu.Lock()
	defer l.mu.Unlock()
	var ss []*snapshot
	for _, s := range l.st.Snapshots {
		if !all && s.ProjectID != r.PathValue("project") {
			continue
		}
		if vid := q.Get("volume_id"); vid != "" && s.VolumeID != vid {
			continue
		}
		if n := q.Get("name"); n != "" && s.Name != n {
			continue
		}
		if st := q.Get("status"); st != "" && s.Status != st {
			continue
		}
		ss = append(ss, s)
	}
	sort.Slice(ss, func(i, j int) bool { return ss[i].Created.After(ss[j].Created) })
	out := []any{}
	for _, s := range ss {
		out = append(out, l.snapshotView(s, c, strings.HasSuffix(r.URL.Path, "/detail")))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"snapshots": out})
	return nil
}

func (l *Lab) showSnapshot(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.visibleSnapshot(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"snapshot": l.snapshotView(s, c, true)})
	return nil
}

// parseForce reads Cinder's force flag, a boolean or a string ("True").
func parseForce(raw json.RawMessage) (force, given bool, err error) {
	if len(raw) == 0 || string(raw) == "null" {
		return false, false, nil
	}
	var b bool
	if json.Unmarshal(raw, &b) == nil {
		return b, true, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if v, perr := strconv.ParseBool(strings.ToLower(s)); perr == nil {
			return v, true, nil
		}
	}
	return false, true, errBadRequest("Invalid value '%s' for force.", strings.Trim(string(raw), `"`))
}

func (l *Lab) createSnapshot(w http.ResponseWriter, r *http.Request, c *call) error {
	var body struct {
		Snapshot struct {
			VolumeID    string            `json:"volume_id"`
			Force       json.RawMessage   `json:"force"`
			Name        string            `json:"name"`
			Description string            `json:"description"`
			Metadata    map[string]string `json:"metadata"`
		} `json:"snapshot"`
	}
	if err := decodeBody(r, &body); err != nil {
		return err
	}
	b := body.Snapshot
	force, forceGiven, err := parseForce(b.Force)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	v, err := l.visibleVolume(c, b.VolumeID)
	if err != nil {
		return err
	}
	// Cinder: an in-use volume needs force=True before 3.66; from 3.66 on
	// force is implied and an explicit False is refused.
	if c.mv >= 66 {
		if forceGiven && !force {
			return errBadRequest("Invalid value 'False' for force. Since microversion 3.66 the force flag is not allowed to be False.")
		}
		force = true
	}
	if v.Status != "available" && !(force && v.Status == "in-use") {
		return errBadRequest("Invalid volume: Volume %s status must be available, but current status is: %s.", v.ID, v.Status)
	}
	p := l.st.Projects[v.ProjectID]
	_, snaps, gigs := l.quotaUsedLocked(v.ProjectID)
	if snaps+1 > p.Quota.Snapshots {
		return overLimit("SnapshotLimitExceeded: Maximum number of snapshots allowed (%d) exceeded", p.Quota.Snapshots)
	}
	if gigs+v.Size > p.Quota.Gigabytes {
		return overLimit("VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed gigabytes quota. Requested %dG, quota is %dG and %dG has been consumed.", v.Size, p.Quota.Gigabytes, gigs)
	}
	s := &snapshot{ID: newID(), Name: b.Name, Description: b.Description, ProjectID: v.ProjectID, UserID: c.tok.UserID,
		VolumeID: v.ID, Size: v.Size, Status: "creating", Metadata: b.Metadata, Created: time.Now()}
	s.Updated = s.Created
	if s.Metadata == nil {
		s.Metadata = map[string]string{}
	}
	if v.RBD != "" {
		// Cinder's RBD driver: an RBD snapshot of the volume's image.
		s.RBD = v.RBD + "@snapshot-" + s.ID
	} else {
		s.Path = filepath.Join("snapshots", "snapshot-"+s.ID+".qcow2")
	}
	l.st.Snapshots[s.ID] = s
	// The copy source: the running QEMU's drive for an attached volume of an
	// active server (a point-in-time backup job), else the file itself.
	var ref *InstanceRef
	if srv := l.st.Servers[v.ServerID]; srv != nil && v.Status == "in-use" && srv.VMState == vmActive {
		ref = &InstanceRef{srv.Host, srv.InstanceName}
	}
	if err := l.saveLocked(); err != nil {
		return err
	}
	id, volID, src, dst, rbdSnap := s.ID, v.ID, l.abs(v.Path), l.abs(s.Path), s.RBD
	fail := l.takeBackendFaultLocked(SnapshotCreate)
	l.async(func(ctx context.Context) {
		var err error
		if rbdSnap == "" {
			err = os.MkdirAll(filepath.Dir(dst), 0o755)
		}
		if fail {
			err = errInjected
		} else if rbdSnap != "" {
			err = l.snapRBD(ctx, rbdSnap, true)
		} else if err == nil && ref != nil {
			err = l.opts.Compute.CopyDisk(ctx, *ref, VolumeNode(volID), dst)
		} else if err == nil {
			err = copyQcow2(ctx, src, dst, 0)
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if s := l.st.Snapshots[id]; s != nil {
			s.Status, s.Updated = "available", time.Now()
			if err != nil {
				l.log.Error("lab cinder: create snapshot", "snapshot", id, "volume", volID, "err", err)
				s.Status = "error"
			}
			_ = l.saveLocked()
		}
	})
	l.writeJSON(w, http.StatusAccepted, map[string]any{"snapshot": l.snapshotView(s, c, false)})
	return nil
}

func (l *Lab) deleteSnapshot(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.visibleSnapshot(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if s.Status != "available" && s.Status != "error" && s.Status != "error_deleting" {
		return errBadRequest("Invalid snapshot: Volume Snapshot status must be available or error or error_deleting")
	}
	s.Status, s.Updated = "deleting", time.Now()
	if err := l.saveLocked(); err != nil {
		return err
	}
	id, path, rbdSnap := s.ID, l.abs(s.Path), s.RBD
	l.async(func(ctx context.Context) {
		var err error
		if rbdSnap != "" {
			err = l.snapRBD(ctx, rbdSnap, false)
		} else if err = os.Remove(path); os.IsNotExist(err) {
			err = nil
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if err != nil {
			l.log.Error("lab cinder: delete snapshot", "snapshot", id, "err", err)
			if s := l.st.Snapshots[id]; s != nil {
				s.Status = "error_deleting"
			}
		} else {
			delete(l.st.Snapshots, id)
		}
		_ = l.saveLocked()
	})
	w.WriteHeader(http.StatusAccepted)
	return nil
}

func volumeTypeView(t *volumeType) map[string]any {
	return map[string]any{
		"id": t.ID, "name": t.Name, "description": nullIfEmpty(t.Description), "is_public": t.IsPublic,
		"os-volume-type-access:is_public": t.IsPublic, "extra_specs": nonNilMap(t.ExtraSpecs), "qos_specs_id": nil,
	}
}

func (l *Lab) listVolumeTypes(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ts []*volumeType
	for _, t := range l.st.VolumeTypes {
		ts = append(ts, t)
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Name < ts[j].Name })
	out := []any{}
	for _, t := range ts {
		out = append(out, volumeTypeView(t))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"volume_types": out})
	return nil
}

func (l *Lab) showVolumeType(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	id := r.PathValue("id")
	if id == "default" {
		l.writeJSON(w, http.StatusOK, map[string]any{"volume_type": volumeTypeView(l.defaultTypeLocked())})
		return nil
	}
	for _, t := range l.st.VolumeTypes {
		if t.ID == id {
			l.writeJSON(w, http.StatusOK, map[string]any{"volume_type": volumeTypeView(t)})
			return nil
		}
	}
	return errNotFound("Volume type %s could not be found.", id)
}
