package lab

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ---- Glance v2 (images, read-only) ----

var glanceSvc = &service{
	name: "image", major: 2,
	errBody: func(status int, _ string, msg string) any {
		return map[string]any{"code": status, "title": http.StatusText(status), "message": msg}
	},
}

func (l *Lab) glanceRoutes(mux *http.ServeMux) {
	versions := func(w http.ResponseWriter, r *http.Request) {
		l.writeJSON(w, http.StatusMultipleChoices, map[string]any{"versions": []any{map[string]any{
			"id": "v2.16", "status": "CURRENT", "links": []any{map[string]any{"rel": "self", "href": l.base + "/image/v2/"}},
		}}})
	}
	mux.HandleFunc("GET /image", versions)
	mux.HandleFunc("GET /image/{$}", versions)
	mux.HandleFunc("GET /image/v2/images", l.handler(glanceSvc, l.listImages))
	mux.HandleFunc("GET /image/v2/images/{id}", l.handler(glanceSvc, l.showImage))
}

// Digests of the lab's images, which hold no data (the lab guest boots from
// its own kernel and initramfs): Glance's md5 checksum and sha512 multihash
// of zero bytes, as an active image of size 0 has them.
const (
	emptyMD5    = "d41d8cd98f00b204e9800998ecf8427e"
	emptySHA512 = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
)

func imageView(im *image) map[string]any {
	return map[string]any{
		"id": im.ID, "name": im.Name, "status": "active", "visibility": im.Visibility, "owner": im.Owner,
		"disk_format": im.DiskFormat, "container_format": "bare", "size": im.Size, "virtual_size": nil,
		"min_disk": im.MinDisk, "min_ram": im.MinRAM, "protected": false, "os_hidden": false,
		"checksum": emptyMD5, "os_hash_algo": "sha512", "os_hash_value": emptySHA512, "tags": []string{},
		"created_at": timeStr(im.Created), "updated_at": timeStr(im.Created),
		"self": "/v2/images/" + im.ID, "file": "/v2/images/" + im.ID + "/file", "schema": "/v2/schemas/image",
	}
}

func (l *Lab) imageVisible(c *call, im *image) bool {
	return im.Visibility == "public" || im.Owner == c.tok.ProjectID || c.admin()
}

func (l *Lab) listImages(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	l.mu.Lock()
	defer l.mu.Unlock()
	var ims []*image
	for _, im := range l.st.Images {
		if !l.imageVisible(c, im) {
			continue
		}
		if n := q.Get("name"); n != "" && im.Name != n {
			continue
		}
		if v := q.Get("visibility"); v != "" && im.Visibility != v {
			continue
		}
		ims = append(ims, im)
	}
	sort.Slice(ims, func(i, j int) bool { return ims[i].Created.After(ims[j].Created) })
	out := []any{}
	for _, im := range ims {
		out = append(out, imageView(im))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"images": out, "schema": "/v2/schemas/images", "first": "/v2/images"})
	return nil
}

func (l *Lab) showImage(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	im := l.st.Images[r.PathValue("id")]
	if im == nil || !l.imageVisible(c, im) {
		return errNotFound("No image found with ID %s", r.PathValue("id"))
	}
	l.writeJSON(w, http.StatusOK, imageView(im))
	return nil
}

// ---- Neutron (networks, subnets, ports, security groups) ----

var neutronSvc = &service{
	name: "network", major: 2,
	errBody: func(status int, kind string, msg string) any {
		typ := map[int]string{404: "NotFound", 400: "BadRequest", 409: "Conflict", 403: "PolicyNotAuthorized", 413: "OverQuota"}[status]
		if typ == "" {
			typ = "HTTPError"
		}
		return map[string]any{"NeutronError": map[string]any{"type": typ, "message": msg, "detail": ""}}
	},
}

