package api_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/repo"
)

// TestLatency measures the API's latency per call on the lab (its
// Keystone, a Temporal dev server, a local repository of five backups):
// sequential calls of one client over a kept-alive connection, with the
// token's validation cached (the default 30 s) and not cached (every call
// asks Keystone). RAKSHA_API_LATENCY_CALLS sets the calls per row
// (default 50; the README's figures are from 200). It fails only on a
// call that does not succeed. Rows cover workloads (the lab cloud's discovery),
// quotas and the file routes on a real ext4 image too.
func TestLatency(t *testing.T) {
	calls := 50
	if v := os.Getenv("RAKSHA_API_LATENCY_CALLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("RAKSHA_API_LATENCY_CALLS=%q", v)
		}
		calls = n
	}
	tc := startTemporal(t)
	var rows []string
	for _, mode := range []struct {
		name string
		ttl  time.Duration
	}{{"cached", 0}, {"uncached", -1}} {
		src := &api.CloudWorkloads{}
		e := newEnv(t, lab.Options{}, tc, api.Config{CacheTTL: mode.ttl, Workloads: src}, nil)
		src.Client = labCloud(t, e.lab)
		ac, err := src.Client.ForProject(t.Context(), "alpha")
		if err != nil {
			t.Fatal(err)
		}
		bootServer(t, ac, "web-1", map[string]string{cloud.WorkloadKey: "web"})
		bootServer(t, ac, "web-2", map[string]string{cloud.WorkloadKey: "web"})
		img, _ := ext4Image(t)
		src2, _ := json.Marshal(map[string]any{"name": "web", "project_id": e.projects["alpha"]})
		backUp(t, e.repo, img, repo.BackupSpec{ID: "20261203-000000-alpha", Labels: map[string]string{"workload": "web"}, Source: src2})
		files := "/v1/backups/20261203-000000-alpha/disks/vm1~root/files"
		tok := e.token(t, alice, "alpha")
		carolTok := e.token(t, carol, "alpha")
		var started struct{ Restore api.RestoreView }
		if st, body := e.call(t, tok, "POST", "/v1/restores", map[string]any{"restore": map[string]any{"backup_id": e.backups["alpha"][0]}}, &started); st != 202 {
			t.Fatalf("start a restore: %d %s", st, body)
		}
		waitFor(t, "the restore listed", func() bool {
			var l restoreList
			st, _ := e.call(t, tok, "GET", "/v1/restores", nil, &l)
			return st == 200 && len(l.Restores) == 1
		})
		for _, c := range []struct{ what, tok, path string }{
			{"GET /v1/backups", tok, "/v1/backups"},
			{"GET /v1/backups/{id}", tok, "/v1/backups/" + e.backups["alpha"][0]},
			{"GET /v1/backups?project_id (other project, role assignments)", carolTok, "/v1/backups?project_id=" + e.projects["beta"]},
			{"GET /v1/restores", tok, "/v1/restores"},
			{"GET /v1/restores/{id} (describe + progress query)", tok, "/v1/restores/" + started.Restore.ID},
			{"GET /v1/workloads (discovery: 1 workload of 2 servers)", tok, "/v1/workloads"},
			{"GET /v1/quotas (records + running count)", tok, "/v1/quotas"},
			{"GET .../files?path=/etc/app (ext4, 6 entries)", tok, files + "?path=/etc/app"},
			{"GET .../files/content (12-byte file)", tok, files + "/content?path=/etc/app/app.conf"},
			{"GET .../files/content (3 MiB file)", tok, files + "/content?path=/etc/app/big.bin"},
		} {
			var ds []time.Duration
			for range calls {
				req, _ := http.NewRequest("GET", e.srv.URL+c.path, nil)
				req.Header.Set("X-Auth-Token", c.tok)
				start := time.Now()
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				ds = append(ds, time.Since(start))
				if resp.StatusCode != 200 {
					t.Fatalf("%s: %d", c.what, resp.StatusCode)
				}
			}
			slices.Sort(ds)
			q := func(p float64) string {
				return fmt.Sprintf("%.2f ms", float64(ds[int(p*float64(len(ds)-1))].Microseconds())/1000)
			}
			rows = append(rows, fmt.Sprintf("| %s | %s | %d | %s | %s |", c.what, mode.name, calls, q(0.5), q(0.95)))
		}
		if st, _ := e.call(t, tok, "POST", "/v1/restores/"+started.Restore.ID+"/cancel", nil, nil); st != 202 {
			t.Errorf("cancel: %d", st)
		}
	}
	t.Logf("\n| call | token validation | calls | p50 | p95 |\n| --- | --- | --- | --- | --- |\n%s", strings.Join(rows, "\n"))
}
