package lab

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestMonitorsFromCephConf(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "ceph.conf")
	os.WriteFile(conf, []byte("[global]\nfsid = x\nmon_host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789] v2:10.0.0.2:3301\nkeyring = k\n"), 0o600)
	hosts, ports, err := monitors(conf)
	if err != nil || !slices.Equal(hosts, []string{"127.0.0.1", "127.0.0.1", "10.0.0.2"}) || !slices.Equal(ports, []string{"3300", "6789", "3301"}) {
		t.Errorf("monitors: %v %v %v", hosts, ports, err)
	}
	os.WriteFile(conf, []byte("[global]\nfsid = x\n"), 0o600)
	if _, _, err := monitors(conf); err == nil || !strings.Contains(err.Error(), "no mon host") {
		t.Errorf("a ceph.conf without monitors: %v", err)
	}
	// A lab with RBD refuses to start without a readable ceph.conf.
	_, err = Start(context.Background(), Options{Dir: filepath.Join(dir, "lab"), Compute: newTestCompute(), RBD: &RBDConfig{CephConf: filepath.Join(dir, "missing.conf")}})
	if err == nil || !strings.Contains(err.Error(), "missing.conf") {
		t.Errorf("lab with a missing ceph.conf: %v", err)
	}
}

// TestRBDVolumeTypeWithoutCluster checks the type plumbing without Ceph: a
// lab with RBD has the lab-rbd type as its default (a volume of it whose
// image cannot be made ends in "error"; a lab-qcow2 volume still works), a
// lab without RBD has no such type.
func TestRBDVolumeTypeWithoutCluster(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "ceph.conf")
	// A monitor nobody answers on: rbd fails (or is missing) at once.
	os.WriteFile(conf, []byte("[global]\nmon host = v2:127.0.0.1:9\nclient mount timeout = 1\n"), 0o600)
	l, err := Start(context.Background(), Options{Dir: filepath.Join(dir, "rbd"), Compute: newTestCompute(), RBD: &RBDConfig{CephConf: conf}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.EnsureUser(AdminUser, testAdminPassword, AdminProject, "admin"); err != nil {
		t.Fatal(err)
	}
	c := login(t, l, AdminUser, testAdminPassword, AdminProject)
	var def struct {
		VolumeType struct{ Name string } `json:"volume_type"`
	}
	if st := c.do("GET", "/volume/v3/{project}/types/default", nil, &def); st != 200 || def.VolumeType.Name != VolumeTypeRBD {
		t.Errorf("default type: %d %+v", st, def)
	}
	id := c.createVolume("on-rbd", 1)
	if st := c.volumeStatus(id); st != "error" {
		t.Errorf("RBD volume without a cluster: status %q, want error", st)
	}
	var out struct{ Volume struct{ ID string } }
	if st := c.do("POST", "/volume/v3/{project}/volumes", obj{"volume": obj{"name": "file", "size": 1, "volume_type": VolumeType}}, &out); st != 202 {
		t.Fatalf("create a lab-qcow2 volume: %d", st)
	}
	l.Wait()
	if st := c.volumeStatus(out.Volume.ID); st != "available" {
		t.Errorf("lab-qcow2 volume in a lab with RBD: %q", st)
	}
	var conn struct {
		ConnectionInfo struct {
			Type string `json:"driver_volume_type"`
		} `json:"connection_info"`
	}
	if st := c.do("POST", "/volume/v3/{project}/volumes/"+out.Volume.ID+"/action", obj{"os-initialize_connection": obj{"connector": obj{"host": "h"}}}, &conn); st != 200 || conn.ConnectionInfo.Type != "local" {
		t.Errorf("connection of the lab-qcow2 volume: %d %+v", st, conn)
	}

	plain := startTestLab(t, filepath.Join(dir, "plain"), newTestCompute())
	defer plain.Close()
	pc := login(t, plain, AdminUser, testAdminPassword, AdminProject)
	if st := pc.do("POST", "/volume/v3/{project}/volumes", obj{"volume": obj{"size": 1, "volume_type": VolumeTypeRBD}}, nil); st != 404 {
		t.Errorf("lab-rbd volume in a lab without RBD: %d, want 404", st)
	}
}