func (l *Lab) neutronRoutes(mux *http.ServeMux) {
	versions := func(w http.ResponseWriter, r *http.Request) {
		l.writeJSON(w, http.StatusOK, map[string]any{"versions": []any{map[string]any{
			"id": "v2.0", "status": "CURRENT", "links": []any{map[string]any{"rel": "self", "href": l.base + "/network/v2.0/"}},
		}}})
	}
	mux.HandleFunc("GET /network", versions)
	mux.HandleFunc("GET /network/{$}", versions)
	h := func(fn func(http.ResponseWriter, *http.Request, *call) error) http.HandlerFunc {
		return l.handler(neutronSvc, fn)
	}
	p := "/network/v2.0"
	mux.HandleFunc("GET "+p+"/networks", h(l.listNetworks))
	mux.HandleFunc("GET "+p+"/networks/{id}", h(l.showNetwork))
	mux.HandleFunc("GET "+p+"/subnets", h(l.listSubnets))
	mux.HandleFunc("GET "+p+"/subnets/{id}", h(l.showSubnet))
	mux.HandleFunc("GET "+p+"/ports", h(l.listPorts))
	mux.HandleFunc("GET "+p+"/ports/{id}", h(l.showPort))
	mux.HandleFunc("POST "+p+"/ports", h(l.createPort))
	mux.HandleFunc("DELETE "+p+"/ports/{id}", h(l.deletePort))
	mux.HandleFunc("GET "+p+"/security-groups", h(l.listSecGroups))
	mux.HandleFunc("GET "+p+"/security-groups/{id}", h(l.showSecGroup))
	mux.HandleFunc("GET "+p+"/security-group-rules", h(l.listSecRules))
}

// match reports whether a resource field passes a Neutron filter: the
// query may repeat a field (id=a&id=b) meaning any of them.
func match(r *http.Request, field, value string) bool {
	vals, ok := r.URL.Query()[field]
	if !ok {
		return true
	}
	for _, v := range vals {
		if v == value {
			return true
		}
	}
	return false
}

// neutronTimes are created_at and updated_at as Neutron's timestamp
// extension writes them (whole seconds, "Z").
func neutronTimes(t time.Time) (string, string) { return timeStr(t), timeStr(t) }

func (l *Lab) networkView(n *network) map[string]any {
	var subnets []string
	for _, s := range l.st.Subnets {
		if s.NetworkID == n.ID {
			subnets = append(subnets, s.ID)
		}
	}
	sort.Strings(subnets)
	created, updated := neutronTimes(n.Created)
	// With the extensions of an ML2 deployment (availability zones, DNS,
	// QoS, address scopes, l2 adjacency, VLAN transparency and QinQ,
	// private VLANs).
	return map[string]any{
		"id": n.ID, "name": n.Name, "tenant_id": n.ProjectID, "project_id": n.ProjectID, "shared": n.Shared,
		"router:external": n.External, "mtu": n.MTU, "status": "ACTIVE", "admin_state_up": true,
		"subnets": nonNilSlice(subnets), "availability_zones": []string{"nova"}, "availability_zone_hints": []string{},
		"description": "", "tags": []string{}, "port_security_enabled": true, "revision_number": 1,
		"created_at": created, "updated_at": updated, "dns_domain": "", "qos_policy_id": nil,
		"ipv4_address_scope": nil, "ipv6_address_scope": nil, "l2_adjacency": true, "is_default": false,
		"vlan_transparent": false, "qinq": false, "pvlan": "false",
	}
}

func (l *Lab) netVisible(c *call, n *network) bool {
	return n.Shared || n.ProjectID == c.tok.ProjectID || c.admin()
}

func (l *Lab) listNetworks(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ns []*network
	for _, n := range l.st.Networks {
		if l.netVisible(c, n) && match(r, "id", n.ID) && match(r, "name", n.Name) && match(r, "shared", strconv.FormatBool(n.Shared)) {
			ns = append(ns, n)
		}
	}
	sort.Slice(ns, func(i, j int) bool { return ns[i].Name < ns[j].Name })
	out := []any{}
	for _, n := range ns {
		out = append(out, l.networkView(n))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"networks": out})
	return nil
}

func (l *Lab) showNetwork(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.st.Networks[r.PathValue("id")]
	if n == nil || !l.netVisible(c, n) {
		return errNotFound("Network %s could not be found.", r.PathValue("id"))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"network": l.networkView(n)})
	return nil
}

