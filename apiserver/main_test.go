package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/testsuite"
	"gopkg.in/yaml.v3"

	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/labtest"
	"github.com/raksha-backup/raksha/internal/testenv/repotest"
)

// TestConfigRefused: a configuration with an unknown key, or without what
// the API cannot run without, is refused naming what is wrong.
func TestConfigRefused(t *testing.T) {
	dir := t.TempDir()
	for body, want := range map[string]string{
		"listen: x\nkeystone: {auth_url: u, username: n, password_file: f, project_name: p}\nrepositories: {main: {url: file:///r}}\nhooks: []\n":      "field hooks not found",
		"keystone: {auth_url: u}\nrepositories: {main: {url: file:///r}}\n":                                                                            "keystone needs auth_url, username, password_file and project_name",
		"keystone: {auth_url: u, username: n, password_file: f, project_name: p}\n":                                                                    "no repositories",
		"keystone: {auth_url: u, username: n, password_file: f, project_name: p}\nrepositories: {main: {url: file:///r}}\ndefault_repository: other\n": `default_repository "other" is not in repositories`,
	} {
		path := filepath.Join(dir, "api.yaml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadConfig(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %q: error %v, want one with %q", body, err, want)
		}
	}
}

// TestServes runs raksha-api as its main does, from a configuration file,
// against the lab's Keystone and a Temporal dev server, and lists a
// tenant's (empty) backups through it.
func TestServes(t *testing.T) {
	_, src, _, _ := runtime.Caller(0)
	bin := filepath.Join(filepath.Dir(filepath.Dir(src)), "bin", "temporal")
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("the temporal CLI is missing: run make test")
		}
		t.Skip("SKIPPED: the temporal CLI is missing at " + bin + ": run make test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dev, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{ExistingPath: bin, LogLevel: "error", ClientOptions: &client.Options{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dev.Stop() })
	l := labtest.Start(t)
	if _, err := l.EnsureProject("alpha"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.EnsureUser("alice", "alice-pw", "alpha", "member"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	repotest.NewLocal(t, filepath.Join(dir, "repo"), 64<<10)
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := write("api.yaml", fmt.Sprintf(`listen: %s
keystone: {auth_url: %s, username: %s, password_file: %s, project_name: %s}
temporal: {address: %s}
repositories: {main: {url: "file://%s", password_file: %s}}
default_repository: main
log_format: json
`, addr, l.AuthURL(), lab.AdminUser, write("ks-pw", labtest.AdminPassword+"\n"), lab.AdminProject, dev.FrontendHostPort(),
		filepath.Join(dir, "repo"), write("repo-pw", repotest.Password+"\n")))
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(rctx, slog.New(slog.DiscardHandler), []string{"--config", cfg}, func(string) string { return "" })
	}()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	body, _ := json.Marshal(map[string]any{"auth": map[string]any{
		"identity": map[string]any{"methods": []string{"password"}, "password": map[string]any{"user": map[string]any{"name": "alice", "password": "alice-pw", "domain": map[string]string{"id": "default"}}}},
		"scope":    map[string]any{"project": map[string]any{"name": "alpha", "domain": map[string]string{"id": "default"}}}}})
	resp, err := http.Post(l.AuthURL()+"/auth/tokens", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	tok := resp.Header.Get("X-Subject-Token")
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, _ := http.NewRequest("GET", "http://"+addr+"/v1/backups", nil)
		req.Header.Set("X-Auth-Token", tok)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || strings.TrimSpace(string(data)) != `{"backups":[]}` {
				t.Fatalf("GET /v1/backups: %d %s", resp.StatusCode, data)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("raksha-api does not answer: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// /healthz needs no token and says whether Temporal answers.
	health := func() (int, string) {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(data))
	}
	if st, body := health(); st != 200 || body != "ok" {
		t.Errorf("GET /healthz with Temporal up: %d %q, want 200 ok", st, body)
	}
	if err := dev.Stop(); err != nil {
		t.Fatal(err)
	}
	if st, body := health(); st != 503 || !strings.HasPrefix(body, "temporal: ") {
		t.Errorf("GET /healthz with Temporal stopped: %d %q, want 503 naming Temporal", st, body)
	}
}

// TestConfigInREADME: the README's example api.yaml names every key of
// Config (and keystone's), and nothing raksha-api does not read; it loads.
func TestConfigInREADME(t *testing.T) {
	_, src, _, _ := runtime.Caller(0)
	data, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(src)), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(data), "```yaml\n# api.yaml\n")
	if !ok {
		t.Fatal("README.md has no ```yaml block starting with # api.yaml")
	}
	block, _, _ = strings.Cut(block, "```")
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(block), &doc); err != nil {
		t.Fatal(err)
	}
	var inREADME []string
	for k, v := range doc {
		inREADME = append(inREADME, k)
		if k == "keystone" {
			for kk := range v.(map[string]any) {
				inREADME = append(inREADME, k+"."+kk)
			}
		}
	}
	var inCode []string
	for _, f := range reflect.VisibleFields(reflect.TypeFor[Config]()) {
		k, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		inCode = append(inCode, k)
		if k == "keystone" {
			for _, ff := range reflect.VisibleFields(f.Type) {
				kk, _, _ := strings.Cut(ff.Tag.Get("yaml"), ",")
				inCode = append(inCode, k+"."+kk)
			}
		}
	}
	sort.Strings(inREADME)
	sort.Strings(inCode)
	if !slices.Equal(inREADME, inCode) {
		t.Errorf("README's api.yaml keys:\n%v\nConfig's:\n%v", inREADME, inCode)
	}
	path := filepath.Join(t.TempDir(), "api.yaml")
	if err := os.WriteFile(path, []byte(block), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(path); err != nil {
		t.Errorf("the README's example does not load: %v", err)
	}
}
