// Package demo sets up the lab cloud's demo workload through the OpenStack
// API, as a tenant would: project demo, two servers with a volume each.
package demo

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/lab"
)

// The clouds.yaml entries WriteClouds writes, and the demo user.
const (
	AdminCloud = "raksha-lab"
	DemoCloud  = "raksha-lab-demo"
	DemoUser   = "demo"
)

// WriteClouds writes clouds.yaml (mode 0600: it holds the passwords).
func WriteClouds(path, authURL, adminPW, demoPW string) error {
	entry := func(name, user, pw, project string) string {
		return fmt.Sprintf(`  %s:
    auth:
      auth_url: %s
      username: %s
      password: %s
      project_name: %s
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
`, name, authURL, user, pw, project)
	}
	body := "# Written by `raksha lab up`; holds the lab's passwords.\nclouds:\n" +
		entry(AdminCloud, lab.AdminUser, adminPW, lab.AdminProject) + entry(DemoCloud, DemoUser, demoPW, "demo")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}

// Ensure creates, as the demo user through the OpenStack API, the demo
// workload if it does not exist yet: two servers with an attached volume.
func Ensure(ctx context.Context, clouds string, log *slog.Logger) error {
	c, err := cloud.Connect(ctx, cloud.Config{Cloud: DemoCloud, CloudsFile: clouds, Log: log})
	if err != nil {
		return err
	}
	existing, err := c.Discover(ctx, cloud.Selector{Workload: "demo"})
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, s := range existing {
		have[s.Name] = true
	}
	type made struct{ server, volume string }
	var todo []made
	for _, name := range []string{"demo-1", "demo-2"} {
		if have[name] {
			continue
		}
		meta := &cloud.ServerMeta{
			Name:           name,
			Metadata:       map[string]string{cloud.WorkloadKey: "demo"},
			Tags:           []string{cloud.WorkloadKey + "=demo"},
			Flavor:         cloud.FlavorMeta{Name: lab.Flavor},
			Image:          &cloud.ImageMeta{Name: lab.GuestImage},
			Ports:          []cloud.PortMeta{{NetworkName: lab.Network}},
			SecurityGroups: []cloud.SecurityGroupMeta{{Name: "default"}},
		}
		id, err := c.CreateServer(ctx, meta, nil, cloud.Remap{})
		if err != nil {
			return err
		}
		vol, err := c.CreateVolume(ctx, cloud.VolumeOpts{Name: name + "-data", SizeGB: 1, Metadata: map[string]string{cloud.WorkloadKey: "demo"}})
		if err != nil {
			return err
		}
		todo = append(todo, made{id, vol})
	}
	for _, m := range todo {
		if err := c.WaitServer(ctx, m.server, "ACTIVE", 5*time.Minute); err != nil {
			return err
		}
		if _, err := c.WaitVolume(ctx, m.volume, "available", 2*time.Minute); err != nil {
			return err
		}
		if _, err := c.AttachVolume(ctx, m.server, m.volume); err != nil {
			return err
		}
		if _, err := c.WaitVolume(ctx, m.volume, "in-use", 2*time.Minute); err != nil {
			return err
		}
	}
	return nil
}
