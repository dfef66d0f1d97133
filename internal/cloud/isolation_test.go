package cloud

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/labtest"
)

// TestDiscoveryRefusesOtherProjectsServers: against the lab cloud (whose
// Nova, as Nova does, shows an admin any project's server by id, with its
// tenant_id), a workload of project demo naming a server of project other
// by id or through a Heat stack is refused, naming the server and both
// projects; so is a server of demo carrying a volume of other. An admin's
// all-projects selector still spans projects.
func TestDiscoveryRefusesOtherProjectsServers(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.lab.EnsureProject("other"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.lab.EnsureUser(lab.AdminUser, labtest.AdminPassword, "other", "admin"); err != nil {
		t.Fatal(err)
	}
	admin := f.connect(t, "lab-admin") // scoped to demo
	oc, err := admin.ForProject(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	theirs := bootServer(t, oc, "their-db", map[string]string{WorkloadKey: "shop"}, nil, "")
	ours := bootServer(t, admin, "our-web", map[string]string{WorkloadKey: "shop"}, nil, "")

	// Nova gives the owner, as the refusal relies on.
	s, err := admin.GetServer(ctx, theirs)
	if err != nil || s.TenantID != oc.ProjectID() || s.TenantID == admin.ProjectID() {
		t.Fatalf("server %s: tenant_id %q (%v), want other's %s", theirs, s.TenantID, err, oc.ProjectID())
	}
	check := func(what string, err error, name, id string) {
		t.Helper()
		if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), id) ||
			!strings.Contains(err.Error(), oc.ProjectID()) || !strings.Contains(err.Error(), admin.ProjectID()) {
			t.Errorf("%s: %v, want forbidden naming %s (%s) and projects %s and %s", what, err, name, id, oc.ProjectID(), admin.ProjectID())
		}
	}
	_, err = admin.DiscoverWorkload(ctx, "shop", Selector{ServerIDs: []string{ours, theirs}})
	check("their server by id", err, "their-db", theirs)
	if _, err := f.lab.CreateStack(admin.ProjectID(), "shop", "", []lab.StackResource{{Name: "db", Type: "OS::Nova::Server", PhysicalID: theirs}}); err != nil {
		t.Fatal(err)
	}
	_, err = admin.DiscoverWorkload(ctx, "shop", Selector{Stack: "shop"})
	check("their server in our stack", err, "their-db", theirs)

	// Our own servers, and an admin's explicit all-projects selector.
	if w, err := admin.DiscoverWorkload(ctx, "shop", Selector{ServerIDs: []string{ours}}); err != nil || len(w.Servers) != 1 {
		t.Errorf("our server: %v", err)
	}
	if got, err := admin.Discover(ctx, Selector{Workload: "shop", AllProjects: true}); err != nil || names(got) != "our-web,their-db" {
		t.Errorf("all projects: %s %v", names(got), err)
	}

	// Their volume on our server.
	vol, err := oc.CreateVolume(ctx, VolumeOpts{Name: "their-data", SizeGB: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oc.WaitVolume(ctx, vol, "available", waitLong); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AttachVolume(ctx, ours, vol); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.WaitVolume(ctx, vol, "in-use", waitLong); err != nil {
		t.Fatal(err)
	}
	_, err = admin.DiscoverWorkload(ctx, "shop", Selector{ServerIDs: []string{ours}})
	check("their volume on our server", err, "their-data", vol)
}

// TestWorkloadNames: the workloads of a project are the distinct
// raksha.workload values of its own servers, sorted; a server without the
// key is none, and another project's server is never one, even for an
// admin client whose Nova could list every project.
func TestWorkloadNames(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.lab.EnsureProject("other"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.lab.EnsureUser(lab.AdminUser, labtest.AdminPassword, "other", "admin"); err != nil {
		t.Fatal(err)
	}
	admin := f.connect(t, "lab-admin") // scoped to demo
	oc, err := admin.ForProject(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	bootServer(t, admin, "web-1", map[string]string{WorkloadKey: "shop"}, nil, "")
	bootServer(t, admin, "web-2", map[string]string{WorkloadKey: "shop"}, nil, "")
	bootServer(t, admin, "batch", map[string]string{WorkloadKey: "etl"}, nil, "")
	bootServer(t, admin, "pet", nil, nil, "")
	bootServer(t, oc, "theirs", map[string]string{WorkloadKey: "secret"}, nil, "")
	got, err := admin.WorkloadNames(ctx)
	if err != nil || strings.Join(got, ",") != "etl,shop" {
		t.Errorf("demo's workloads: %v %v, want etl,shop", got, err)
	}
	got, err = oc.WorkloadNames(ctx)
	if err != nil || strings.Join(got, ",") != "secret" {
		t.Errorf("other's workloads: %v %v, want secret", got, err)
	}
}
