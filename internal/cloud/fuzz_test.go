package cloud

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
)

// fakeCloud answers the requests of Capture and CreateServer in process:
// the server, its ports, its volume and the volume's attachment come from
// the fuzzer (what Nova, Neutron and Cinder return is not Raksha's to
// trust: a tenant names its server, sets its metadata, tags, user data and
// volume names); everything else is a fixed, valid answer.
type fakeCloud struct {
	server, ports, volume, attachment []byte
}

// fixed are the answers that do not come from the fuzzer, by method and
// path suffix.
var fixed = map[string]string{
	"GET /servers/srv/os-volume_attachments": `{"volumeAttachments": [{"id": "vol1", "volumeId": "vol1", "serverId": "srv", "device": "/dev/vdb", "delete_on_termination": true}]}`,
	"GET /flavors/f1":                        `{"flavor": {"id": "f1", "name": "m1.small", "vcpus": 1, "ram": 512, "disk": 1, "swap": "", "OS-FLV-EXT-DATA:ephemeral": 0}}`,
	"GET /flavors/f1/os-extra_specs":         `{"extra_specs": {"hw:cpu_policy": "dedicated"}}`,
	"GET /images/img1":                       `{"id": "img1", "name": "cirros", "disk_format": "qcow2", "min_disk": 1, "min_ram": 0}`,
	"GET /networks/net1":                     `{"network": {"id": "net1", "name": "private"}}`,
	"GET /subnets/sub1":                      `{"subnet": {"id": "sub1", "cidr": "10.0.0.0/24"}}`,
	"GET /security-groups/sg1":               `{"security_group": {"id": "sg1", "name": "default", "security_group_rules": [{"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22}]}}`,
	"POST /servers":                          `{"server": {"id": "new"}}`,
	"GET /flavors/detail":                    `{"flavors": [{"id": "f1", "name": "m1.small", "vcpus": 1, "ram": 512, "disk": 1, "swap": ""}]}`,
	"GET /images":                            `{"images": [{"id": "img1", "name": "cirros"}]}`,
	"GET /networks":                          `{"networks": [{"id": "net1", "name": "private"}]}`,
}

func (fc *fakeCloud) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	p := req.URL.Path
	key := req.Method + " " + p[strings.Index(p[1:], "/")+1:] // without the service's prefix
	var body []byte
	status := http.StatusOK
	switch {
	case key == "GET /servers/srv":
		body = fc.server
	case key == "GET /ports":
		body = fc.ports
	case strings.HasPrefix(key, "GET /volumes/"):
		body = fc.volume
	case strings.HasPrefix(key, "GET /attachments/"):
		body = fc.attachment
	case fixed[key] != "":
		body = []byte(fixed[key])
		if req.Method == http.MethodPost {
			status = http.StatusAccepted
		}
	default:
		status, body = http.StatusNotFound, []byte(`{"itemNotFound": {"message": "not in the fake cloud"}}`)
	}
	return &http.Response{StatusCode: status, Status: http.StatusText(status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)), Request: req}, nil
}

// fakeClient is a Client whose services are fc.
func fakeClient(fc *fakeCloud, hostDriver string) *Client {
	prov := &gophercloud.ProviderClient{HTTPClient: http.Client{Transport: fc}}
	svc := func(name string) *gophercloud.ServiceClient {
		return &gophercloud.ServiceClient{ProviderClient: prov, Endpoint: "http://cloud.invalid/" + name + "/"}
	}
	return &Client{cfg: Config{HostDriver: hostDriver, PollInterval: time.Millisecond}, log: slog.New(slog.DiscardHandler),
		compute: svc("compute"), volume: svc("volume"), network: svc("network"), image: svc("image"), identity: svc("identity")}
}

