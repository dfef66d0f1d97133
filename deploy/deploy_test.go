package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// need returns the path of tool; a missing tool fails the test under CI
// and skips it loudly elsewhere, as the project's other tests do.
func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("%s not installed: run make test-deps (Makefile APT_TEST)", tool)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPED: " + msg)
	return ""
}

func root(t *testing.T) string {
	t.Helper()
	r, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// composeConfig runs Debian's docker-compose (1.29, Python: it validates
// the file against the compose schema and interpolates variables without
// a Docker engine) with only the environment given.
func composeConfig(t *testing.T, env ...string) (string, error) {
	t.Helper()
	bin := need(t, "docker-compose")
	empty := filepath.Join(t.TempDir(), "empty.env") // never a developer's .env
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--env-file", empty, "-f", "docker-compose.yml", "config", "-q")
	cmd.Dir = root(t)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestDeployComposeConfig: docker-compose accepts docker-compose.yml, and
// refuses it without the database password deploy/secrets.sh writes.
func TestDeployComposeConfig(t *testing.T) {
	if out, err := composeConfig(t, "TEMPORAL_DB_PASSWORD=test"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("docker-compose config -q: %v\n%s", err, out)
	}
	out, err := composeConfig(t)
	if err == nil || !strings.Contains(out, "deploy/secrets.sh") {
		t.Fatalf("docker-compose config without TEMPORAL_DB_PASSWORD: want a refusal naming deploy/secrets.sh, got err=%v\n%s", err, out)
	}
}

// TestDeployComposeFile: what the schema does not say. Images are pinned,
// the long-running services have health checks, every secret file a
// service needs is one deploy/secrets.sh writes, and no host worker runs
// in compose.
func TestDeployComposeFile(t *testing.T) {
	r := root(t)
	c, err := LoadCompose(filepath.Join(r, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	pinned := regexp.MustCompile(`^[a-z0-9./_-]+(:[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})$`)
	script, err := os.ReadFile(filepath.Join(r, "deploy", "secrets.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"postgresql", "temporal", "temporal-ui", "temporal-setup", "s3", "control", "data", "api"} {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("service %s missing (have %v)", name, c.Names())
		}
	}
	for _, name := range c.Names() {
		s := c.Services[name]
		switch {
		case s.Build != nil:
			if s.Image != "raksha:local" {
				t.Errorf("service %s builds the Dockerfile but is tagged %q, not raksha:local", name, s.Image)
			}
		case !pinned.MatchString(s.Image) || strings.HasSuffix(s.Image, ":latest"):
			t.Errorf("service %s: image %q is not pinned to a tag or digest", name, s.Image)
		}
		for _, a := range append(append([]string{}, s.Entrypoint...), s.Command...) {
			if strings.Contains(a, "--roles") && strings.Contains(a, "host") {
				t.Errorf("service %s runs a host worker: host workers run on compute nodes (deploy/systemd)", name)
			}
		}
		for _, sec := range s.Secrets {
			def, ok := c.Secrets[sec]
			if !ok {
				t.Errorf("service %s: secret %s is not defined", name, sec)
				continue
			}
			if !strings.HasPrefix(def.File, "./deploy/secrets/") {
				t.Errorf("secret %s: file %s outside deploy/secrets (ignored by git and .dockerignore)", sec, def.File)
			}
			if !strings.Contains(string(script), "put "+filepath.Base(def.File)+" ") {
				t.Errorf("secret %s: deploy/secrets.sh does not write %s", sec, def.File)
			}
		}
	}
	// The one-shots (temporal-setup, raksha) end; the UI image has no HTTP
	// client to check itself with. The rest are asked.
	for _, name := range []string{"postgresql", "temporal", "s3", "control", "data", "api"} {
		if h := c.Services[name].Healthcheck; h == nil || len(h.Test) == 0 {
			t.Errorf("service %s has no health check", name)
		}
	}
	for _, name := range []string{"control", "data", "api"} {
		d := c.Services[name].DependsOn
		if d["temporal-setup"].Condition != "service_completed_successfully" || d["s3"].Condition != "service_healthy" {
			t.Errorf("service %s must wait for temporal-setup to complete and s3 to be healthy: %+v", name, d)
		}
	}
	setup := c.Services["temporal-setup"]
	if !strings.Contains(strings.Join(setup.Command, " "), "temporal-setup") || setup.DependsOn["temporal"].Condition != "service_healthy" {
		t.Errorf("temporal-setup must run `raksha temporal-setup` once Temporal is healthy: %+v", setup)
	}
}

// TestDeploySecretsScript: deploy/secrets.sh writes every secret, the S3
// credentials file matches the S3 server's keys, a second run keeps them,
// and git and the image build ignore them.
func TestDeploySecretsScript(t *testing.T) {
	r := root(t)
	work := t.TempDir()
	if err := os.MkdirAll(filepath.Join(work, "deploy"), 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(r, "deploy", "secrets.sh"))
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(work, "deploy", "secrets.sh")
	if err := os.WriteFile(script, src, 0o755); err != nil {
		t.Fatal(err)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(work, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if out, err := exec.Command(script).CombinedOutput(); err != nil {
		t.Fatalf("deploy/secrets.sh: %v\n%s", err, out)
	}
	first := map[string]string{}
	for _, f := range []string{"s3-access-key", "s3-secret-key", "s3-credentials", "repo-password", "clouds.yaml"} {
		first[f] = read("deploy/secrets/" + f)
		if len(first[f]) < 10 {
			t.Errorf("%s: %q is too short", f, first[f])
		}
	}
	if len(first["repo-password"]) != 40 || len(first["s3-secret-key"]) != 40 {
		t.Errorf("random secrets must be 40 characters: %q %q", first["repo-password"], first["s3-secret-key"])
	}
	want := fmt.Sprintf("aws_access_key_id = %s\naws_secret_access_key = %s\n", first["s3-access-key"], first["s3-secret-key"])
	if !strings.Contains(first["s3-credentials"], want) {
		t.Errorf("s3-credentials does not hold the S3 server's keys:\n%s", first["s3-credentials"])
	}
	if fi, err := os.Stat(filepath.Join(work, "deploy", "secrets")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("deploy/secrets must be 0700: %v %v", fi.Mode(), err)
	}
	env := read(".env")
	if !regexp.MustCompile(`(?m)^TEMPORAL_DB_PASSWORD=[A-Za-z0-9]{32}$`).MatchString(env) {
		t.Errorf(".env: %q", env)
	}
	if out, err := exec.Command(script).CombinedOutput(); err != nil {
		t.Fatalf("deploy/secrets.sh again: %v\n%s", err, out)
	}
	for f, v := range first {
		if read("deploy/secrets/"+f) != v {
			t.Errorf("a second run changed %s", f)
		}
	}
	if read(".env") != env {
		t.Errorf("a second run changed .env")
	}
	ignore, err := os.ReadFile(filepath.Join(r, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	gitignore, err := os.ReadFile(filepath.Join(r, ".gitignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"deploy/secrets", ".env"} {
		if !regexp.MustCompile(`(?m)^/?` + regexp.QuoteMeta(p) + `/?$`).Match(ignore) {
			t.Errorf(".dockerignore does not keep %s out of the image", p)
		}
		if !regexp.MustCompile(`(?m)^/` + regexp.QuoteMeta(p) + `/?$`).Match(gitignore) {
			t.Errorf(".gitignore does not keep %s out of git", p)
		}
		inTree := exec.Command("git", "rev-parse", "--is-inside-work-tree")
		inTree.Dir = r
		if inTree.Run() == nil { // a git checkout (not an exported tree): ask git itself
			cmd := exec.Command("git", "check-ignore", "-q", p+"/x")
			if p == ".env" {
				cmd = exec.Command("git", "check-ignore", "-q", p)
			}
			cmd.Dir = r
			if err := cmd.Run(); err != nil {
				t.Errorf("git does not ignore %s: %v", p, err)
			}
		}
	}
}

// TestDeployDockerfile is the lint Debian does not package (no hadolint):
// base images pinned, a build stage and a runtime stage, the runtime not
// root, no ADD (never of a URL), every COPY source present in the build
// context, the Ceph build tags the Makefile uses, both binaries built and
// installed, and build and runtime on the same Debian release (librbd's
// ABI).
func TestDeployDockerfile(t *testing.T) {
	r := root(t)
	d, err := ParseDockerfile(filepath.Join(r, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Stages) < 2 {
		t.Fatalf("want a multi-stage build, have %d stage(s)", len(d.Stages))
	}
	pinned := regexp.MustCompile(`^[a-z0-9./_-]+(:[A-Za-z0-9._-]+)?(@sha256:[0-9a-f]{64})?$`)
	names := map[string]bool{}
	for _, s := range d.Stages {
		tag := s.Image[strings.LastIndex(s.Image, "/")+1:]
		if names[s.Image] {
			continue // FROM an earlier stage
		}
		if !pinned.MatchString(s.Image) || !(strings.Contains(tag, ":") || strings.Contains(tag, "@")) || strings.HasSuffix(tag, ":latest") || strings.Contains(s.Image, "$") {
			t.Errorf("line %d: base image %q is not pinned to a tag or digest", s.Line, s.Image)
		}
		if !regexp.MustCompile(`:[^@]*[0-9]`).MatchString(s.Image) {
			t.Errorf("line %d: base image %q: pin a versioned tag, not a moving name", s.Line, s.Image)
		}
		if s.Name != "" {
			names[s.Name] = true
		}
	}
	build, run := d.Stages[0], d.Stages[len(d.Stages)-1]
	if !strings.Contains(build.Image, "bookworm") || !(strings.Contains(run.Image, "bookworm") || strings.HasPrefix(run.Image, "debian:12")) {
		t.Errorf("build (%s) and runtime (%s) must both be Debian bookworm, so the binary runs with the librbd it was linked with", build.Image, run.Image)
	}
	ignore, _ := os.ReadFile(filepath.Join(r, ".dockerignore"))
	var user string
	var built, copied, entry string
	for _, in := range d.Instructions {
		switch in.Cmd {
		case "ADD":
			t.Errorf("line %d: ADD %s: use COPY (ADD fetches URLs and unpacks archives)", in.Line, in.Args)
		case "USER":
			if in.Stage == len(d.Stages)-1 {
				user = in.Args
			}
		case "RUN":
			if in.Stage == 0 {
				built += in.Args + "\n"
			}
			if strings.Contains(in.Args, "apt-get install") && !strings.Contains(in.Args, "--no-install-recommends") {
				t.Errorf("line %d: apt-get install without --no-install-recommends", in.Line)
			}
			if strings.Contains(in.Args, "apt-get install") && !strings.Contains(in.Args, "rm -rf /var/lib/apt/lists") {
				t.Errorf("line %d: apt-get install leaves the package lists in the layer", in.Line)
			}
		case "COPY":
			f := strings.Fields(in.Args)
			from := false
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				from = from || strings.HasPrefix(f[0], "--from=")
				f = f[1:]
			}
			if len(f) < 2 {
				t.Errorf("line %d: COPY %s: want SOURCE... DEST", in.Line, in.Args)
				continue
			}
			if from {
				if in.Stage == len(d.Stages)-1 {
					copied += in.Args + "\n"
				}
				continue
			}
			for _, src := range f[:len(f)-1] {
				if strings.Contains(src, "://") {
					t.Errorf("line %d: COPY of a URL %s", in.Line, src)
					continue
				}
				m, err := filepath.Glob(filepath.Join(r, src))
				if err != nil || len(m) == 0 {
					t.Errorf("line %d: COPY source %s does not exist in the build context", in.Line, src)
				}
				if src != "." && strings.Contains(string(ignore), src) {
					t.Errorf("line %d: COPY source %s is excluded by .dockerignore", in.Line, src)
				}
			}
		case "ENTRYPOINT":
			entry = in.Args
		}
	}
	if u := strings.SplitN(user, ":", 2)[0]; u == "" || u == "root" || u == "0" {
		t.Errorf("the runtime stage runs as %q: want an unprivileged USER", user)
	}
	mk, err := os.ReadFile(filepath.Join(r, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	tags := regexp.MustCompile(`-tags (ceph[a-z,]*)`).FindSubmatch(mk)
	if tags == nil {
		t.Fatal("Makefile: no -tags ceph... in CEPH_TAGS")
	}
	for _, pkg := range []string{"./starter", "./worker", "./apiserver"} {
		if !regexp.MustCompile(`-tags ` + regexp.QuoteMeta(string(tags[1])) + ` [^\n]*` + regexp.QuoteMeta(pkg) + `\b`).MatchString(built) {
			t.Errorf("the build stage does not build %s with -tags %s (as the Makefile does)", pkg, tags[1])
		}
	}
	for _, bin := range []string{"raksha", "raksha-worker", "raksha-api"} {
		if !regexp.MustCompile(`/` + bin + `\b[^-]`).MatchString(copied) {
			t.Errorf("the runtime stage does not copy %s from the build stage:\n%s", bin, copied)
		}
	}
	if !strings.Contains(entry, "raksha-worker") {
		t.Errorf("ENTRYPOINT %s: want raksha-worker (docker-compose.yml's workers give only flags)", entry)
	}
}

// TestDeploySystemdUnits runs systemd-analyze verify (Debian's systemd;
// it needs no systemd as PID 1) on every unit, in a root of its own: the
// host's unit directory copied in, a stand-in for libvirtd.service (in
// libvirt-daemon-system, which the tests do not install: they start
// libvirtd without systemd), and an executable stand-in at the ExecStart
// path (verify checks it is executable; worker/deploy_test.go checks the
// arguments against the real raksha-worker). Any output fails: verify
// exits 0 on an unknown key and only says so. A unit with an unknown key
// is checked to fail, so the check can.
func TestDeploySystemdUnits(t *testing.T) {
	bin := need(t, "systemd-analyze")
	r := root(t)
	units, err := filepath.Glob(filepath.Join(r, "deploy", "systemd", "*.service"))
	if err != nil || len(units) < 4 {
		t.Fatalf("want the host, control, data and API units in deploy/systemd, have %v (%v)", units, err)
	}
	sysroot := t.TempDir()
	unitDir := filepath.Join(sysroot, "etc", "systemd", "system")
	for _, d := range []string{unitDir, filepath.Join(sysroot, "usr", "lib", "systemd"), filepath.Join(sysroot, "usr", "local", "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", filepath.Join(sysroot, "usr", "lib", "systemd")).CombinedOutput(); err != nil {
		t.Fatalf("copy the unit directory: %v\n%s", err, out)
	}
	stub := "[Unit]\nDescription=stand-in for libvirt-daemon-system's libvirtd.service\n[Service]\nExecStart=/bin/true\n"
	if err := os.WriteFile(filepath.Join(unitDir, "libvirtd.service"), []byte(stub), 0o644); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range units {
		pu, err := ParseUnit(u)
		if err != nil {
			t.Fatal(err)
		}
		exe, _, err := pu.ExecStart("host")
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		if err := os.WriteFile(filepath.Join(sysroot, exe), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		base := filepath.Base(u)
		if err := os.WriteFile(filepath.Join(unitDir, base), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(base, "@.service") {
			base = strings.TrimSuffix(base, "@.service") + "@host.service"
		}
		names = append(names, base)
	}
	verify := func(names ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"verify", "--root=" + sysroot}, names...)...)
		cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := verify(names...); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify %v: %v\n%s", names, err, out)
	}
	bad := "[Unit]\nDescription=broken on purpose\n[Service]\nExecStart=/bin/true\nKilMode=process\n"
	if err := os.WriteFile(filepath.Join(unitDir, "raksha-broken.service"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, _ := verify("raksha-broken.service"); !strings.Contains(out, "KilMode") {
		t.Fatalf("systemd-analyze verify let an unknown key through: %q", out)
	}
	t.Logf("systemd-analyze verify: %v clean", names)

	// systemd-analyze security: the hardening is there. The control and
	// data workers need no privilege (exposure "OK"); the host worker runs
	// as root with libvirt and the instances directory, so less is
	// possible, but not the unhardened 9+ of a bare unit.
	limit := map[string]float64{"raksha-control.service": 2.5, "raksha-data.service": 2.5, "raksha-api.service": 2.5, "raksha-worker@host.service": 7.0}
	exposure := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)
	for _, name := range names {
		out, err := exec.Command(bin, "security", "--offline=true", "--root="+sysroot, name).CombinedOutput()
		m := exposure.FindSubmatch(out)
		if m == nil {
			t.Errorf("systemd-analyze security %s: %v\n%s", name, err, out)
			continue
		}
		level, _ := strconv.ParseFloat(string(m[1]), 64)
		max, ok := limit[name]
		if !ok {
			t.Errorf("%s: no exposure limit set in this test", name)
			continue
		}
		if level > max {
			t.Errorf("%s: exposure %.1f, want at most %.1f (systemd-analyze security)", name, level, max)
		}
		t.Logf("systemd-analyze security %s: exposure %.1f (at most %.1f)", name, level, max)
	}
}
