package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/raksha-backup/raksha/deploy"
)

// TestDeployComposeAgreesWithCLI: the services of docker-compose.yml that
// run the raksha CLI (temporal-setup, which registers the search attributes
// before the workers start, and the operator's `raksha` tool) give it
// commands and flags it has, variables it reads, the Temporal address and
// namespace the workers use, and the repository the workers' registry
// names.
func TestDeployComposeAgreesWithCLI(t *testing.T) {
	r, err := deploy.Root()
	if err != nil {
		t.Fatal(err)
	}
	c, err := deploy.LoadCompose(filepath.Join(r, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	// The variables the CLI reads: getenv("NAME") in its sources, and the
	// AWS SDK's that the S3 backend documents.
	known := map[string]bool{}
	files, _ := filepath.Glob(filepath.Join(r, "starter", "*.go"))
	for _, f := range append(files, filepath.Join(r, "internal", "repo", "backend", "s3", "s3.go")) {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`getenv\("([A-Z0-9_]+)"\)`).FindAllSubmatch(b, -1) {
			known[string(m[1])] = true
		}
		if strings.HasSuffix(f, "s3.go") {
			for _, m := range regexp.MustCompile(`\bAWS_[A-Z0-9_]+\b`).FindAll(b, -1) {
				known[string(m)] = true
			}
		}
	}
	if !known["RAKSHA_REPO"] || !known["AWS_SHARED_CREDENTIALS_FILE"] {
		t.Fatalf("the variables the CLI reads were not found: %v", known)
	}
	cliRun := func(args []string) error {
		var out, errb bytes.Buffer
		a := newApp(&out, &errb, func(string) string { return "" })
		cmd := a.root()
		cmd.SetArgs(args)
		cmd.SetOut(&out)
		cmd.SetErr(&errb)
		return cmd.ExecuteContext(context.Background())
	}
	var clis []string
	for _, name := range c.Names() {
		s := c.Services[name]
		if len(s.Entrypoint) == 0 || filepath.Base(s.Entrypoint[0]) != "raksha" {
			continue
		}
		clis = append(clis, name)
		args := append(append([]string{}, s.Entrypoint[1:]...), s.Command...)
		if len(args) == 0 || args[len(args)-1] != "--help" {
			args = append(args, "--help") // parse the flags, run nothing
		}
		if err := cliRun(args); err != nil {
			t.Errorf("service %s: raksha %v: %v", name, args, err)
		}
		for k := range s.Environment {
			if !known[k] {
				t.Errorf("service %s: environment %s: the raksha CLI does not read it", name, k)
			}
		}
	}
	if strings.Join(clis, ",") != "raksha,temporal-setup" {
		t.Fatalf("services running the CLI: %v, want [raksha temporal-setup]", clis)
	}
	// A flag the CLI does not have is refused even with --help, so the
	// check above can fail.
	if err := cliRun([]string{"temporal-setup", "--no-such-flag=1", "--help"}); err == nil {
		t.Fatal("raksha temporal-setup --no-such-flag --help: accepted")
	}

	setup := strings.Join(c.Services["temporal-setup"].Command, " ")
	for _, w := range []string{"control", "data"} {
		env := c.Services[w].Environment
		if !strings.Contains(setup, "--temporal="+env["TEMPORAL_ADDRESS"]) || !strings.Contains(setup, "--namespace="+env["TEMPORAL_NAMESPACE"]) {
			t.Errorf("temporal-setup (%s) registers the search attributes elsewhere than worker %s uses (%s, %s)", setup, w, env["TEMPORAL_ADDRESS"], env["TEMPORAL_NAMESPACE"])
		}
	}
	tool := c.Services["raksha"].Environment
	if tool["RAKSHA_TEMPORAL"] != c.Services["control"].Environment["TEMPORAL_ADDRESS"] {
		t.Errorf("the raksha tool's Temporal %s is not the workers' %s", tool["RAKSHA_TEMPORAL"], c.Services["control"].Environment["TEMPORAL_ADDRESS"])
	}
	var wcfg struct {
		Repositories map[string]struct {
			URL        string `yaml:"url"`
			S3Endpoint string `yaml:"s3_endpoint"`
		} `yaml:"repositories"`
	}
	host := c.Services["control"].Mount("/etc/raksha/worker.yaml")
	data, err := os.ReadFile(filepath.Join(r, host))
	if err != nil {
		t.Fatalf("the workers' configuration (%q): %v", host, err)
	}
	if err := yaml.Unmarshal(data, &wcfg); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, rc := range wcfg.Repositories {
		found = found || (rc.URL == tool["RAKSHA_REPO"] && rc.S3Endpoint == tool["RAKSHA_S3_ENDPOINT"])
	}
	if !found {
		t.Errorf("the raksha tool's repository %s at %s is none of the workers' %+v", tool["RAKSHA_REPO"], tool["RAKSHA_S3_ENDPOINT"], wcfg.Repositories)
	}
}