// FuzzCaptureRecord captures a server from fuzzed OpenStack answers,
// writes the record a backup keeps (the Workload JSON), reads it back as a
// restore does and creates the server from it. Never a panic; errors are
// this package's *Error naming the operation; the record survives its
// JSON form unchanged; the restore reads what the capture wrote.
func FuzzCaptureRecord(f *testing.F) {
	server := `{"server": {"id": "srv", "name": "web", "tenant_id": "demo", "user_id": "u", "status": "ACTIVE",
		"metadata": {"raksha.workload": "demo"}, "tags": ["a"], "image": {"id": "img1"},
		"flavor": {"original_name": "m1.small", "vcpus": 1, "ram": 512, "disk": 1, "ephemeral": 1, "swap": 256, "extra_specs": {"hw:mem_page_size": "large"}},
		"OS-EXT-AZ:availability_zone": "nova", "key_name": "k", "config_drive": "True",
		"OS-EXT-SRV-ATTR:host": "cmp1", "OS-EXT-SRV-ATTR:instance_name": "instance-00000001", "OS-EXT-SRV-ATTR:hypervisor_hostname": "cmp1",
		"OS-EXT-SRV-ATTR:user_data": "aGVsbG8=", "OS-EXT-SRV-ATTR:root_device_name": "/dev/vda", "server_groups": ["g1"],
		"created": "2024-01-01T00:00:00Z", "updated": "2024-01-01T00:00:00Z"}}`
	// booted from a volume, flavor by id (an older microversion)
	bfv := `{"server": {"id": "srv", "name": "db", "tenant_id": "demo", "status": "SHUTOFF", "image": "", "flavor": {"id": "f1"},
		"OS-EXT-SRV-ATTR:host": "cmp2", "OS-EXT-SRV-ATTR:instance_name": "instance-00000002", "OS-EXT-SRV-ATTR:root_device_name": "/dev/vdb"}}`
	ports := `{"ports": [{"id": "p1", "network_id": "net1", "mac_address": "fa:16:3e:00:00:01", "fixed_ips": [{"subnet_id": "sub1", "ip_address": "10.0.0.5"}], "security_groups": ["sg1"]}]}`
	volume := `{"volume": {"id": "vol1", "name": "data", "size": 10, "volume_type": "ceph", "bootable": "true", "encrypted": false,
		"metadata": {"k": "v"}, "status": "in-use", "availability_zone": "nova", "attachments": [{"server_id": "srv", "attachment_id": "att1"}]}}`
	attachment := `{"attachment": {"id": "att1", "connection_info": {"driver_volume_type": "rbd", "name": "volumes/volume-vol1"}}}`
	f.Add([]byte(server), []byte(ports), []byte(volume), []byte(attachment), false)
	f.Add([]byte(server), []byte(ports), []byte(volume), []byte(attachment), true)
	f.Add([]byte(bfv), []byte(`{"ports": []}`), []byte(volume), []byte(`{"attachment": {"connection_info": {"data": {"name": "nopool"}, "driver_volume_type": "rbd"}}}`), true)
	f.Add([]byte(`{"server": {"id": "srv", "flavor": {"original_name": "x"}, "OS-EXT-SRV-ATTR:user_data": "not base64!"}}`), []byte(`{"ports": []}`), []byte(volume), []byte(`{}`), false)
	f.Fuzz(func(t *testing.T, server, ports, volume, attachment []byte, libvirt bool) {
		driver := ""
		if libvirt {
			driver = "libvirt"
		}
		c := fakeClient(&fakeCloud{server: server, ports: ports, volume: volume, attachment: attachment}, driver)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m, err := c.Capture(ctx, "srv")
		if err != nil {
			checkCloudErr(t, err)
			return
		}
		if m.ID != "srv" {
			t.Fatalf("captured server %q, not the one asked for", m.ID)
		}
		for _, v := range m.Volumes {
			if v.ID != "vol1" {
				t.Fatalf("captured volume %q, not the one attached", v.ID)
			}
		}
		w := roundTrip(t, m)
		vols := map[string]string{}
		for _, v := range w.Servers[0].Volumes {
			vols[v.ID] = "restored-" + v.ID
		}
		if _, err := c.CreateServer(ctx, &w.Servers[0], vols, Remap{NamePrefix: "r-"}); err != nil {
			checkCloudErr(t, err)
		}
	})
}

// roundTrip writes m into a backup's record and reads it back as a
// restore does; the record must survive unchanged.
func roundTrip(t *testing.T, m *ServerMeta) *Workload {
	t.Helper()
	rec, err := json.Marshal(Workload{Name: "w", Servers: []ServerMeta{*m}})
	if err != nil {
		t.Fatalf("record of %+v: %v", m, err)
	}
	var w Workload
	if err := json.Unmarshal(rec, &w); err != nil || len(w.Servers) != 1 {
		t.Fatalf("record %s does not read back: %v", rec, err)
	}
	if again, _ := json.Marshal(w); !bytes.Equal(rec, again) {
		t.Fatalf("record changes when read back:\n%s\n%s", rec, again)
	}
	return &w
}

// checkCloudErr fails unless err is an *Error that names its operation.
func checkCloudErr(t *testing.T, err error) {
	t.Helper()
	var ce *Error
	if !errors.As(err, &ce) || ce.Op == "" || ce.Kind == nil {
		t.Fatalf("error %q is not an *Error naming its operation and kind", err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the in-process cloud timed out: %v", err)
	}
}

// FuzzParseLocator reads fuzzed disk locators (they are typed on command
// lines and stored in records): what is accepted is written back by
// String to the same text's meaning.
func FuzzParseLocator(f *testing.F) {
	for _, s := range []string{"qemu:cmp1/instance-00000001/vol-0123", "libvirt:cmp1/0f6c-uuid/disk", "rbd:volumes/volume-1@snap", "rbd:volumes/img", "rbd:/x", "qemu:a//c", "nbd:x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLocator(s)
		if err != nil {
			if !strings.Contains(err.Error(), "want ") {
				t.Fatalf("error %q does not say what is wanted", err)
			}
			return
		}
		back, err := ParseLocator(l.String())
		if err != nil || back != l {
			t.Fatalf("%q is %+v, written %q, which reads back as %+v, %v", s, l, l.String(), back, err)
		}
	})
}
