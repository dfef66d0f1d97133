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
