package api_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/labtest"
)

// labCloud connects to the lab's cloud as its admin, scoped to the admin
// project, after giving the admin a role in alpha and beta (as the
// control worker's cloud user needs one in every tenant project).
func labCloud(t *testing.T, l *lab.Lab) *cloud.Client {
	t.Helper()
	for _, p := range []string{"alpha", "beta"} {
		if _, err := l.EnsureUser(lab.AdminUser, labtest.AdminPassword, p, "admin"); err != nil {
			t.Fatal(err)
		}
	}
	c, err := cloud.Connect(context.Background(), cloud.Config{AuthURL: l.AuthURL(), Username: lab.AdminUser,
		Password: labtest.AdminPassword, ProjectName: lab.AdminProject, UserDomainName: "Default",
		ProjectDomainName: "Default", PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// bootServer creates a server of the lab guest image in the client's
// project, with metadata, and waits for it to be active.
func bootServer(t *testing.T, c *cloud.Client, name string, meta map[string]string) string {
	t.Helper()
	ctx := context.Background()
	id, err := c.CreateServer(ctx, &cloud.ServerMeta{Name: name, Flavor: cloud.FlavorMeta{Name: lab.Flavor},
		Image: &cloud.ImageMeta{Name: lab.GuestImage}, Ports: []cloud.PortMeta{{NetworkName: lab.Network}}, Metadata: meta}, nil, cloud.Remap{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitServer(ctx, id, "ACTIVE", time.Minute); err != nil {
		t.Fatal(err)
	}
	return id
}

// attachNewVolume creates a volume in vc's project and attaches it to the
// server through sc.
func attachNewVolume(t *testing.T, vc, sc *cloud.Client, server, name string) string {
	t.Helper()
	ctx := context.Background()
	vol, err := vc.CreateVolume(ctx, cloud.VolumeOpts{Name: name, SizeGB: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vc.WaitVolume(ctx, vol, "available", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.AttachVolume(ctx, server, vol); err != nil {
		t.Fatal(err)
	}
	if _, err := vc.WaitVolume(ctx, vol, "in-use", time.Minute); err != nil {
		t.Fatal(err)
	}
	return vol
}

type workloadList struct {
	Workloads []api.WorkloadView `json:"workloads"`
}

func workloadNames(l workloadList) []string {
	var out []string
	for _, w := range l.Workloads {
		out = append(out, w.Name)
	}
	return out
}

func serverNames(w api.WorkloadView) []string {
	var out []string
	for _, s := range w.Servers {
		out = append(out, s.Name)
	}
	return out
}

// TestWorkloads: GET /v1/workloads lists the workloads of the caller's
// project as the control worker's discovery finds them on the lab cloud
// (servers by their raksha.workload metadata, their volumes), never a
// server of another project even under the same workload name; another
// project's listing needs a role there (an admin's in any); a workload
// that discovery refuses (another project's volume on one of its servers)
// is listed with a message that names neither the other project nor its
// volume.
func TestWorkloads(t *testing.T) {
	src := &api.CloudWorkloads{}
	e := newEnv(t, lab.Options{}, lazyTemporal(t), api.Config{Workloads: src}, nil)
	admin0 := labCloud(t, e.lab)
	src.Client = admin0
	ctx := context.Background()
	ac, err := admin0.ForProject(ctx, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	bc, err := admin0.ForProject(ctx, "beta")
	if err != nil {
		t.Fatal(err)
	}
	web1 := bootServer(t, ac, "web-1", map[string]string{cloud.WorkloadKey: "web"})
	web2 := bootServer(t, ac, "web-2", map[string]string{cloud.WorkloadKey: "web"})
	bootServer(t, ac, "app-1", map[string]string{cloud.WorkloadKey: "app"})
	bootServer(t, ac, "pet", nil)
	bootServer(t, bc, "db-1", map[string]string{cloud.WorkloadKey: "db"})
	bootServer(t, bc, "web-b", map[string]string{cloud.WorkloadKey: "web"})
	vol := attachNewVolume(t, ac, ac, web1, "web-data")

	aliceTok := e.token(t, alice, "alpha")
	bobTok := e.token(t, bob, "beta")
	carolTok := e.token(t, carol, "alpha")
	ritaTok := e.token(t, rita, "alpha")
	adminTok := e.token(t, admin, lab.AdminProject)

	var l workloadList
	start := time.Now()
	st, body := e.call(t, aliceTok, "GET", "/v1/workloads", nil, &l)
	took := time.Since(start)
	if st != 200 || !slices.Equal(workloadNames(l), []string{"app", "web"}) {
		t.Fatalf("alice lists alpha's workloads: %d %s", st, body)
	}
	t.Logf("GET /v1/workloads: 2 workloads of 3 servers discovered in %v (token not yet cached)", took.Round(time.Millisecond))
	web := l.Workloads[1]
	if !slices.Equal(serverNames(web), []string{"web-1", "web-2"}) || web.ProjectID != e.projects["alpha"] || web.Error != "" || web.DiscoveredAt == nil {
		t.Errorf("alpha's web: %+v", web)
	}
	if s := web.Servers[0]; s.ID != web1 || s.Status != "ACTIVE" || s.Flavor != lab.Flavor || s.Image != lab.GuestImage ||
		len(s.Volumes) != 1 || s.Volumes[0].ID != vol || s.Volumes[0].Name != "web-data" || s.Volumes[0].SizeGiB != 1 {
		t.Errorf("web-1: %+v", s)
	}
	if s := web.Servers[1]; s.ID != web2 || len(s.Volumes) != 0 {
		t.Errorf("web-2: %+v", s)
	}
	if st, body := e.call(t, ritaTok, "GET", "/v1/workloads", nil, &l); st != 200 || len(l.Workloads) != 2 {
		t.Errorf("the reader lists alpha's workloads: %d %s", st, body)
	}
	if st, body := e.call(t, bobTok, "GET", "/v1/workloads", nil, &l); st != 200 || !slices.Equal(workloadNames(l), []string{"db", "web"}) ||
		!slices.Equal(serverNames(l.Workloads[1]), []string{"web-b"}) {
		t.Errorf("bob lists beta's workloads: %d %s", st, body)
	}
	st, body = e.call(t, aliceTok, "GET", "/v1/workloads?project_id="+e.projects["beta"], nil, nil)
	wantError(t, "alice lists beta's workloads", st, body, 403, msgPolicy("workload:list"))
	st, body = e.call(t, aliceTok, "GET", "/v1/workloads?project_id=../x", nil, nil)
	wantError(t, "a bad project id", st, body, 400, `Invalid project_id "../x".`)
	st, body = e.call(t, "", "GET", "/v1/workloads", nil, nil)
	wantError(t, "no token", st, body, 401, msgUnauth)
	if st, body := e.call(t, carolTok, "GET", "/v1/workloads?project_id="+e.projects["beta"], nil, &l); st != 200 || !slices.Equal(workloadNames(l), []string{"db", "web"}) {
		t.Errorf("carol lists beta's workloads with an alpha token: %d %s", st, body)
	}
	if st, body := e.call(t, adminTok, "GET", "/v1/workloads?project_id="+e.projects["beta"], nil, &l); st != 200 || !slices.Equal(workloadNames(l), []string{"db", "web"}) {
		t.Errorf("the admin lists beta's workloads: %d %s", st, body)
	}

	// Beta's volume on alpha's web-2: discovery refuses alpha's web, and
	// alice reads why without learning beta's id or the volume's name.
	attachNewVolume(t, bc, ac, web2, "beta-secret-volume")
	if st, body := e.call(t, aliceTok, "GET", "/v1/workloads", nil, &l); st != 200 || len(l.Workloads) != 2 ||
		l.Workloads[1].Error != "Discovery refuses this workload: one of its servers or volumes belongs to another project." ||
		len(l.Workloads[1].Servers) != 0 || l.Workloads[0].Error != "" {
		t.Errorf("alpha's web with beta's volume: %d %s", st, body)
	} else if slices.ContainsFunc([]string{e.projects["beta"], "beta-secret-volume"}, func(s string) bool { return strings.Contains(string(body), s) }) {
		t.Errorf("the refusal discloses beta's project or volume: %s", body)
	}
	e.checkLogs(t)
}