func subnetView(s *subnet) map[string]any {
	created, updated := neutronTimes(s.Created)
	return map[string]any{
		"id": s.ID, "name": s.Name, "network_id": s.NetworkID, "tenant_id": s.ProjectID, "project_id": s.ProjectID,
		"cidr": s.CIDR, "gateway_ip": s.GatewayIP, "ip_version": s.IPVersion, "enable_dhcp": true,
		"allocation_pools": []any{map[string]any{"start": s.CIDR[:len(s.CIDR)-4] + "2", "end": s.CIDR[:len(s.CIDR)-4] + "254"}},
		"dns_nameservers":  []string{}, "host_routes": []any{}, "description": "", "tags": []string{}, "revision_number": 0,
		"created_at": created, "updated_at": updated, "segment_id": nil, "subnetpool_id": nil, "service_types": []string{},
		"ipv6_address_mode": nil, "ipv6_ra_mode": nil, "dns_publish_fixed_ip": false, "router:external": false,
	}
}

func (l *Lab) subnetVisible(c *call, s *subnet) bool {
	n := l.st.Networks[s.NetworkID]
	return n != nil && l.netVisible(c, n)
}

func (l *Lab) listSubnets(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ss []*subnet
	for _, s := range l.st.Subnets {
		if l.subnetVisible(c, s) && match(r, "id", s.ID) && match(r, "network_id", s.NetworkID) && match(r, "name", s.Name) {
			ss = append(ss, s)
		}
	}
	sort.Slice(ss, func(i, j int) bool { return ss[i].Name < ss[j].Name })
	out := []any{}
	for _, s := range ss {
		out = append(out, subnetView(s))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"subnets": out})
	return nil
}

func (l *Lab) showSubnet(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.st.Subnets[r.PathValue("id")]
	if s == nil || !l.subnetVisible(c, s) {
		return errNotFound("Subnet %s could not be found.", r.PathValue("id"))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"subnet": subnetView(s)})
	return nil
}

func portView(p *port) map[string]any {
	ips, dns := []any{}, []any{}
	for _, ip := range p.FixedIPs {
		ips = append(ips, map[string]any{"subnet_id": ip.SubnetID, "ip_address": ip.IPAddress})
		// Neutron's DNS integration names a port without dns_name after
		// its address, in the default domain.
		host := "host-" + strings.ReplaceAll(ip.IPAddress, ".", "-")
		dns = append(dns, map[string]any{"hostname": host, "ip_address": ip.IPAddress, "fqdn": host + ".openstacklocal."})
	}
	created, updated := neutronTimes(p.Created)
	return map[string]any{
		"id": p.ID, "name": p.Name, "network_id": p.NetworkID, "tenant_id": p.ProjectID, "project_id": p.ProjectID,
		"mac_address": p.MAC, "fixed_ips": ips, "security_groups": nonNilSlice(p.SecurityGroups),
		"device_id": p.DeviceID, "device_owner": p.DeviceOwner, "status": map[bool]string{true: "ACTIVE", false: "DOWN"}[p.DeviceID != ""],
		"admin_state_up": true, "allowed_address_pairs": []any{}, "extra_dhcp_opts": []any{}, "description": "",
		"port_security_enabled": true, "binding:vnic_type": "normal", "tags": []string{},
		"created_at": created, "updated_at": updated, "revision_number": 1,
		"dns_name": "", "dns_domain": "", "dns_assignment": dns, "ip_allocation": "immediate",
		"data_plane_status": nil, "propagate_uplink_status": false, "qos_policy_id": nil, "qos_network_policy_id": nil,
		"hardware_offload_type": "", "pvlan_type": "", "pvlan_community": "",
	}
}

func (l *Lab) portVisible(c *call, p *port) bool { return p.ProjectID == c.tok.ProjectID || c.admin() }

func (l *Lab) listPorts(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ps []*port
	for _, p := range l.st.Ports {
		if l.portVisible(c, p) && match(r, "id", p.ID) && match(r, "device_id", p.DeviceID) &&
			match(r, "network_id", p.NetworkID) && match(r, "name", p.Name) && match(r, "mac_address", p.MAC) {
			ps = append(ps, p)
		}
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Created.Before(ps[j].Created) })
	out := []any{}
	for _, p := range ps {
		out = append(out, portView(p))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"ports": out})
	return nil
}

func (l *Lab) showPort(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.st.Ports[r.PathValue("id")]
	if p == nil || !l.portVisible(c, p) {
		return errNotFound("Port %s could not be found.", r.PathValue("id"))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"port": portView(p)})
	return nil
}

