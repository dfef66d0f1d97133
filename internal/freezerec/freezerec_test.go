package freezerec_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/freezerec"
)

func sockRoute(inst string) freezerec.Route {
	return freezerec.Route{Kind: freezerec.Socket, Instance: inst, Socket: "/x/" + inst + "/qga.sock"}
}

func TestWriteReadReplaceRemove(t *testing.T) {
	d, err := freezerec.Open(filepath.Join(t.TempDir(), "freezes"))
	if err != nil {
		t.Fatal(err)
	}
	dl := time.Now().Add(20 * time.Second).UTC().Round(0)
	j, err := d.Journal(sockRoute("vm-1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Begin("a1", dl, "raksha freeze wf-1"); err != nil {
		t.Fatal(err)
	}
	keys, err := d.Keys()
	if err != nil || len(keys) != 1 || keys[0] != "socket-vm-1" {
		t.Fatalf("keys %v, %v; want [socket-vm-1]", keys, err)
	}
	rec, err := d.Read(keys[0])
	if err != nil {
		t.Fatal(err)
	}
	if rec.ID != "a1" || !rec.Deadline.Equal(dl) || rec.Owner != "raksha freeze wf-1" || rec.PID != os.Getpid() || rec.Route != sockRoute("vm-1") {
		t.Fatalf("record %+v", rec)
	}
	// No temporary file is left beside the record.
	ents, _ := os.ReadDir(d.Path())
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries, want the record only", len(ents))
	}

	// A newer freeze of the guest replaces the record; ending the older
	// freeze leaves the newer one's record alone.
	if err := j.Begin("b2", dl.Add(time.Minute), "raksha freeze wf-2"); err != nil {
		t.Fatal(err)
	}
	if err := j.End("a1"); err != nil {
		t.Fatal(err)
	}
	if rec, err := d.Read("socket-vm-1"); err != nil || rec.ID != "b2" {
		t.Fatalf("after the older freeze ended: %+v, %v; want the newer record", rec, err)
	}
	if ok, err := d.Remove("socket-vm-1", "a1"); ok || err != nil {
		t.Fatalf("remove by the replaced id: %v, %v; want false, nil", ok, err)
	}
	if err := j.End("b2"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Read("socket-vm-1"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after End: %v; want not exist", err)
	}
	if err := j.End("b2"); err != nil {
		t.Fatalf("End twice: %v", err)
	}
}

func TestRoutesAndKeys(t *testing.T) {
	d, err := freezerec.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	lv := freezerec.Route{Kind: freezerec.Libvirt, Instance: "instance-00000001", URI: "qemu:///system",
		Domain: "6a1c2c8e-5b8f-4c5e-9d1e-0c3f4a5b6c7d", LockDir: "/run/raksha/libvirt-locks"}
	if k, err := lv.Key(); err != nil || k != "libvirt-6a1c2c8e-5b8f-4c5e-9d1e-0c3f4a5b6c7d" {
		t.Fatalf("libvirt key %q, %v", k, err)
	}
	for _, bad := range []freezerec.Route{
		{Kind: freezerec.Socket, Instance: "a/b", Socket: "/s"},
		{Kind: freezerec.Socket, Instance: "", Socket: "/s"},
		{Kind: freezerec.Socket, Instance: "x"},
		{Kind: freezerec.Libvirt, Instance: "x", URI: "qemu:///system"},
		{Kind: "nfs", Instance: "x"},
	} {
		if _, err := d.Journal(bad); err == nil {
			t.Errorf("route %+v accepted", bad)
		}
	}
	if err := d.Write(freezerec.Record{Route: sockRoute("x"), Deadline: time.Now()}); err == nil {
		t.Error("record without id accepted")
	}
	// A record that cannot be decoded is nobody's: Remove removes it.
	if err := os.WriteFile(filepath.Join(d.Path(), "socket-y.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Read("socket-y"); err == nil || !strings.Contains(err.Error(), "decode") {
		t.Fatalf("read of a broken record: %v", err)
	}
	if ok, err := d.Remove("socket-y", "any"); !ok || err != nil {
		t.Fatalf("remove of a broken record: %v, %v", ok, err)
	}
	// Temporary files are not records.
	if err := os.WriteFile(filepath.Join(d.Path(), ".tmp-socket-z-1"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if keys, _ := d.Keys(); len(keys) != 0 {
		t.Fatalf("keys %v; want none", keys)
	}
}

func TestDue(t *testing.T) {
	dl := time.Date(2026, 1, 1, 0, 0, 20, 0, time.UTC)
	rec := freezerec.Record{Deadline: dl}
	for _, c := range []struct {
		now  time.Time
		want bool
	}{
		{dl.Add(-time.Second), false},
		{dl, false},
		{dl.Add(999 * time.Millisecond), false},
		{dl.Add(time.Second), true},
		{dl.Add(time.Hour), true},
	} {
		if got := rec.Due(c.now, time.Second); got != c.want {
			t.Errorf("Due(deadline%+v, 1s) = %v, want %v", c.now.Sub(dl), got, c.want)
		}
	}
}
