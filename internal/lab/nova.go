package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

var novaSvc = &service{
	name: "compute", mvHeader: "compute", legacyMV: "X-OpenStack-Nova-API-Version",
	major: 2, minMinor: 1, maxMinor: 93, errBody: novaStyleError, computeReqID: true,
}

func (l *Lab) novaRoutes(mux *http.ServeMux) {
	h := func(fn func(http.ResponseWriter, *http.Request, *call) error) http.HandlerFunc {
		return l.handler(novaSvc, fn)
	}
	versions := func(w http.ResponseWriter, r *http.Request) {
		l.writeJSON(w, http.StatusOK, map[string]any{"versions": []any{l.novaVersion()}})
	}
	mux.HandleFunc("GET /compute", versions)
	mux.HandleFunc("GET /compute/{$}", versions)
	version := func(w http.ResponseWriter, r *http.Request) {
		l.writeJSON(w, http.StatusOK, map[string]any{"version": l.novaVersion()})
	}
	mux.HandleFunc("GET /compute/v2.1", version)
	mux.HandleFunc("GET /compute/v2.1/{$}", version)
	p := "/compute/v2.1"
	mux.HandleFunc("GET "+p+"/servers", h(l.listServers))
	mux.HandleFunc("GET "+p+"/servers/detail", h(l.listServers))
	mux.HandleFunc("POST "+p+"/servers", h(l.createServer))
	mux.HandleFunc("GET "+p+"/servers/{id}", h(l.showServer))
	mux.HandleFunc("DELETE "+p+"/servers/{id}", h(l.deleteServer))
	mux.HandleFunc("POST "+p+"/servers/{id}/action", h(l.serverAction))
	mux.HandleFunc("GET "+p+"/servers/{id}/metadata", h(l.serverMetadata))
	mux.HandleFunc("POST "+p+"/servers/{id}/metadata", h(l.serverMetadata))
	mux.HandleFunc("PUT "+p+"/servers/{id}/metadata", h(l.serverMetadata))
	mux.HandleFunc("GET "+p+"/servers/{id}/metadata/{key}", h(l.serverMetadataItem))
	mux.HandleFunc("PUT "+p+"/servers/{id}/metadata/{key}", h(l.serverMetadataItem))
	mux.HandleFunc("DELETE "+p+"/servers/{id}/metadata/{key}", h(l.serverMetadataItem))
	mux.HandleFunc("GET "+p+"/servers/{id}/tags", h(l.serverTags))
	mux.HandleFunc("PUT "+p+"/servers/{id}/tags", h(l.serverTags))
	mux.HandleFunc("DELETE "+p+"/servers/{id}/tags", h(l.serverTags))
	mux.HandleFunc("GET "+p+"/servers/{id}/tags/{tag}", h(l.serverTag))
	mux.HandleFunc("PUT "+p+"/servers/{id}/tags/{tag}", h(l.serverTag))
	mux.HandleFunc("DELETE "+p+"/servers/{id}/tags/{tag}", h(l.serverTag))
	mux.HandleFunc("GET "+p+"/servers/{id}/os-volume_attachments", h(l.listAttachments))
	mux.HandleFunc("POST "+p+"/servers/{id}/os-volume_attachments", h(l.attachVolume))
	mux.HandleFunc("GET "+p+"/servers/{id}/os-volume_attachments/{vol}", h(l.showAttachment))
	mux.HandleFunc("DELETE "+p+"/servers/{id}/os-volume_attachments/{vol}", h(l.detachVolume))
	mux.HandleFunc("GET "+p+"/flavors", h(l.listFlavors))
	mux.HandleFunc("GET "+p+"/flavors/detail", h(l.listFlavors))
	mux.HandleFunc("GET "+p+"/flavors/{id}", h(l.showFlavor))
	mux.HandleFunc("GET "+p+"/flavors/{id}/os-extra_specs", h(l.flavorExtraSpecs))
	mux.HandleFunc("GET "+p+"/os-server-groups", h(l.listServerGroups))
	mux.HandleFunc("POST "+p+"/os-server-groups", h(l.createServerGroup))
	mux.HandleFunc("GET "+p+"/os-server-groups/{id}", h(l.showServerGroup))
	mux.HandleFunc("DELETE "+p+"/os-server-groups/{id}", h(l.deleteServerGroup))
}

func (l *Lab) novaVersion() map[string]any {
	return map[string]any{
		"id": "v2.1", "status": "CURRENT", "version": fmt.Sprintf("2.%d", novaSvc.maxMinor), "min_version": "2.1",
		"updated":     "2013-07-23T11:33:21Z",
		"links":       []any{map[string]any{"rel": "self", "href": l.base + "/compute/v2.1/"}},
		"media-types": []any{map[string]any{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}},
	}
}

// novaStatus maps vm_state (and task_state) to the API's status.
func novaStatus(s *server) string {
	switch s.VMState {
	case vmActive:
		switch s.TaskState {
		case "rebooting":
			return "REBOOT"
		case "rebooting_hard":
			return "HARD_REBOOT"
		case "resize_prep":
			return "RESIZE"
		}
		return "ACTIVE"
	case vmResized:
		return "VERIFY_RESIZE"
	case vmStopped:
		switch s.TaskState {
		case "rebooting_hard":
			return "HARD_REBOOT"
		case "resize_prep":
			return "RESIZE"
		}
		return "SHUTOFF"
	case vmBuild:
		return "BUILD"
	case vmError:
		return "ERROR"
	case vmDeleted:
		return "DELETED"
	}
	return "UNKNOWN"
}