// newPortLocked allocates a port with the next free address of the
// network's first subnet and a locally administered MAC.
func (l *Lab) newPortLocked(n *network, projectID string, sgIDs []string) (*port, error) {
	var sub *subnet
	for _, s := range l.st.Subnets {
		if s.NetworkID == n.ID && (sub == nil || s.Name < sub.Name) {
			sub = s
		}
	}
	p := &port{ID: newID(), NetworkID: n.ID, ProjectID: projectID, SecurityGroups: sgIDs, Created: time.Now()}
	id := p.ID
	p.MAC = fmt.Sprintf("fa:16:3e:%s:%s:%s", id[0:2], id[2:4], id[4:6])
	if sub != nil {
		if sub.NextIP >= 254 {
			return nil, &apiError{http.StatusConflict, "IpAddressGenerationFailure", "No more IP addresses available on network " + n.ID + "."}
		}
		sub.NextIP++
		prefix := sub.CIDR[:len(sub.CIDR)-4] // "10.20.0."
		p.FixedIPs = []fixedIP{{SubnetID: sub.ID, IPAddress: prefix + strconv.Itoa(sub.NextIP)}}
	}
	l.st.Ports[p.ID] = p
	return p, nil
}

func (l *Lab) createPort(w http.ResponseWriter, r *http.Request, c *call) error {
	var body struct {
		Port struct {
			NetworkID      string   `json:"network_id"`
			Name           string   `json:"name"`
			SecurityGroups []string `json:"security_groups"`
		} `json:"port"`
	}
	if err := decodeBody(r, &body); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.st.Networks[body.Port.NetworkID]
	if n == nil || !l.netVisible(c, n) {
		return errNotFound("Network %s could not be found.", body.Port.NetworkID)
	}
	sgs := body.Port.SecurityGroups
	if sgs == nil {
		for _, g := range l.st.SecGroups {
			if g.Name == "default" && g.ProjectID == c.tok.ProjectID {
				sgs = []string{g.ID}
			}
		}
	}
	p, err := l.newPortLocked(n, c.tok.ProjectID, sgs)
	if err != nil {
		return err
	}
	p.Name = body.Port.Name
	if err := l.saveLocked(); err != nil {
		return err
	}
	l.writeJSON(w, http.StatusCreated, map[string]any{"port": portView(p)})
	return nil
}

func (l *Lab) deletePort(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.st.Ports[r.PathValue("id")]
	if p == nil || !l.portVisible(c, p) {
		return errNotFound("Port %s could not be found.", r.PathValue("id"))
	}
	delete(l.st.Ports, p.ID)
	w.WriteHeader(http.StatusNoContent)
	return l.saveLocked()
}

func secRuleView(r *secRule, inDefault bool) map[string]any {
	created, updated := neutronTimes(r.Created)
	v := map[string]any{
		"created_at": created, "updated_at": updated, "tags": []string{}, "belongs_to_default_sg": inDefault,
		"id": r.ID, "security_group_id": r.GroupID, "direction": r.Direction, "ethertype": r.EtherType,
		"protocol": nullIfEmpty(r.Protocol), "port_range_min": nil, "port_range_max": nil,
		"remote_ip_prefix": nullIfEmpty(r.RemoteIP), "remote_group_id": nullIfEmpty(r.RemoteGroupID),
		"remote_address_group_id": nil, "tenant_id": r.ProjectID, "project_id": r.ProjectID, "description": "",
		"normalized_cidr": nil, "revision_number": 0,
	}
	if inDefault {
		// The rules Neutron makes in a default group itself have no
		// description: Zed answers null (later releases "").
		v["description"] = nil
	}
	if r.PortMin != nil {
		v["port_range_min"] = *r.PortMin
	}
	if r.PortMax != nil {
		v["port_range_max"] = *r.PortMax
	}
	return v
}

func (l *Lab) secGroupView(g *secGroup) map[string]any {
	rules := []any{}
	for _, r := range l.sortedRules(g.ID) {
		rules = append(rules, secRuleView(r, g.Name == "default"))
	}
	created, updated := neutronTimes(g.Created)
	return map[string]any{
		"id": g.ID, "name": g.Name, "description": g.Description, "tenant_id": g.ProjectID, "project_id": g.ProjectID,
		"security_group_rules": rules, "stateful": true, "shared": false, "tags": []string{}, "revision_number": 1,
		"created_at": created, "updated_at": updated,
	}
}

