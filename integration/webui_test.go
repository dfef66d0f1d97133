package integration

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/workflows"
)

// ScreenshotsEnv names a directory the Web UI test saves its screenshots
// in (default: the test's temporary directory); docs/webui-*.png are from
// such a run.
const ScreenshotsEnv = "RAKSHA_WEBUI_SHOTS"

// TestWebUIShowsRakshaWorkflows opens the Temporal Web UI of a dev server
// in Debian's headless Chromium (chromedp, the DevTools protocol) after a
// real backup of the lab's demo workload, a restore of one of its volumes
// and a restore drill whose health check fails: the workflow list filtered
// by RakshaWorkload="demo" shows the three (the drill as Failed, and
// nothing of another workload), the backup's page shows its search
// attributes and its memo (the backup id), RakshaDrill="fail" finds the
// drill, and the screenshots are saved.
func TestWebUIShowsRakshaWorkflows(t *testing.T) {
	chromium := "/usr/bin/chromium"
	require(t, "Debian's chromium", chromium)
	c, uiPort := startTemporalUI(t)
	d := startLabDemo(t)
	startWorkers(t, c, d.acts, activities.ControlQueue, activities.HostQueue("h1"))
	e := &labEnv{labDemo: d, temporal: c}
	b := e.backup()
	vol := diskOf(t, b, "demo-2", "vol-")
	volID := strings.TrimPrefix(strings.Split(vol.Manifest, "/")[2], "vol-")
	res, _, err := e.restore("restore/webui", workflows.RestoreRequest{Repository: "main", BackupID: b.BackupID, Volumes: []string{volID}, NamePrefix: "ui-"})
	if err != nil {
		t.Fatal(err)
	}
	// A drill whose health check fails in every guest: red in the Web UI.
	dr, err := c.ExecuteWorkflow(d.ctx, client.StartWorkflowOptions{ID: workflows.DrillWorkflowID("demo"), TaskQueue: activities.ControlQueue,
		TypedSearchAttributes: temporal.NewSearchAttributes(workflows.SAWorkload.ValueSet("demo"), workflows.SAOperation.ValueSet("drill"))},
		workflows.RestoreDrill, workflows.DrillRequest{Workload: "demo", Project: "demo", Repository: "main", DrillProject: "staging",
			VMs: []string{"demo-1"}, Operator: true,
			HealthCheck: &activities.Hook{Name: "health", Path: "/bin/sh", Args: []string{"-c", "echo the shop is down; exit 3"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := dr.Get(d.ctx, nil); err == nil || !strings.Contains(err.Error(), "the shop is down") {
		t.Fatalf("the failing drill: %v; want it failed with the check's output", err)
	}
	// A workflow of another workload, which the filter must hide.
	other, err := c.ExecuteWorkflow(d.ctx, client.StartWorkflowOptions{ID: "backup/other", TaskQueue: activities.ControlQueue,
		TypedSearchAttributes: temporal.NewSearchAttributes(workflows.SAWorkload.ValueSet("other"))},
		workflows.WorkloadBackup, workflows.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_ = other.Get(d.ctx, nil) // fails at once (an empty request): it only has to exist
	var backupWF, backupRun string
	eventually(t, 30*time.Second, "the backup's workflow found by its search attributes", func() bool {
		list, err := c.ListWorkflow(d.ctx, &workflowservice.ListWorkflowExecutionsRequest{Namespace: "default",
			Query: `RakshaWorkload="demo" AND RakshaOperation="backup"`})
		if err != nil || len(list.Executions) != 1 {
			return false
		}
		backupWF, backupRun = list.Executions[0].GetExecution().GetWorkflowId(), list.Executions[0].GetExecution().GetRunId()
		return true
	})

	shots := os.Getenv(ScreenshotsEnv)
	if shots == "" {
		shots = t.TempDir()
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.WindowSize(1440, 900), chromedp.Flag("disable-dev-shm-usage", true))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	bctx, tcancel := context.WithTimeout(bctx, 2*time.Minute)
	defer tcancel()
	base := fmt.Sprintf("http://127.0.0.1:%s/namespaces/default", uiPort)

	// The list, filtered by workload.
	listURL := base + "/workflows?query=" + url.QueryEscape(`RakshaWorkload="demo"`)
	if err := chromedp.Do(bctx, chromedp.Navigate(listURL), waitText(backupWF), waitText("restore/webui")); err != nil {
		t.Fatalf("the Web UI's workflow list at %s: %v", listURL, err)
	}
	text := pageText(t, bctx)
	save(t, filepath.Join(shots, "webui-workflows.png"), screenshot(t, bctx))
	if strings.Contains(text, "backup/other") {
		t.Errorf("the list filtered by RakshaWorkload=\"demo\" shows backup/other")
	}
	for _, want := range []string{backupWF, "restore/webui", "WorkloadBackup", "Restore", "drill/demo", "RestoreDrill", "Failed"} {
		if !strings.Contains(text, want) {
			t.Errorf("the filtered list does not show %q", want)
		}
	}

	// The backup's own page: its search attributes and memo.
	wfURL := fmt.Sprintf("%s/workflows/%s/%s/history", base, url.PathEscape(backupWF), backupRun)
	if err := chromedp.Do(bctx, chromedp.Navigate(wfURL), waitText("Completed"), chromedp.Sleep(time.Second)); err != nil {
		t.Fatalf("the backup's page %s: %v", wfURL, err)
	}
	save(t, filepath.Join(shots, "webui-backup.png"), screenshot(t, bctx))
	// Its search attributes and its memo, each on its tab.
	for _, tab := range []struct {
		name, file string
		want       []string
	}{
		{"Search Attributes", "webui-backup-search-attributes.png", []string{"RakshaWorkload", "RakshaOperation", "demo", "backup"}},
		{"Memo", "webui-backup-memo.png", []string{"result", b.BackupID}},
	} {
		if err := chromedp.Do(bctx, clickText(tab.name), waitText(tab.want[0])); err != nil {
			t.Errorf("the backup's %s tab: %v", tab.name, err)
			continue
		}
		text := pageText(t, bctx)
		save(t, filepath.Join(shots, tab.file), screenshot(t, bctx))
		for _, want := range tab.want {
			if !strings.Contains(text, want) {
				t.Errorf("the backup's %s tab does not show %q", tab.name, want)
			}
		}
	}
	// The failed drill, found by its result.
	failedURL := base + "/workflows?query=" + url.QueryEscape(`RakshaDrill="fail"`)
	if err := chromedp.Do(bctx, chromedp.Navigate(failedURL), waitText("drill/demo"), waitText("Failed")); err != nil {
		t.Fatalf("the failed drill in the Web UI at %s: %v", failedURL, err)
	}
	save(t, filepath.Join(shots, "webui-failed-drill.png"), screenshot(t, bctx))
	t.Logf("Web UI checked: %d restored volume(s); screenshots in %s", len(res.Volumes), shots)
}

// startTemporalUI is startTemporal with the dev server's Web UI on a free
// port; it returns the client and the UI's port.
func startTemporalUI(t *testing.T) (client.Client, string) {
	t.Helper()
	bin := filepath.Join(repoRoot(t), "bin", "temporal")
	require(t, "the temporal CLI", bin)
	sa := temporal.NewSearchAttributes(workflows.SAWorkload.ValueSet(""), workflows.SAProject.ValueSet(""),
		workflows.SAOperation.ValueSet(""), workflows.SAPolicy.ValueSet(""), workflows.SABackup.ValueSet(""), workflows.SADrill.ValueSet(""))
	ui := fmt.Sprint(freePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{ExistingPath: bin, LogLevel: "error",
		SearchAttributes: sa, ClientOptions: &client.Options{Namespace: "default"},
		EnableUI: true, UIPort: ui})
	if err != nil {
		t.Fatalf("start the Temporal dev server with its UI: %v", err)
	}
	t.Cleanup(func() { srv.Stop() })
	return srv.Client(), ui
}

// waitText waits until the page's text contains s.
func waitText(s string) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		for {
			text, err := chromedp.Evaluate[string]("document.body ? document.body.innerText : ''")(ctx, tg)
			if err == nil && strings.Contains(text, s) {
				return chromedp.Void{}, nil
			}
			select {
			case <-ctx.Done():
				return chromedp.Void{}, fmt.Errorf("waiting for %q on the page: %w", s, ctx.Err())
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
}

// clickText clicks the first link or button whose text is s.
func clickText(s string) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		js := fmt.Sprintf(`(() => { const e = [...document.querySelectorAll("a, button, [role=tab]")].find(e => e.innerText.trim() === %q); if (!e) return false; e.click(); return true; })()`, s)
		ok, err := chromedp.Evaluate[bool](js)(ctx, tg)
		if err != nil {
			return chromedp.Void{}, err
		}
		if !ok {
			return chromedp.Void{}, fmt.Errorf("no link or button %q on the page", s)
		}
		return chromedp.Void{}, nil
	}
}

// pageText is the page's visible text.
func pageText(t *testing.T, ctx context.Context) string {
	t.Helper()
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string]("document.body.innerText"))
	if err != nil {
		t.Fatal(err)
	}
	return text
}

// screenshot is a PNG of the whole page.
func screenshot(t *testing.T, ctx context.Context) []byte {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	return png
}

func save(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