func powerState(s *server) int {
	switch s.VMState {
	case vmActive:
		return 1
	case vmResized:
		if s.ResizedFrom == vmActive {
			return 1
		}
		return 4
	case vmStopped:
		return 4
	}
	return 0
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// serverView renders a server as Nova does for the caller's microversion
// and role (admins see the OS-EXT-SRV-ATTR fields).
func (l *Lab) serverView(s *server, c *call, detail bool) map[string]any {
	self := l.base + "/compute/v2.1/servers/" + s.ID
	links := []any{map[string]any{"rel": "self", "href": self}, map[string]any{"rel": "bookmark", "href": strings.Replace(self, "/v2.1", "", 1)}}
	if !detail {
		return map[string]any{"id": s.ID, "name": s.Name, "links": links}
	}
	st := l.st
	v := map[string]any{
		"id": s.ID, "name": s.Name, "links": links, "status": novaStatus(s),
		"tenant_id": s.ProjectID, "user_id": s.UserID, "metadata": nonNilMap(s.Metadata),
		"created": timeStr(s.Created), "updated": timeStr(s.Updated),
		"accessIPv4": "", "accessIPv6": "", "progress": 0,
		"key_name": nullIfEmpty(s.KeyName), "config_drive": map[bool]string{true: "True", false: ""}[s.ConfigDrive],
		"OS-DCF:diskConfig":           "MANUAL",
		"OS-EXT-AZ:availability_zone": s.AZ,
		"OS-EXT-STS:power_state":      powerState(s),
		"OS-EXT-STS:task_state":       nullIfEmpty(s.TaskState),
		"OS-EXT-STS:vm_state":         s.VMState,
		"OS-SRV-USG:launched_at":      nil,
		"OS-SRV-USG:terminated_at":    nil,
	}
	if !s.LaunchedAt.IsZero() {
		v["OS-SRV-USG:launched_at"] = s.LaunchedAt.UTC().Format("2006-01-02T15:04:05.000000")
	}
	if s.Host != "" {
		sum := sha256.Sum224([]byte(s.ProjectID + s.Host))
		v["hostId"] = hex.EncodeToString(sum[:])
	} else {
		v["hostId"] = ""
	}
	if s.BootVolume != "" || s.ImageID == "" {
		v["image"] = ""
	} else {
		v["image"] = map[string]any{"id": s.ImageID, "links": []any{map[string]any{"rel": "bookmark", "href": l.base + "/compute/images/" + s.ImageID}}}
	}
	f := st.Flavors[s.FlavorID]
	if c.mv >= 47 && f != nil {
		fv := map[string]any{"vcpus": f.VCPUs, "ram": f.RAM, "disk": f.Disk, "ephemeral": f.Ephemeral, "swap": f.Swap, "original_name": f.Name}
		fv["extra_specs"] = nonNilMap(f.ExtraSpecs)
		v["flavor"] = fv
	} else {
		v["flavor"] = map[string]any{"id": s.FlavorID, "links": []any{map[string]any{"rel": "bookmark", "href": l.base + "/compute/flavors/" + s.FlavorID}}}
	}
	addrs := map[string]any{}
	for _, p := range sortedPorts(st, s.ID) {
		n := st.Networks[p.NetworkID]
		if n == nil {
			continue
		}
		list, _ := addrs[n.Name].([]any)
		for _, ip := range p.FixedIPs {
			list = append(list, map[string]any{"version": 4, "addr": ip.IPAddress, "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": p.MAC})
		}
		addrs[n.Name] = list
	}
	v["addresses"] = addrs
	vols := []any{}
	for _, a := range s.Attachments {
		av := map[string]any{"id": a.VolumeID}
		if c.mv >= 3 {
			av["delete_on_termination"] = a.DeleteOnTermination
		}
		vols = append(vols, av)
	}
	v["os-extended-volumes:volumes_attached"] = vols
	sgs := []any{}
	for _, name := range s.SecurityGroups {
		sgs = append(sgs, map[string]any{"name": name})
	}
	if len(sgs) > 0 {
		v["security_groups"] = sgs
	}
	if c.admin() {
		v["OS-EXT-SRV-ATTR:host"] = nullIfEmpty(s.Host)
		v["OS-EXT-SRV-ATTR:instance_name"] = s.InstanceName
		v["OS-EXT-SRV-ATTR:hypervisor_hostname"] = nullIfEmpty(s.Host)
		if c.mv >= 3 {
			v["OS-EXT-SRV-ATTR:reservation_id"] = "r-" + s.ID[:8]
			v["OS-EXT-SRV-ATTR:launch_index"] = 0
			v["OS-EXT-SRV-ATTR:hostname"] = hostname(s.Name)
			v["OS-EXT-SRV-ATTR:kernel_id"] = ""
			v["OS-EXT-SRV-ATTR:ramdisk_id"] = ""
			v["OS-EXT-SRV-ATTR:root_device_name"] = "/dev/vda"
			v["OS-EXT-SRV-ATTR:user_data"] = nullIfEmpty(s.UserData)
		}
	} else if c.mv >= 90 {
		v["OS-EXT-SRV-ATTR:hostname"] = hostname(s.Name)
	}
	if c.admin() && c.mv >= 16 {
		// The compute service of the server's host: the lab's are up.
		v["host_status"] = map[bool]string{true: "UP", false: ""}[s.Host != ""]
	}
	if c.mv >= 9 {
		v["locked"] = false
	}
	if c.mv >= 19 {
		v["description"] = nullIfEmpty(s.Description)
	}
	if c.mv >= 26 {
		v["tags"] = nonNilSlice(s.Tags)
	}
	if c.mv >= 63 {
		v["trusted_image_certificates"] = nil
	}
	if c.mv >= 73 {
		v["locked_reason"] = nil
	}
	if c.mv >= 71 {
		var groups []string
		for _, g := range st.ServerGroups {
			if contains(g.Members, s.ID) {
				groups = append(groups, g.ID)
			}
		}
		v["server_groups"] = nonNilSlice(groups)
	}
	if s.VMState == vmError && s.Fault != "" {
		v["fault"] = map[string]any{"code": 500, "created": timeStr(s.Updated), "message": s.Fault}
	}
	return v
}

func hostname(name string) string {
	h := strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9-]+`).ReplaceAllString(name, "-"))
	return strings.Trim(h, "-")
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func nonNilSlice(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func sortedPorts(st *state, deviceID string) []*port {
	var ps []*port
	for _, p := range st.Ports {
		if p.DeviceID == deviceID {
			ps = append(ps, p)
		}
	}
	sort.Slice(ps, func(i, j int) bool {
		return ps[i].Created.Before(ps[j].Created) || ps[i].Created.Equal(ps[j].Created) && ps[i].ID < ps[j].ID
	})
	return ps
}

// visibleServer returns the server if the caller may see it (members only
// see their project's servers; others are "not found", as in Nova).
func (l *Lab) visibleServer(c *call, id string) (*server, error) {
	s := l.st.Servers[id]
	if s == nil || (!c.admin() && s.ProjectID != c.tok.ProjectID) {
		return nil, errNotFound("Instance %s could not be found.", id)
	}
	return s, nil
}

func (l *Lab) listServers(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	detail := strings.HasSuffix(r.URL.Path, "/detail")
	var nameRe *regexp.Regexp
	if n := q.Get("name"); n != "" {
		re, err := regexp.Compile(n)
		if err != nil {
			return errBadRequest("Invalid name filter %q: %v", n, err)
		}
		nameRe = re
	}
	allTenants := c.admin() && (boolQuery(r, "all_tenants") || q.Has("all_tenants") && q.Get("all_tenants") == "")
	projectFilter := q.Get("project_id")
	if projectFilter == "" {
		projectFilter = q.Get("tenant_id")
	}
	if !c.admin() {
		projectFilter = c.tok.ProjectID
	} else if !allTenants && projectFilter == "" {
		projectFilter = c.tok.ProjectID
	}
	split := func(k string) []string {
		if v := q.Get(k); v != "" {
			return strings.Split(v, ",")
		}
		return nil
	}
	tagsAll, tagsAny, notTags := split("tags"), split("tags-any"), split("not-tags")
	l.mu.Lock()
	defer l.mu.Unlock()
	var list []*server
	for _, s := range l.st.Servers {
		if projectFilter != "" && s.ProjectID != projectFilter {
			continue
		}
		if nameRe != nil && !nameRe.MatchString(s.Name) {
			continue
		}
		if st := q.Get("status"); st != "" && !strings.EqualFold(st, novaStatus(s)) {
			continue
		}
		if h := q.Get("host"); h != "" && c.admin() && h != s.Host {
			continue
		}
		if f := q.Get("flavor"); f != "" && f != s.FlavorID {
			continue
		}
		if im := q.Get("image"); im != "" && im != s.ImageID {
			continue
		}
		if !hasAll(s.Tags, tagsAll) || (len(tagsAny) > 0 && !hasAny(s.Tags, tagsAny)) || (len(notTags) > 0 && hasAll(s.Tags, notTags)) {
			continue
		}
		list = append(list, s)
	}
	sort.Slice(list, func(i, j int) bool {
		if !list[i].Created.Equal(list[j].Created) {
			return list[i].Created.After(list[j].Created)
		}
		return list[i].ID > list[j].ID
	})
	if m := q.Get("marker"); m != "" {
		found := false
		for i, s := range list {
			if s.ID == m {
				list, found = list[i+1:], true
				break
			}
		}
		if !found {
			return errBadRequest("marker [%s] not found", m)
		}
	}
	resp := map[string]any{}
	if lim, err := strconv.Atoi(q.Get("limit")); err == nil && lim > 0 && lim < len(list) {
		list = list[:lim]
		nq := r.URL.Query()
		nq.Set("marker", list[len(list)-1].ID)
		resp["servers_links"] = []any{map[string]any{"rel": "next", "href": l.base + r.URL.Path + "?" + nq.Encode()}}
	}
	out := []any{}
	for _, s := range list {
		v := l.serverView(s, c, detail)
		// Nova answers server_groups only in show, rebuild and update,
		// never in a list (seen on Zed).
		delete(v, "server_groups")
		out = append(out, v)
	}
	resp["servers"] = out
	l.writeJSON(w, http.StatusOK, resp)
	return nil
}

func hasAll(have, want []string) bool {
	for _, t := range want {
		if !contains(have, t) {
			return false
		}
	}
	return true
}

func hasAny(have, want []string) bool {
	for _, t := range want {
		if contains(have, t) {
			return true
		}
	}
	return false
}

func (l *Lab) showServer(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.visibleServer(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"server": l.serverView(s, c, true)})
	return nil
}

type bdmV2 struct {
	BootIndex           *json.Number `json:"boot_index"`
	UUID                string       `json:"uuid"`
	SourceType          string       `json:"source_type"`
	DestinationType     string       `json:"destination_type"`
	VolumeSize          int          `json:"volume_size"`
	DeleteOnTermination bool         `json:"delete_on_termination"`
	DeviceName          string       `json:"device_name"`
	Tag                 string       `json:"tag"`
	VolumeType          string       `json:"volume_type"`
	GuestFormat         string       `json:"guest_format"`
}

// localEphemeral reports a mapping of an ephemeral disk in the instance
// directory (Nova's new_format_is_ephemeral: source blank, destination
// local, not swap), which Nova makes as disk.eph<N>, not as a volume.
func (b bdmV2) localEphemeral() bool {
	return b.SourceType == "blank" && b.DestinationType == "local" && b.GuestFormat != "swap"
}

type createServerReq struct {
	Server struct {
		Name           string                  `json:"name"`
		ImageRef       *string                 `json:"imageRef"` // absent and "" differ to Nova's mapping checks
		FlavorRef      string                  `json:"flavorRef"`
		AZ             string                  `json:"availability_zone"`
		KeyName        string                  `json:"key_name"`
		Metadata       map[string]string       `json:"metadata"`
		UserData       string                  `json:"user_data"`
		ConfigDrive    bool                    `json:"config_drive"`
		Description    string                  `json:"description"`
		Networks       json.RawMessage         `json:"networks"`
		SecurityGroups []struct{ Name string } `json:"security_groups"`
		BDM            []bdmV2                 `json:"block_device_mapping_v2"`
		Tags           []string                `json:"tags"`
	} `json:"server"`
	Hints struct {
		Group string `json:"group"`
	} `json:"os:scheduler_hints"`
}

type netReq struct {
	UUID    string `json:"uuid"`
	Port    string `json:"port"`
	FixedIP string `json:"fixed_ip"`
	Tag     string `json:"tag"`
}

func (l *Lab) createServer(w http.ResponseWriter, r *http.Request, c *call) error {
	var req createServerReq
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	rs := req.Server
	if rs.Name == "" {
		return errBadRequest("Invalid input for field/attribute name. Value: . '' is too short")
	}
	var nets []netReq
	var netMode string
	if len(rs.Networks) > 0 {
		if err := json.Unmarshal(rs.Networks, &netMode); err != nil {
			if err := json.Unmarshal(rs.Networks, &nets); err != nil {
				return errBadRequest("Invalid input for field/attribute networks: %v", err)
			}
		}
	} else if c.mv >= 37 {
		return errBadRequest("Invalid input for field/attribute server. Value: ... 'networks' is a required property")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.st
	f := st.Flavors[rs.FlavorRef]
	if f == nil {
		for _, cand := range st.Flavors {
			if cand.Name == rs.FlavorRef {
				f = cand
			}
		}
	}
	if f == nil {
		return errBadRequest("Flavor %s could not be found.", rs.FlavorRef)
	}
	var bootVol *bdmV2
	var extraBDM []bdmV2
	var ephemeralGB []int
	for i := range rs.BDM {
		b := rs.BDM[i]
		if b.SourceType == "" || b.DestinationType == "" && b.SourceType != "image" {
			return errBadRequest("Block Device Mapping is Invalid: source_type and destination_type are required.")
		}
		// As Nova (BlockDeviceDict): an image mapped to a local disk only as
		// the root disk of a request with imageRef (even "").
		if b.SourceType == "image" && b.DestinationType == "local" && (rs.ImageRef == nil || b.BootIndex == nil || b.BootIndex.String() != "0") {
			return errBadRequest("Block Device Mapping is Invalid: Mapping image to local is not supported.")
		}
		if b.SourceType == "blank" && b.DestinationType == "local" && b.GuestFormat == "swap" {
			continue // the flavor's swap disk (disk.swap), which the lab makes from the flavor
		}
		if b.localEphemeral() {
			// As Nova: the flavor's ephemeral size when the mapping
			// names none, and all of them together within the flavor's.
			size := b.VolumeSize
			if size == 0 {
				size = f.Ephemeral
			}
			ephemeralGB = append(ephemeralGB, size)
			continue
		}
		if b.BootIndex != nil && b.BootIndex.String() == "0" {
			bootVol = &rs.BDM[i]
		} else {
			extraBDM = append(extraBDM, b)
		}
	}
	// As Nova: with a block_device_mapping_v2, the root disk must be in it
	// (boot_index 0), an image-booted server's too (python-novaclient
	// inserts the image mapping); imageRef alone makes the root mapping only
	// when there is no block_device_mapping_v2.
	if total := sum(ephemeralGB); total > f.Ephemeral {
		return errBadRequest("Ephemeral disks requested are larger than the instance type allows. If no size is given in one block device mapping, flavor ephemeral size will be used.")
	}
	if bootVol == nil && len(rs.BDM) > 0 {
		return errBadRequest("Block Device Mapping is Invalid: Boot sequence for the instance and image/block device mapping combination is not valid.")
	}
	imageID := ""
	if rs.ImageRef != nil {
		imageID = *rs.ImageRef
	}
	if bootVol != nil && bootVol.SourceType == "image" {
		imageID = bootVol.UUID
	}
	if bootVol == nil || bootVol.SourceType == "image" {
		if imageID == "" {
			return errBadRequest("Block Device Mapping is Invalid: Boot sequence for the instance and image/block device mapping combination is not valid.")
		}
		im := st.Images[imageID]
		if im == nil || (im.Visibility != "public" && im.Owner != c.tok.ProjectID && !c.admin()) {
			return errBadRequest("Can not find requested image")
		}
	}
	if bootVol != nil && bootVol.SourceType != "image" {
		imageID = ""
	}
	// Volumes named by BDMs must exist, be the caller's and be available.
	for _, b := range rs.BDM {
		switch b.SourceType {
		case "volume":
			v := st.Volumes[b.UUID]
			if v == nil || v.ProjectID != c.tok.ProjectID {
				return errBadRequest("Block Device Mapping is Invalid: failed to get volume %s.", b.UUID)
			}
			if v.Status != "available" {
				return errBadRequest("Block Device Mapping is Invalid: Volume %s status must be available, but current status is: %s.", b.UUID, v.Status)
			}
		case "snapshot":
			sn := st.Snapshots[b.UUID]
			if sn == nil || sn.ProjectID != c.tok.ProjectID {
				return errBadRequest("Block Device Mapping is Invalid: failed to get snapshot %s.", b.UUID)
			}
			if sn.Status != "available" {
				return errBadRequest("Block Device Mapping is Invalid: snapshot %s is not available.", b.UUID)
			}
		case "blank", "image":
		default:
			return errBadRequest("Block Device Mapping is Invalid: unknown source_type %q.", b.SourceType)
		}
	}
	p := st.Projects[c.tok.ProjectID]
	used, cores, ram := 0, 0, 0
	for _, s := range st.Servers {
		if s.ProjectID == p.ID {
			used++
			if sf := st.Flavors[s.FlavorID]; sf != nil {
				cores += sf.VCPUs
				ram += sf.RAM
			}
		}
	}
	switch {
	case used+1 > p.Quota.Instances:
		return errForbidden("Quota exceeded for instances: Requested 1, but already used %d of %d instances", used, p.Quota.Instances)
	case cores+f.VCPUs > p.Quota.Cores:
		return errForbidden("Quota exceeded for cores: Requested %d, but already used %d of %d cores", f.VCPUs, cores, p.Quota.Cores)
	case ram+f.RAM > p.Quota.RAM:
		return errForbidden("Quota exceeded for ram: Requested %d, but already used %d of %d ram", f.RAM, ram, p.Quota.RAM)
	}
	var group *serverGroup
	if req.Hints.Group != "" {
		group = st.ServerGroups[req.Hints.Group]
		if group == nil || (group.ProjectID != c.tok.ProjectID && !c.admin()) {
			return errNotFound("Instance group %s could not be found.", req.Hints.Group)
		}
	}
	// Networks: resolve before creating anything.
	type plannedPort struct {
		existing *port
		net      *network
	}
	var planned []plannedPort
	if netMode == "auto" {
		for _, n := range st.Networks {
			if n.Name == Network {
				planned = append(planned, plannedPort{net: n})
			}
		}
	}
	for _, n := range nets {
		switch {
		case n.Port != "":
			pt := st.Ports[n.Port]
			if pt == nil || (pt.ProjectID != c.tok.ProjectID && !c.admin()) {
				return errBadRequest("Port id %s could not be found.", n.Port)
			}
			if pt.DeviceID != "" {
				return errConflict("Port %s is still in use.", n.Port)
			}
			planned = append(planned, plannedPort{existing: pt})
		default:
			nw := st.Networks[n.UUID]
			if nw == nil || (!nw.Shared && nw.ProjectID != c.tok.ProjectID && !c.admin()) {
				return errBadRequest("Network %s could not be found.", n.UUID)
			}
			planned = append(planned, plannedPort{net: nw})
		}
	}
	sgNames := []string{}
	for _, sg := range rs.SecurityGroups {
		sgNames = append(sgNames, sg.Name)
	}
	if len(sgNames) == 0 {
		sgNames = []string{"default"}
	}
	var sgIDs []string
	for _, name := range sgNames {
		found := ""
		for _, g := range st.SecGroups {
			if (g.Name == name || g.ID == name) && g.ProjectID == c.tok.ProjectID {
				found = g.ID
			}
		}
		if found == "" {
			return errBadRequest("Security group %s not found for project %s.", name, c.tok.ProjectID)
		}
		sgIDs = append(sgIDs, found)
	}
	now := time.Now()
	s := &server{
		ID: newID(), Name: rs.Name, ProjectID: c.tok.ProjectID, UserID: c.tok.UserID, FlavorID: f.ID,
		ImageID: imageID, KeyName: rs.KeyName, AZ: rs.AZ, ConfigDrive: rs.ConfigDrive, UserData: rs.UserData,
		Description: rs.Description, Metadata: rs.Metadata, Tags: rs.Tags, SecurityGroups: sgNames,
		VMState: vmBuild, TaskState: "scheduling", Created: now, Updated: now, EphemeralGB: ephemeralGB,
	}
	if s.Metadata == nil {
		s.Metadata = map[string]string{}
	}
	if s.AZ == "" {
		s.AZ = "nova"
	}
	s.Host = l.opts.Hosts[st.NextHost%len(l.opts.Hosts)]
	st.NextHost++
	s.InstanceName = fmt.Sprintf("instance-%08x", st.NextInst)
	st.NextInst++
	for i, pp := range planned {
		pt := pp.existing
		if pt == nil {
			var err error
			if pt, err = l.newPortLocked(pp.net, c.tok.ProjectID, sgIDs); err != nil {
				return err
			}
			pt.Created = now.Add(time.Duration(i) * time.Millisecond)
			pt.ByNova = true
		}
		pt.DeviceID, pt.DeviceOwner = s.ID, "compute:"+s.AZ
	}
	st.Servers[s.ID] = s
	if group != nil {
		group.Members = append(group.Members, s.ID)
	}
	if err := l.saveLocked(); err != nil {
		return err
	}
	var allBDM []bdmV2
	if bootVol != nil && bootVol.DestinationType == "volume" {
		allBDM = append(allBDM, *bootVol)
	}
	allBDM = append(allBDM, extraBDM...)
	id := s.ID
	l.async(func(ctx context.Context) { l.buildServer(ctx, id, allBDM) })
	l.writeJSON(w, http.StatusAccepted, map[string]any{"server": map[string]any{
		"id": s.ID, "links": l.serverView(s, c, false)["links"], "OS-DCF:diskConfig": "MANUAL",
		"security_groups": []any{map[string]any{"name": sgNames[0]}}, "adminPass": newToken()[6:18],
	}})
	return nil
}

// buildServer prepares the disks of a new server and boots it.
func (l *Lab) buildServer(ctx context.Context, id string, bdms []bdmV2) {
	fail := func(err error) {
		l.log.Error("lab nova: build failed", "server", id, "err", err)
		l.mu.Lock()
		defer l.mu.Unlock()
		if s := l.st.Servers[id]; s != nil {
			s.VMState, s.TaskState, s.Fault, s.Updated = vmError, "", err.Error(), time.Now()
			_ = l.saveLocked()
		}
	}
	l.mu.Lock()
	s := l.st.Servers[id]
	s.TaskState = "block_device_mapping"
	f := *l.st.Flavors[s.FlavorID]
	ref := InstanceRef{s.Host, s.InstanceName}
	project, userID := s.ProjectID, s.UserID
	l.mu.Unlock()
	for i, size := range ephemeralSizes(s, f) {
		// Nova's default_ephemeral_format labels them ephemeral<N>.
		path := filepath.Join(l.instanceDir(ref, id), ephemeralFile(i))
		if err := newDisk(ctx, path, size, l.opts.FormatDisks, fmt.Sprintf("ephemeral%d", i)); err != nil {
			fail(fmt.Errorf("create ephemeral disk %s: %w", ephemeralFile(i), err))
			return
		}
	}
	for i, b := range bdms {
		volID := b.UUID
		if b.SourceType != "volume" {
			size := b.VolumeSize
			var err error
			volID, err = l.createVolumeForBDM(ctx, project, userID, b, size, i == 0 && b.BootIndex != nil && b.BootIndex.String() == "0")
			if err != nil {
				fail(fmt.Errorf("block device mapping %d: %w", i, err))
				return
			}
		}
		l.mu.Lock()
		v := l.st.Volumes[volID]
		if v == nil || v.Status != "available" {
			l.mu.Unlock()
			fail(fmt.Errorf("block device mapping %d: volume %s is not available", i, volID))
			return
		}
		dev := nextDevice(l.st, s)
		a := attachment{ID: newID(), VolumeID: volID, Device: dev, Tag: b.Tag, DeleteOnTermination: b.DeleteOnTermination, AttachedAt: time.Now()}
		s.Attachments = append(s.Attachments, a)
		v.Status, v.ServerID, v.AttachmentID, v.Device, v.AttachedAt = "in-use", id, a.ID, dev, a.AttachedAt
		if b.BootIndex != nil && b.BootIndex.String() == "0" {
			s.BootVolume = volID
			v.Bootable = true
		}
		_ = l.saveLocked()
		l.mu.Unlock()
	}
	l.mu.Lock()
	s.TaskState = "spawning"
	inst := l.instanceLocked(s)
	l.mu.Unlock()
	if err := l.opts.Compute.Start(ctx, inst); err != nil {
		fail(fmt.Errorf("spawn %s on %s: %w", inst.Name, inst.Host, err))
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s.VMState, s.TaskState, s.Updated, s.LaunchedAt = vmActive, "", time.Now(), time.Now()
	if err := l.saveLocked(); err != nil {
		l.log.Error("lab nova: save", "err", err)
	}
}

// createVolumeForBDM makes the volume of a snapshot, blank or image block
// device mapping and waits for it.
func (l *Lab) createVolumeForBDM(ctx context.Context, projectID, userID string, b bdmV2, size int, boot bool) (string, error) {
	l.mu.Lock()
	v := &volume{ID: newID(), Name: "", ProjectID: projectID, UserID: userID, Size: size, Status: "creating",
		Metadata: map[string]string{}, AZ: "nova", Created: time.Now(), Updated: time.Now(), Bootable: boot}
	v.TypeID = l.defaultTypeLocked().ID
	var src diskRef
	switch b.SourceType {
	case "snapshot":
		sn := l.st.Snapshots[b.UUID]
		if sn == nil {
			l.mu.Unlock()
			return "", fmt.Errorf("snapshot %s not found", b.UUID)
		}
		v.SnapshotID = sn.ID
		if v.Size < sn.Size {
			v.Size = sn.Size
		}
		src = l.snapshotRef(sn)
	case "image":
		v.ImageID = b.UUID
		v.Bootable = true
	}
	if v.Size <= 0 {
		v.Size = 1
	}
	if err := l.placeVolumeLocked(v); err != nil {
		l.mu.Unlock()
		return "", err
	}
	l.st.Volumes[v.ID] = v
	_ = l.saveLocked()
	dst := l.volumeRef(v)
	l.mu.Unlock()
	err := l.makeVolume(ctx, dst, src, v.Size, l.opts.FormatDisks && b.SourceType == "blank", volumeLabel(v.Name, v.ID))
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		v.Status = "error"
		_ = l.saveLocked()
		return "", err
	}
	v.Status, v.Updated = "available", time.Now()
	return v.ID, l.saveLocked()
}

// ephemeralFile is the file of a server's n-th ephemeral disk in its
// instance directory, as Nova's libvirt driver names it.
func ephemeralFile(n int) string { return fmt.Sprintf("disk.eph%d", n) }

// ephemeralSizes are the sizes (GB) of a server's ephemeral disks: those
// its block device mapping asked for (source blank, destination local),
// else the flavor's one, as Nova adds it when the mapping has none.
func ephemeralSizes(s *server, f flavor) []int {
	if len(s.EphemeralGB) > 0 {
		return s.EphemeralGB
	}
	if f.Ephemeral > 0 {
		return []int{f.Ephemeral}
	}
	return nil
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

// nextDevice picks the next free /dev/vdX name (vda is the root disk,
// ephemeral disks come next).
func nextDevice(st *state, s *server) string {
	used := map[string]bool{"/dev/vda": true}
	if f := st.Flavors[s.FlavorID]; f != nil {
		for i := range ephemeralSizes(s, *f) {
			used["/dev/vd"+string(rune('b'+i))] = true
		}
	}
	for _, a := range s.Attachments {
		used[a.Device] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		d := "/dev/vd" + string(c)
		if !used[d] {
			return d
		}
	}
	return "/dev/vdzz"
}

// instanceDir is a server's instance directory: by server id, as Nova's
// <instances_path>/<uuid>, on a backend that finds disks through the
// domain's definition (ByServerID); by instance name on the socket layout,
// whose host workers find a guest's sockets by its name.
func (l *Lab) instanceDir(ref InstanceRef, id string) string {
	if b, ok := l.opts.Compute.(interface{ ByServerID() bool }); ok && b.ByServerID() {
		return filepath.Join(l.dir, "hosts", ref.Host, "instances", id)
	}
	return InstanceDir(l.dir, ref)
}

// instanceLocked describes a server to the compute backend.
func (l *Lab) instanceLocked(s *server) Instance {
	ref := InstanceRef{s.Host, s.InstanceName}
	inst := Instance{InstanceRef: ref, ID: s.ID, Dir: l.instanceDir(ref, s.ID), VCPUs: 1, MemoryMB: 256}
	if s.ImageID != "" && s.BootVolume == "" {
		inst.Root = &RootDisk{ImageID: s.ImageID}
	}
	if f := l.st.Flavors[s.FlavorID]; f != nil {
		inst.VCPUs, inst.MemoryMB = f.VCPUs, f.RAM
		if inst.Root != nil {
			inst.Root.SizeGB = f.Disk
		}
		inst.SwapMB = f.Swap
		for i := range ephemeralSizes(s, *f) {
			inst.Disks = append(inst.Disks, Disk{Node: EphemeralNode(i), Path: filepath.Join(inst.Dir, ephemeralFile(i)), Serial: EphemeralNode(i)})
		}
	}
	for _, a := range s.Attachments {
		if v := l.st.Volumes[a.VolumeID]; v != nil {
			inst.Disks = append(inst.Disks, l.volumeDisk(v))
		}
	}
	return inst
}

func (l *Lab) deleteServer(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.visibleServer(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if s.TaskState == "deleting" {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	s.TaskState, s.Updated = "deleting", time.Now()
	if err := l.saveLocked(); err != nil {
		return err
	}
	id := s.ID
	l.async(func(ctx context.Context) { l.destroyServer(ctx, id) })
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// destroyServer stops the server, detaches (or deletes) its volumes, frees
// its ports and removes it.
func (l *Lab) destroyServer(ctx context.Context, id string) {
	l.mu.Lock()
	s := l.st.Servers[id]
	ref := InstanceRef{s.Host, s.InstanceName}
	files := []string{RootFile, SwapFile}
	if f := l.st.Flavors[s.FlavorID]; f != nil {
		for i := range ephemeralSizes(s, *f) {
			files = append(files, ephemeralFile(i))
		}
	}
	l.mu.Unlock()
	stop := l.opts.Compute.Stop
	if r, ok := l.opts.Compute.(Remover); ok {
		stop = r.Remove
	}
	if err := stop(ctx, ref); err != nil {
		l.log.Error("lab nova: stop for delete", "server", id, "err", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var doomed []*volume
	for _, a := range s.Attachments {
		if v := l.st.Volumes[a.VolumeID]; v != nil {
			v.Status, v.ServerID, v.AttachmentID, v.Device = "available", "", "", ""
			if a.DeleteOnTermination {
				v.Status = "deleting"
				doomed = append(doomed, v)
			}
		}
	}
	for pid, p := range l.st.Ports {
		if p.DeviceID == id {
			if p.ByNova {
				delete(l.st.Ports, pid)
			} else {
				p.DeviceID, p.DeviceOwner = "", ""
			}
		}
	}
	for _, g := range l.st.ServerGroups {
		g.Members = remove(g.Members, id)
	}
	delete(l.st.Servers, id)
	for _, f := range files {
		if err := os.RemoveAll(filepath.Join(l.instanceDir(ref, id), f)); err != nil {
			l.log.Error("lab nova: remove instance disk", "server", id, "file", f, "err", err)
		}
	}
	for _, v := range doomed {
		if err := l.removeVolume(ctx, l.volumeRef(v)); err != nil {
			l.log.Error("lab cinder: remove volume", "volume", v.ID, "err", err)
		}
		delete(l.st.Volumes, v.ID)
	}
	if err := l.saveLocked(); err != nil {
		l.log.Error("lab nova: save", "err", err)
	}
}

func remove(list []string, s string) []string {
	out := list[:0]
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

func (l *Lab) serverAction(w http.ResponseWriter, r *http.Request, c *call) error {
	var body map[string]json.RawMessage
	if err := decodeBody(r, &body); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.visibleServer(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	busy := func(action string) error {
		state := s.VMState
		if s.TaskState != "" {
			return errConflict("Cannot '%s' instance %s while it is in task_state %s", action, s.ID, s.TaskState)
		}
		return errConflict("Cannot '%s' instance %s while it is in vm_state %s", action, s.ID, state)
	}
	id := s.ID
	switch {
	case has(body, "os-stop"):
		if s.VMState != vmActive || s.TaskState != "" {
			return busy("stop")
		}
		s.TaskState = "powering-off"
		ref := InstanceRef{s.Host, s.InstanceName}
		l.async(func(ctx context.Context) { l.powerDone(id, "stop", l.opts.Compute.Stop(ctx, ref), vmStopped) })
	case has(body, "os-start"):
		if s.VMState != vmStopped || s.TaskState != "" {
			return busy("start")
		}
		s.TaskState = "powering-on"
		inst := l.instanceLocked(s)
		l.async(func(ctx context.Context) { l.powerDone(id, "start", l.opts.Compute.Start(ctx, inst), vmActive) })
	case has(body, "reboot"):
		var rb struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(body["reboot"], &rb); err != nil || (rb.Type != "HARD" && rb.Type != "SOFT") {
			return errBadRequest("Invalid input for field/attribute type. Value: %s. 'type' must be one of HARD, SOFT", rb.Type)
		}
		// Nova reboots a stopped server only the hard way.
		if s.TaskState != "" || !(s.VMState == vmActive || rb.Type == "HARD" && s.VMState == vmStopped) {
			return busy("reboot")
		}
		s.TaskState = "rebooting"
		if rb.Type == "HARD" {
			s.TaskState = "rebooting_hard"
		}
		inst := l.instanceLocked(s)
		l.async(func(ctx context.Context) {
			// Both kinds stop the guest and start it again; on libvirt the
			// start defines the domain anew, as Nova's hard reboot does.
			err := l.opts.Compute.Stop(ctx, inst.InstanceRef)
			if err == nil {
				err = l.opts.Compute.Start(ctx, inst)
			}
			l.powerDone(id, "reboot", err, vmActive)
		})
	case has(body, "resize"):
		var rz struct {
			FlavorRef string `json:"flavorRef"`
		}
		if err := json.Unmarshal(body["resize"], &rz); err != nil || rz.FlavorRef == "" {
			return errBadRequest("Invalid input for field/attribute resize: flavorRef is required")
		}
		if s.TaskState != "" || (s.VMState != vmActive && s.VMState != vmStopped) {
			return busy("resize")
		}
		nf := l.st.Flavors[rz.FlavorRef]
		if nf == nil {
			return errBadRequest("Flavor %s could not be found.", rz.FlavorRef)
		}
		if nf.ID == s.FlavorID {
			return errBadRequest("When resizing, instances must change flavor!")
		}
		if of := l.st.Flavors[s.FlavorID]; of != nil && (nf.Disk < of.Disk || nf.Ephemeral != of.Ephemeral) {
			return errBadRequest("Resize error: Unable to resize disk down, or to change the ephemeral disk (lab).")
		}
		rs, ok := l.opts.Compute.(Resizer)
		if !ok {
			return errBadRequest("Resize is not supported by the lab's compute backend.")
		}
		wasActive := s.VMState == vmActive
		s.TaskState, s.OldFlavorID, s.FlavorID = "resize_prep", s.FlavorID, nf.ID
		inst := l.instanceLocked(s)
		l.async(func(ctx context.Context) {
			err := rs.Resize(ctx, inst, wasActive)
			l.mu.Lock()
			defer l.mu.Unlock()
			if s := l.st.Servers[id]; s != nil {
				s.TaskState, s.Updated = "", time.Now()
				if err != nil {
					l.log.Error("lab nova: resize", "server", id, "err", err)
					s.FlavorID, s.OldFlavorID = s.OldFlavorID, ""
					s.Fault = err.Error()
				} else {
					s.VMState, s.ResizedFrom = vmResized, map[bool]string{true: vmActive, false: vmStopped}[wasActive]
				}
				_ = l.saveLocked()
			}
		})
	case has(body, "confirmResize"):
		if s.VMState != vmResized || s.TaskState != "" {
			return busy("confirmResize")
		}
		s.VMState, s.OldFlavorID, s.ResizedFrom = s.ResizedFrom, "", ""
	default:
		keys := make([]string, 0, len(body))
		for k := range body {
			keys = append(keys, k)
		}
		return errBadRequest("There is no such action: %s", strings.Join(keys, ","))
	}
	s.Updated = time.Now()
	if err := l.saveLocked(); err != nil {
		return err
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}

func has(m map[string]json.RawMessage, k string) bool { _, ok := m[k]; return ok }

// powerDone records the end of a power action: the new vm state, or the
// error logged and the state left as it was.
func (l *Lab) powerDone(id, action string, err error, state string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.st.Servers[id]; s != nil {
		s.TaskState, s.Updated = "", time.Now()
		if err != nil {
			l.log.Error("lab nova: "+action, "server", id, "err", err)
		} else {
			s.VMState = state
		}
		_ = l.saveLocked()
	}
}

func (l *Lab) serverMetadata(w http.ResponseWriter, r *http.Request, c *call) error {
	return l.metadata(w, r, func() (*map[string]string, func(), error) {
		s, err := l.visibleServer(c, r.PathValue("id"))
		if err != nil {
			return nil, nil, err
		}
		return &s.Metadata, func() { s.Updated = time.Now() }, nil
	})
}

func (l *Lab) serverMetadataItem(w http.ResponseWriter, r *http.Request, c *call) error {
	var body struct {
		Meta map[string]string `json:"meta"`
	}
	if r.Method == http.MethodPut {
		if err := decodeBody(r, &body); err != nil {
			return err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.visibleServer(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	key := r.PathValue("key")
	switch r.Method {
	case http.MethodGet:
		v, ok := s.Metadata[key]
		if !ok {
			return errNotFound("Metadata item was not found")
		}
		l.writeJSON(w, http.StatusOK, map[string]any{"meta": map[string]string{key: v}})
		return nil
	case http.MethodPut:
		v, ok := body.Meta[key]
		if !ok || len(body.Meta) != 1 {
			return errBadRequest("Request body and URI mismatch")
		}
		s.Metadata[key] = v
		l.writeJSON(w, http.StatusOK, map[string]any{"meta": map[string]string{key: v}})
	default:
		if _, ok := s.Metadata[key]; !ok {
			return errNotFound("Metadata item was not found")
		}
		delete(s.Metadata, key)
		w.WriteHeader(http.StatusNoContent)
	}
	s.Updated = time.Now()
	return l.saveLocked()
}

func (l *Lab) serverTags(w http.ResponseWriter, r *http.Request, c *call) error {
	if c.mv < 26 {
		return errNotFound("The resource could not be found.")
	}
	var body struct {
		Tags []string `json:"tags"`
	}
	if r.Method == http.MethodPut {
		if err := decodeBody(r, &body); err != nil {
			return err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.visibleServer(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	switch r.Method {
	case http.MethodPut:
		s.Tags = body.Tags
	case http.MethodDelete:
		s.Tags = nil
		w.WriteHeader(http.StatusNoContent)
		return l.saveLocked()
	}
	if r.Method != http.MethodGet {
		if err := l.saveLocked(); err != nil {
			return err
		}
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"tags": nonNilSlice(s.Tags)})
	return nil
}

func (l *Lab) serverTag(w http.ResponseWriter, r *http.Request, c *call) error {
	if c.mv < 26 {
		return errNotFound("The resource could not be found.")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.visibleServer(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	tag := r.PathValue("tag")
	switch r.Method {
	case http.MethodGet:
		if !contains(s.Tags, tag) {
			return errNotFound("Tag '%s' could not be found.", tag)
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	case http.MethodPut:
		if contains(s.Tags, tag) {
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		s.Tags = append(s.Tags, tag)
		w.Header().Set("Location", l.base+r.URL.Path)
		w.WriteHeader(http.StatusCreated)
	default:
		if !contains(s.Tags, tag) {
			return errNotFound("Tag '%s' could not be found.", tag)
		}
		s.Tags = remove(s.Tags, tag)
		w.WriteHeader(http.StatusNoContent)
	}
	return l.saveLocked()
}

func attachmentView(s *server, a attachment, c *call) map[string]any {
	v := map[string]any{"id": a.VolumeID, "serverId": s.ID, "volumeId": a.VolumeID, "device": a.Device}
	if c.mv >= 70 {
		v["tag"] = nullIfEmpty(a.Tag)
	}
	if c.mv >= 79 {
		v["delete_on_termination"] = a.DeleteOnTermination
	}
	if c.mv >= 89 {
		delete(v, "id")
		v["attachment_id"] = a.ID
		v["bdm_uuid"] = a.ID
	}
	return v
}

func (l *Lab) listAttachments(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.visibleServer(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	out := []any{}
	for _, a := range s.Attachments {
		out = append(out, attachmentView(s, a, c))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"volumeAttachments": out})
	return nil
}

func (l *Lab) showAttachment(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.visibleServer(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	for _, a := range s.Attachments {
		if a.VolumeID == r.PathValue("vol") {
			l.writeJSON(w, http.StatusOK, map[string]any{"volumeAttachment": attachmentView(s, a, c)})
			return nil
		}
	}
	return errNotFound("Volume %s is not attached to %s", r.PathValue("vol"), s.ID)
}

func (l *Lab) attachVolume(w http.ResponseWriter, r *http.Request, c *call) error {
	var body struct {
		VolumeAttachment struct {
			VolumeID            string `json:"volumeId"`
			Device              string `json:"device"`
			Tag                 string `json:"tag"`
			DeleteOnTermination bool   `json:"delete_on_termination"`
		} `json:"volumeAttachment"`
	}
	if err := decodeBody(r, &body); err != nil {
		return err
	}
	ba := body.VolumeAttachment
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.visibleServer(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if (s.VMState != vmActive && s.VMState != vmStopped) || s.TaskState != "" {
		if s.TaskState != "" {
			return errConflict("Cannot 'attach_volume' instance %s while it is in task_state %s", s.ID, s.TaskState)
		}
		return errConflict("Cannot 'attach_volume' instance %s while it is in vm_state %s", s.ID, s.VMState)
	}
	// Nova looks the volume up in Cinder with the caller's token: a member
	// sees its project's volumes, an admin any project's.
	v, err := l.visibleVolume(c, ba.VolumeID)
	if err != nil {
		return err
	}
	if v.Status != "available" {
		return errBadRequest("Invalid volume: volume %s status must be available, but current status is: %s", v.ID, v.Status)
	}
	dev := ba.Device
	if dev == "" || dev == "auto" {
		dev = nextDevice(l.st, s)
	}
	a := attachment{ID: newID(), VolumeID: v.ID, Device: dev, Tag: ba.Tag, DeleteOnTermination: ba.DeleteOnTermination, AttachedAt: time.Now()}
	// As Zed: nova-api reserves the volume (Cinder's attachment create:
	// "reserved"), nova-compute then attaches it ("attaching", "in-use").
	v.Status, v.Updated = "reserved", time.Now()
	running := s.VMState == vmActive
	ref := InstanceRef{s.Host, s.InstanceName}
	disk := l.volumeDisk(v)
	sid := s.ID
	if err := l.saveLocked(); err != nil {
		return err
	}
	l.async(func(ctx context.Context) {
		l.mu.Lock()
		if vol := l.st.Volumes[a.VolumeID]; vol != nil && vol.Status == "reserved" {
			vol.Status, vol.Updated = "attaching", time.Now()
		}
		l.mu.Unlock()
		var err error
		if running {
			err = l.opts.Compute.Attach(ctx, ref, disk)
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		s, vol := l.st.Servers[sid], l.st.Volumes[a.VolumeID]
		if vol == nil {
			return
		}
		if err != nil || s == nil {
			l.log.Error("lab nova: attach volume", "server", sid, "volume", a.VolumeID, "err", err)
			vol.Status = "available"
		} else {
			s.Attachments = append(s.Attachments, a)
			vol.Status, vol.ServerID, vol.AttachmentID, vol.Device, vol.AttachedAt = "in-use", sid, a.ID, a.Device, a.AttachedAt
		}
		vol.Updated = time.Now()
		_ = l.saveLocked()
	})
	l.writeJSON(w, http.StatusOK, map[string]any{"volumeAttachment": attachmentView(s, a, c)})
	return nil
}

func (l *Lab) detachVolume(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.visibleServer(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	volID := r.PathValue("vol")
	idx := -1
	for i, a := range s.Attachments {
		if a.VolumeID == volID {
			idx = i
		}
	}
	if idx < 0 {
		return errNotFound("Volume %s is not attached to %s", volID, s.ID)
	}
	if s.TaskState != "" {
		return errConflict("Cannot 'detach_volume' instance %s while it is in task_state %s", s.ID, s.TaskState)
	}
	if volID == s.BootVolume {
		return errBadRequest("Cannot detach a root device volume")
	}
	v := l.st.Volumes[volID]
	if v.Status != "in-use" {
		return errBadRequest("Invalid volume: Unable to detach volume. Volume status must be 'in-use' and attach_status must be 'attached' to detach.")
	}
	v.Status = "detaching"
	running := s.VMState == vmActive
	ref := InstanceRef{s.Host, s.InstanceName}
	sid := s.ID
	if err := l.saveLocked(); err != nil {
		return err
	}
	l.async(func(ctx context.Context) {
		var err error
		if running {
			err = l.opts.Compute.Detach(ctx, ref, VolumeNode(volID))
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		vol := l.st.Volumes[volID]
		if err != nil {
			l.log.Error("lab nova: detach volume", "server", sid, "volume", volID, "err", err)
			vol.Status = "in-use"
			_ = l.saveLocked()
			return
		}
		if s := l.st.Servers[sid]; s != nil {
			var keep []attachment
			for _, a := range s.Attachments {
				if a.VolumeID != volID {
					keep = append(keep, a)
				}
			}
			s.Attachments = keep
		}
		vol.Status, vol.ServerID, vol.AttachmentID, vol.Device, vol.Updated = "available", "", "", "", time.Now()
		_ = l.saveLocked()
	})
	w.WriteHeader(http.StatusAccepted)
	return nil
}

func (l *Lab) flavorView(f *flavor, c *call) map[string]any {
	self := l.base + "/compute/v2.1/flavors/" + f.ID
	v := map[string]any{
		"id": f.ID, "name": f.Name, "ram": f.RAM, "vcpus": f.VCPUs, "disk": f.Disk,
		"OS-FLV-EXT-DATA:ephemeral": f.Ephemeral, "OS-FLV-DISABLED:disabled": false,
		"swap": "", "rxtx_factor": 1.0, "os-flavor-access:is_public": f.IsPublic,
		"links": []any{map[string]any{"rel": "self", "href": self}, map[string]any{"rel": "bookmark", "href": strings.Replace(self, "/v2.1", "", 1)}},
	}
	if f.Swap > 0 || c.mv >= 75 {
		v["swap"] = f.Swap
	}
	if c.mv >= 55 {
		v["description"] = nil
	}
	if c.mv >= 61 {
		v["extra_specs"] = nonNilMap(f.ExtraSpecs)
	}
	return v
}

func (l *Lab) listFlavors(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	detail := strings.HasSuffix(r.URL.Path, "/detail")
	var fs []*flavor
	for _, f := range l.st.Flavors {
		fs = append(fs, f)
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].ID < fs[j].ID })
	out := []any{}
	for _, f := range fs {
		v := l.flavorView(f, c)
		if !detail {
			v = map[string]any{"id": f.ID, "name": f.Name, "links": v["links"]}
			if c.mv >= 55 {
				v["description"] = nil
			}
		}
		out = append(out, v)
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"flavors": out})
	return nil
}

func (l *Lab) showFlavor(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.st.Flavors[r.PathValue("id")]
	if f == nil {
		return errNotFound("Flavor %s could not be found.", r.PathValue("id"))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"flavor": l.flavorView(f, c)})
	return nil
}

func (l *Lab) flavorExtraSpecs(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.st.Flavors[r.PathValue("id")]
	if f == nil {
		return errNotFound("Flavor %s could not be found.", r.PathValue("id"))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"extra_specs": nonNilMap(f.ExtraSpecs)})
	return nil
}

func serverGroupView(g *serverGroup, c *call) map[string]any {
	v := map[string]any{"id": g.ID, "name": g.Name, "members": nonNilSlice(g.Members), "metadata": map[string]string{}}
	if c.mv >= 13 {
		v["project_id"], v["user_id"] = g.ProjectID, g.UserID
	}
	if c.mv >= 64 {
		delete(v, "metadata")
		v["policy"] = g.Policy
		v["rules"] = map[string]any{}
	} else {
		v["policies"] = []string{g.Policy}
	}
	return v
}

func (l *Lab) listServerGroups(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	all := c.admin() && boolQuery(r, "all_projects")
	out := []any{}
	var gs []*serverGroup
	for _, g := range l.st.ServerGroups {
		if all || g.ProjectID == c.tok.ProjectID {
			gs = append(gs, g)
		}
	}
	sort.Slice(gs, func(i, j int) bool { return gs[i].Name < gs[j].Name })
	for _, g := range gs {
		out = append(out, serverGroupView(g, c))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"server_groups": out})
	return nil
}

func (l *Lab) showServerGroup(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	g := l.st.ServerGroups[r.PathValue("id")]
	if g == nil || (!c.admin() && g.ProjectID != c.tok.ProjectID) {
		return errNotFound("Server group %s could not be found.", r.PathValue("id"))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"server_group": serverGroupView(g, c)})
	return nil
}

func (l *Lab) createServerGroup(w http.ResponseWriter, r *http.Request, c *call) error {
	var body struct {
		ServerGroup struct {
			Name     string   `json:"name"`
			Policy   string   `json:"policy"`
			Policies []string `json:"policies"`
		} `json:"server_group"`
	}
	if err := decodeBody(r, &body); err != nil {
		return err
	}
	b := body.ServerGroup
	pol := b.Policy
	if pol == "" && len(b.Policies) > 0 {
		pol = b.Policies[0]
	}
	switch pol {
	case "affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity":
	default:
		return errBadRequest("Invalid input for field/attribute policy. Value: %s.", pol)
	}
	if b.Name == "" {
		return errBadRequest("Invalid input for field/attribute name.")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	g := &serverGroup{ID: newID(), Name: b.Name, Policy: pol, ProjectID: c.tok.ProjectID, UserID: c.tok.UserID}
	l.st.ServerGroups[g.ID] = g
	if err := l.saveLocked(); err != nil {
		return err
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"server_group": serverGroupView(g, c)})
	return nil
}

func (l *Lab) deleteServerGroup(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	g := l.st.ServerGroups[r.PathValue("id")]
	if g == nil || (!c.admin() && g.ProjectID != c.tok.ProjectID) {
		return errNotFound("Server group %s could not be found.", r.PathValue("id"))
	}
	delete(l.st.ServerGroups, g.ID)
	w.WriteHeader(http.StatusNoContent)
	return l.saveLocked()
}

// resumeServers boots again, on a fresh lab start, the servers recorded as
// running whose processes are gone (as nova-compute does with
// resume_guests_state_on_host_boot).
func (l *Lab) resumeServers(ctx context.Context) {
	l.mu.Lock()
	var todo []Instance
	for _, s := range l.st.Servers {
		switch {
		case s.VMState == vmActive:
			todo = append(todo, l.instanceLocked(s))
		case s.VMState == vmBuild || s.TaskState != "":
			// Interrupted by the restart: as Nova does on compute start.
			s.VMState, s.TaskState, s.Fault = vmError, "", "interrupted by a restart of the lab"
		}
	}
	_ = l.saveLocked()
	l.mu.Unlock()
	for _, inst := range todo {
		up, err := l.opts.Compute.Running(ctx, inst.InstanceRef)
		if err == nil && up {
			continue
		}
		l.async(func(ctx context.Context) {
			if err := l.opts.Compute.Start(ctx, inst); err != nil {
				l.log.Error("lab nova: resume server", "instance", inst.InstanceRef.String(), "err", err)
			}
		})
	}
}