func (l *Lab) sortedRules(groupID string) []*secRule {
	var rs []*secRule
	for _, r := range l.st.SecGroupRules {
		if r.GroupID == groupID {
			rs = append(rs, r)
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].ID < rs[j].ID })
	return rs
}

func (l *Lab) listSecGroups(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var gs []*secGroup
	for _, g := range l.st.SecGroups {
		if (g.ProjectID == c.tok.ProjectID || c.admin()) && match(r, "id", g.ID) && match(r, "name", g.Name) &&
			match(r, "project_id", g.ProjectID) && match(r, "tenant_id", g.ProjectID) {
			gs = append(gs, g)
		}
	}
	sort.Slice(gs, func(i, j int) bool { return gs[i].ID < gs[j].ID })
	out := []any{}
	for _, g := range gs {
		out = append(out, l.secGroupView(g))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"security_groups": out})
	return nil
}

func (l *Lab) showSecGroup(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	g := l.st.SecGroups[r.PathValue("id")]
	if g == nil || (g.ProjectID != c.tok.ProjectID && !c.admin()) {
		return errNotFound("Security group %s does not exist", r.PathValue("id"))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"security_group": l.secGroupView(g)})
	return nil
}

func (l *Lab) listSecRules(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var rs []*secRule
	for _, sr := range l.st.SecGroupRules {
		if (sr.ProjectID == c.tok.ProjectID || c.admin()) && match(r, "id", sr.ID) && match(r, "security_group_id", sr.GroupID) {
			rs = append(rs, sr)
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].ID < rs[j].ID })
	out := []any{}
	for _, sr := range rs {
		g := l.st.SecGroups[sr.GroupID]
		out = append(out, secRuleView(sr, g != nil && g.Name == "default"))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"security_group_rules": out})
	return nil
}

// ---- Heat (stacks and their resources, read-only) ----

var heatSvc = &service{
	name: "orchestration", major: 1,
	errBody: func(status int, kind string, msg string) any {
		typ := map[int]string{404: "EntityNotFound", 400: "HTTPBadRequest", 409: "HTTPConflict", 403: "Forbidden"}[status]
		if typ == "" {
			typ = "HTTPError"
		}
		return map[string]any{"code": status, "title": http.StatusText(status), "explanation": msg,
			"error": map[string]any{"message": msg, "traceback": nil, "type": typ}}
	},
}

func (l *Lab) heatRoutes(mux *http.ServeMux) {
	versions := func(w http.ResponseWriter, r *http.Request) {
		l.writeJSON(w, http.StatusMultipleChoices, map[string]any{"versions": []any{map[string]any{
			"id": "v1.0", "status": "CURRENT", "links": []any{map[string]any{"rel": "self", "href": l.base + "/orchestration/v1/"}},
		}}})
	}
	mux.HandleFunc("GET /orchestration", versions)
	mux.HandleFunc("GET /orchestration/{$}", versions)
	h := func(fn func(http.ResponseWriter, *http.Request, *call) error) http.HandlerFunc {
		return l.handler(heatSvc, func(w http.ResponseWriter, r *http.Request, c *call) error {
			if pid := r.PathValue("project"); pid != c.tok.ProjectID {
				return errForbidden("Forbidden: the tenant in the URL (%s) is not the token's project", pid)
			}
			return fn(w, r, c)
		})
	}
	p := "/orchestration/v1/{project}"
	mux.HandleFunc("GET "+p+"/stacks", h(l.listStacks))
	mux.HandleFunc("GET "+p+"/stacks/{name}", h(l.findStack))
	mux.HandleFunc("GET "+p+"/stacks/{name}/{id}", h(l.showStack))
	mux.HandleFunc("GET "+p+"/stacks/{name}/{id}/resources", h(l.listStackResources))
}

func (l *Lab) stackLinks(s *stack) []any {
	return []any{map[string]any{"rel": "self", "href": fmt.Sprintf("%s/orchestration/v1/%s/stacks/%s/%s", l.base, s.ProjectID, s.Name, s.ID)}}
}

