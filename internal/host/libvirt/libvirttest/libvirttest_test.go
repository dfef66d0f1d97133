package libvirttest

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"testing"
)

// TestSweepDead: a domain marked by a test process that is gone is removed;
// one marked by this (live) process and an unmarked one are not.
func TestSweepDead(t *testing.T) {
	c := Conn(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	l := c.Libvirt()
	define := func(name, desc string) {
		x := fmt.Sprintf("<domain type='qemu'><name>%s</name><description>%s</description><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>", name, desc)
		if _, err := l.DomainDefineXMLFlags(x, 0); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { Remove(t, c, name) })
	}
	gone, mine, other := "raksha-test-"+randHex(4), "raksha-test-"+randHex(4), "raksha-test-"+randHex(4)
	define(gone, fmt.Sprintf("raksha-test-owner pid=%d", dead.Process.Pid))
	define(mine, Owner())
	define(other, "someone else's")
	removed := SweepDead(t, c)
	if !slices.Contains(removed, gone) || slices.Contains(removed, mine) || slices.Contains(removed, other) {
		t.Fatalf("swept %v; want %s and not %s or %s", removed, gone, mine, other)
	}
	for _, n := range []string{mine, other} {
		if _, err := c.Domain(context.Background(), n); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
	}
}
