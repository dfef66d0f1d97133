package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/repo"
)

// ext4Image makes a 64 MiB ext4 image (mkfs.ext4 -d, no root needed) of
// a staged tree: etc/app/{app.conf, big.bin (3 MiB and a bit), link →
// app.conf, abs → /etc/app/app.conf, escape → ../../../../etc/hostname,
// many/ (30 files)}. It returns the image and the staged directory.
func ext4Image(t *testing.T) (string, string) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("mkfs.ext4 missing in CI: run make test-deps (Debian package e2fsprogs)")
		}
		t.Skip("SKIPPED: mkfs.ext4 (e2fsprogs) not installed: run make test-deps")
	}
	staging := filepath.Join(t.TempDir(), "staging")
	app := filepath.Join(staging, "etc", "app")
	if err := os.MkdirAll(filepath.Join(app, "many"), 0o755); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 3<<20+12345)
	for i := range big {
		big[i] = byte(i*7 + i/4096)
	}
	files := map[string][]byte{"app.conf": []byte("port = 8080\n"), "big.bin": big}
	for i := range 30 {
		files[fmt.Sprintf("many/f%02d", i)] = []byte(fmt.Sprint(i))
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(app, name), data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	for name, target := range map[string]string{"link": "app.conf", "abs": "/etc/app/app.conf", "escape": "../../../../etc/hostname"} {
		if err := os.Symlink(target, filepath.Join(app, name)); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(t.TempDir(), "root.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", staging, img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return img, staging
}

type fileList struct {
	Path  string         `json:"path"`
	Files []api.FileView `json:"files"`
	Links []api.Link     `json:"files_links"`
}

// get sends a GET with the token and headers and returns the answer whole.
func (e *env) get(t *testing.T, token, path string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", e.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Auth-Token", token)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, data
}

// TestBackupFiles: a real ext4 image backed up into the repository as a
// backup of alpha is listed and read through the API with raksha's own
// reader: directory pages, types, symlink targets, a file's bytes whole
// and by range, symlinks followed inside the file system only (one that
// climbs out resolves in the image, never on the host); another project's
// member cannot list or download (404, as if the backup did not exist), a
// reader may not (403); paths, limits, disks and file systems out of
// bounds are refused by status and message.
func TestBackupFiles(t *testing.T) {
	e := newEnv(t, lab.Options{}, lazyTemporal(t), api.Config{}, nil)
	img, staging := ext4Image(t)
	const bid = "20261203-000000-alpha"
	src, _ := json.Marshal(map[string]any{"name": "web", "project_id": e.projects["alpha"],
		"servers": []any{map[string]any{"id": "srv-alpha", "name": "web-1"}}})
	backUp(t, e.repo, img, repo.BackupSpec{ID: bid, Labels: map[string]string{"workload": "web", "project": e.projects["alpha"]}, Source: src})
	aliceTok := e.token(t, alice, "alpha")
	bobTok := e.token(t, bob, "beta")
	ritaTok := e.token(t, rita, "alpha")
	base := "/v1/backups/" + bid + "/disks/vm1~root/files"
	list := base + "?path=" + url.QueryEscape("/etc/app")
	content := base + "/content?path=" + url.QueryEscape("/etc/app/big.bin")

	// The backup shows the disk's id the routes take.
	var one struct{ Backup api.BackupView }
	if st, body := e.call(t, aliceTok, "GET", "/v1/backups/"+bid, nil, &one); st != 200 || len(one.Backup.Disks) != 1 || one.Backup.Disks[0].ID != "vm1~root" {
		t.Fatalf("show: %d %s", st, body)
	}

	// Another project's member, the reader.
	for _, p := range []string{list, content} {
		st, body := e.call(t, bobTok, "GET", p, nil, nil)
		wantError(t, "bob: "+p, st, body, 404, "Backup "+bid+" could not be found.")
	}
	st, body := e.call(t, ritaTok, "GET", list, nil, nil)
	wantError(t, "the reader lists", st, body, 403, msgPolicy("backup:files:list"))
	st, body = e.call(t, ritaTok, "GET", content, nil, nil)
	wantError(t, "the reader downloads", st, body, 403, msgPolicy("backup:files:download"))

	// Listing.
	var l fileList
	if st, body := e.call(t, aliceTok, "GET", base, nil, &l); st != 200 || l.Path != "/" {
		t.Fatalf("list /: %d %s", st, body)
	}
	var names []string
	for _, f := range l.Files {
		names = append(names, f.Name)
	}
	if slices.Sort(names); !slices.Equal(names, []string{"etc", "lost+found"}) {
		t.Errorf("/ holds %v", names)
	}
	if st, body := e.call(t, aliceTok, "GET", list, nil, &l); st != 200 || len(l.Files) != 6 || len(l.Links) != 0 {
		t.Fatalf("list /etc/app: %d %s", st, body)
	}
	byName := map[string]api.FileView{}
	for _, f := range l.Files {
		byName[f.Name] = f
	}
	if f := byName["app.conf"]; f.Type != "file" || f.Size != 12 || f.Mode != "0640" || f.Modified.IsZero() {
		t.Errorf("app.conf: %+v", f)
	}
	if f := byName["big.bin"]; f.Type != "file" || f.Size != 3<<20+12345 {
		t.Errorf("big.bin: %+v", f)
	}
	if f := byName["link"]; f.Type != "symlink" || f.Target != "app.conf" {
		t.Errorf("link: %+v", f)
	}
	if f := byName["many"]; f.Type != "directory" {
		t.Errorf("many: %+v", f)
	}
	// Pages of 10 over 30 entries, each name once.
	var all []string
	next := base + "?limit=10&path=" + url.QueryEscape("/etc/app/many")
	for pages := 0; next != ""; pages++ {
		if pages > 4 {
			t.Fatal("more than 4 pages of 30 entries by 10")
		}
		var pg fileList
		if st, body := e.call(t, aliceTok, "GET", next, nil, &pg); st != 200 || len(pg.Files) > 10 {
			t.Fatalf("page %d: %d %s", pages, st, body)
		}
		for _, f := range pg.Files {
			all = append(all, f.Name)
		}
		next = ""
		if len(pg.Links) == 1 {
			next = pg.Links[0].Href
		}
	}
	if slices.Sort(all); len(all) != 30 || slices.Compact(slices.Clone(all))[29] != "f29" {
		t.Errorf("the pages of many/: %v", all)
	}

	// Downloads: whole, by range, through symlinks inside the image.
	want, err := os.ReadFile(filepath.Join(staging, "etc/app/big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, data := e.get(t, aliceTok, content, nil)
	took := time.Since(start)
	if resp.StatusCode != 200 || !bytes.Equal(data, want) || resp.Header.Get("Content-Length") != fmt.Sprint(len(want)) ||
		resp.Header.Get("Content-Type") != "application/octet-stream" || resp.Header.Get("Content-Disposition") != `attachment; filename=big.bin` {
		t.Fatalf("download big.bin: %d, %d bytes (want %d), headers %v", resp.StatusCode, len(data), len(want), resp.Header)
	}
	t.Logf("GET .../files/content of a %d-byte file: %v (%.1f MiB/s)", len(want), took.Round(time.Millisecond), float64(len(want))/(1<<20)/took.Seconds())
	resp, data = e.get(t, aliceTok, content, map[string]string{"Range": "bytes=1048570-1048589"})
	if resp.StatusCode != 206 || !bytes.Equal(data, want[1048570:1048590]) {
		t.Errorf("a range of big.bin: %d %q", resp.StatusCode, data)
	}
	for _, link := range []string{"link", "abs"} {
		resp, data = e.get(t, aliceTok, base+"/content?path=/etc/app/"+link, nil)
		if resp.StatusCode != 200 || string(data) != "port = 8080\n" {
			t.Errorf("download through %s: %d %q", link, resp.StatusCode, data)
		}
	}
	st, body = e.call(t, aliceTok, "GET", base+"/content?path=/etc/app/escape", nil, nil)
	wantError(t, "a symlink out of the file system", st, body, 404, "Path /etc/app/escape could not be found in disk vm1~root of backup "+bid+".")
	st, body = e.call(t, aliceTok, "GET", base+"/content?path=/etc/../../etc/hostname", nil, nil)
	wantError(t, "a path climbing out", st, body, 404, "Path /etc/hostname could not be found in disk vm1~root of backup "+bid+".")

	// Refusals by bounds and kinds.
	for _, c := range []struct {
		what, path string
		status     int
		msg        string
	}{
		{"content of a directory", base + "/content?path=/etc/app", 400, "Path /etc/app is not a regular file in disk vm1~root of backup " + bid + "."},
		{"listing of a file", base + "?path=/etc/app/app.conf", 400, "Path /etc/app/app.conf is not a directory in disk vm1~root of backup " + bid + "."},
		{"content without a path", base + "/content", 400, "No path given."},
		{"a path too long", base + "?path=/" + strings.Repeat("a", 4100), 400, "Invalid path: at most 4096 bytes, no NUL."},
		{"a missing path", base + "?path=/nope", 404, "Path /nope could not be found in disk vm1~root of backup " + bid + "."},
		{"a limit too large", base + "?limit=1001", 400, `Invalid limit "1001": want an integer from 1 to 1000.`},
		{"an unknown marker", base + "?marker=zzz", 400, "Marker zzz could not be found."},
		{"an unknown disk", "/v1/backups/" + bid + "/disks/vm1~nope/files", 404, "Disk vm1~nope of backup " + bid + " could not be found."},
		{"a bad partition", base + "?partition=0", 400, `Invalid partition "0": want a partition number from 1 to 128.`},
		{"a disk without a file system", "/v1/backups/" + e.backups["alpha"][0] + "/disks/root/files", 400,
			"No ext2/3/4 file system to read on disk vm1~root of backup " + e.backups["alpha"][0] + "."},
	} {
		st, body := e.call(t, aliceTok, "GET", c.path, nil, nil)
		wantError(t, c.what, st, body, c.status, c.msg)
	}
	e.checkLogs(t)
}

// gate is Repositories in front of the registry that holds the second
// Open after it is armed until it is released (a file request opens the
// repository once to load the backup and once inside its slot).
type gate struct {
	api.Repositories
	mu      sync.Mutex
	armed   bool
	calls   int
	held    chan struct{}
	release chan struct{}
}

func (g *gate) Wrap(r api.Repositories) api.Repositories { g.Repositories = r; return g }

func (g *gate) Open(ctx context.Context, id string) (*repo.Repository, error) {
	g.mu.Lock()
	hold := false
	if g.armed {
		if g.calls++; g.calls == 2 {
			hold = true
		}
	}
	g.mu.Unlock()
	if hold {
		close(g.held)
		<-g.release
	}
	return g.Repositories.Open(ctx, id)
}

// TestBackupFilesBusy: past MaxFileRequests file requests at once, the
// next is refused with 429 and answered again once one ends.
func TestBackupFilesBusy(t *testing.T) {
	g := &gate{held: make(chan struct{}), release: make(chan struct{})}
	e := newEnv(t, lab.Options{}, lazyTemporal(t), api.Config{Repos: g, MaxFileRequests: 1}, nil)
	img, _ := ext4Image(t)
	const bid = "20261203-000000-alpha"
	src, _ := json.Marshal(map[string]any{"name": "web", "project_id": e.projects["alpha"]})
	backUp(t, e.repo, img, repo.BackupSpec{ID: bid, Labels: map[string]string{"workload": "web"}, Source: src})
	tok := e.token(t, alice, "alpha")
	list := "/v1/backups/" + bid + "/disks/vm1~root/files?path=/etc"
	g.mu.Lock()
	g.armed = true
	g.mu.Unlock()
	done := make(chan int)
	go func() {
		resp, _ := e.get(t, tok, list, nil)
		done <- resp.StatusCode
	}()
	<-g.held // the first request holds the only slot
	st, body := e.call(t, tok, "GET", list, nil, nil)
	wantError(t, "a second file request at once", st, body, 429, "Too many file requests in progress; try again later.")
	close(g.release)
	if st := <-done; st != 200 {
		t.Errorf("the first request: %d", st)
	}
	if st, body := e.call(t, tok, "GET", list, nil, nil); st != 200 {
		t.Errorf("a request after it: %d %s", st, body)
	}
}