func (l *Lab) stackView(s *stack) map[string]any {
	v := map[string]any{
		"id": s.ID, "stack_name": s.Name, "stack_status": s.Status, "stack_status_reason": "Stack CREATE completed successfully",
		"creation_time": timeStr(s.Created), "updated_time": nil, "deletion_time": nil, "description": "",
		"links": l.stackLinks(s), "parent": nullIfEmpty(s.ParentID), "project": s.ProjectID, "stack_owner": nil,
		"stack_user_project_id": s.ProjectID, "tags": nil, "outputs": []any{}, "parameters": map[string]any{},
		"capabilities": []any{}, "notification_topics": []any{}, "timeout_mins": nil, "disable_rollback": true,
	}
	return v
}

// stackByNameOrID finds a stack of the caller's project.
func (l *Lab) stackByNameOrID(c *call, key string) *stack {
	for _, s := range l.st.Stacks {
		if s.ProjectID == c.tok.ProjectID && (s.ID == key || s.Name == key) {
			return s
		}
	}
	return nil
}

func (l *Lab) listStacks(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	nested := boolQuery(r, "show_nested")
	var ss []*stack
	for _, s := range l.st.Stacks {
		if s.ProjectID == c.tok.ProjectID && (nested || s.ParentID == "") && match(r, "name", s.Name) {
			ss = append(ss, s)
		}
	}
	sort.Slice(ss, func(i, j int) bool { return ss[i].Created.After(ss[j].Created) })
	out := []any{}
	for _, s := range ss {
		out = append(out, l.stackView(s))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"stacks": out})
	return nil
}

func (l *Lab) findStack(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stackByNameOrID(c, r.PathValue("name"))
	if s == nil {
		return errNotFound("The Stack (%s) could not be found.", r.PathValue("name"))
	}
	loc := fmt.Sprintf("%s/orchestration/v1/%s/stacks/%s/%s", l.base, s.ProjectID, s.Name, s.ID)
	w.Header().Set("Location", loc)
	l.writeJSON(w, http.StatusFound, map[string]any{"explanation": "The resource was found at " + loc, "code": 302, "title": "Found"})
	return nil
}

func (l *Lab) showStack(w http.ResponseWriter, r *http.Request, c *call) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stackByNameOrID(c, r.PathValue("id"))
	if s == nil || s.Name != r.PathValue("name") {
		return errNotFound("The Stack (%s) could not be found.", r.PathValue("name"))
	}
	l.writeJSON(w, http.StatusOK, map[string]any{"stack": l.stackView(s)})
	return nil
}

func (l *Lab) listStackResources(w http.ResponseWriter, r *http.Request, c *call) error {
	depth, _ := strconv.Atoi(r.URL.Query().Get("nested_depth"))
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stackByNameOrID(c, r.PathValue("id"))
	if s == nil || s.Name != r.PathValue("name") {
		return errNotFound("The Stack (%s) could not be found.", r.PathValue("name"))
	}
	out := []any{}
	var walk func(s *stack, parentRes string, level int)
	walk = func(s *stack, parentRes string, level int) {
		stackURL := fmt.Sprintf("%s/orchestration/v1/%s/stacks/%s/%s", l.base, s.ProjectID, s.Name, s.ID)
		for _, res := range s.Resources {
			links := []any{
				map[string]any{"rel": "self", "href": stackURL + "/resources/" + res.Name},
				map[string]any{"rel": "stack", "href": stackURL},
			}
			nested := l.st.Stacks[res.PhysicalID]
			if nested != nil {
				links = append(links, map[string]any{"rel": "nested", "href": fmt.Sprintf("%s/orchestration/v1/%s/stacks/%s/%s", l.base, nested.ProjectID, nested.Name, nested.ID)})
			}
			rv := map[string]any{
				"resource_name": res.Name, "logical_resource_id": res.Name, "physical_resource_id": res.PhysicalID,
				"resource_type": res.Type, "resource_status": "CREATE_COMPLETE", "resource_status_reason": "state changed",
				"creation_time": timeStr(s.Created), "updated_time": timeStr(s.Created), "required_by": []string{}, "links": links,
			}
			if parentRes != "" {
				rv["parent_resource"] = parentRes
			}
			out = append(out, rv)
			if nested != nil && level < depth {
				walk(nested, res.Name, level+1)
			}
		}
	}
	walk(s, "", 0)
	l.writeJSON(w, http.StatusOK, map[string]any{"resources": out})
	return nil
}
