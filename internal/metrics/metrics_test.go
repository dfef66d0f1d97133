package metrics_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/metrics"
	"github.com/raksha-backup/raksha/internal/metrics/metricstest"
)

// TestServe records two backups and SDK-handler metrics, serves them on a
// real port, scrapes them as Prometheus would, and checks every figure;
// /healthz follows the health function.
func TestServe(t *testing.T) {
	m, err := metrics.New()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sick atomic.Value
	sick.Store("")
	addr, err := m.Serve(ctx, "127.0.0.1:0", func(context.Context) error {
		if s := sick.Load().(string); s != "" {
			return errors.New(s)
		}
		return nil
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + addr.String()

	m.BackupCommitted(metrics.Backup{Workload: "shop", Repository: "main", Consistency: "app", BytesRead: 100, BytesNew: 60, BytesReused: 40, BytesStored: 30,
		FreezeWindows: map[string]time.Duration{"db": 300 * time.Millisecond, "web": 200 * time.Millisecond}, WorkloadWindow: 400 * time.Millisecond})
	m.BackupCommitted(metrics.Backup{Workload: "shop", Repository: "main", Consistency: "app", BytesRead: 10, BytesNew: 6, BytesReused: 4, BytesStored: 3,
		FreezeWindows: map[string]time.Duration{"db": 100 * time.Millisecond, "web": 50 * time.Millisecond}, WorkloadWindow: 150 * time.Millisecond})
	m.Copied("main", 7, 5, 2, 4)
	m.Thawed(metrics.ThawedByOrphanSweep, 2)
	m.Thawed(metrics.ThawedByGuard, 1)
	m.VerifyFailed("main", "full")
	m.Restored("main", 1<<20)
	// What the workflows record goes through the SDK's handler.
	h := m.TemporalHandler().WithTags(map[string]string{"workload": "shop", "repository": "main", "outcome": "success"})
	h.Timer("raksha_backup_duration").Record(3 * time.Second)
	m.TemporalHandler().Counter("temporal_test_counter").Inc(5)

	f, err := metricstest.Scrape(ctx, base+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	shop := map[string]string{"workload": "shop", "repository": "main"}
	with := func(l map[string]string, k, v string) map[string]string {
		o := map[string]string{k: v}
		for a, b := range l {
			o[a] = b
		}
		return o
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{metrics.BackupBytes, with(shop, "kind", "read"), 110},
		{metrics.BackupBytes, with(shop, "kind", "new"), 66},
		{metrics.BackupBytes, with(shop, "kind", "reused"), 44},
		{metrics.BackupBytes, with(shop, "kind", "stored"), 33},
		{metrics.BackupLastBytes, with(shop, "kind", "read"), 10},
		{metrics.BackupLastBytes, with(shop, "kind", "stored"), 3},
		{metrics.BackupsCommitted, with(shop, "consistency", "app"), 2},
		{metrics.FreezeWindowLast, map[string]string{"workload": "shop"}, 0.15},
		{metrics.CopyBytes, map[string]string{"repository": "main", "kind": "read"}, 7},
		{metrics.CopyBytes, map[string]string{"repository": "main", "kind": "stored"}, 4},
		{metrics.GuestsThawed, map[string]string{"by": "orphan_sweep"}, 2},
		{metrics.GuestsThawed, map[string]string{"by": "guard"}, 1},
		{metrics.VerifyFailures, map[string]string{"repository": "main", "mode": "full"}, 1},
		{metrics.RestoreBytes, map[string]string{"repository": "main"}, 1 << 20},
		{"temporal_test_counter_total", nil, 5},
	} {
		got, ok := f.Value(c.name, c.labels)
		if !ok || math.Abs(got-c.want) > 1e-9 {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if n, s := f.Histogram(metrics.FreezeWindowVM, map[string]string{"workload": "shop"}); n != 4 || math.Abs(s-0.65) > 1e-9 {
		t.Errorf("VM freeze windows: %d observations summing to %v, want 4 and 0.65", n, s)
	}
	if n, s := f.Histogram(metrics.FreezeWindowWorkload, map[string]string{"workload": "shop"}); n != 2 || math.Abs(s-0.55) > 1e-9 {
		t.Errorf("workload freeze windows: %d observations summing to %v, want 2 and 0.55", n, s)
	}
	if n, s := f.Histogram("raksha_backup_duration_seconds", with(shop, "outcome", "success")); n != 1 || s != 3 {
		t.Errorf("backup duration through the SDK's handler: %d observations summing to %v, want 1 and 3", n, s)
	}
	// Raksha's buckets, not OpenTelemetry's defaults (milliseconds).
	fam := f["raksha_backup_duration_seconds"]
	var bounds []float64
	if fam != nil && len(fam.GetMetric()) > 0 {
		for _, b := range fam.GetMetric()[0].GetHistogram().GetBucket() {
			if !math.IsInf(b.GetUpperBound(), 1) {
				bounds = append(bounds, b.GetUpperBound())
			}
		}
	}
	if !slices.Equal(bounds, metrics.DurationBuckets()) {
		t.Errorf("backup duration buckets: %v, want %v", bounds, metrics.DurationBuckets())
	}
	if _, ok := f.Value("go_goroutines", nil); !ok {
		t.Error("no Go runtime metrics")
	}

	get := func() (int, string) {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != 200 || body != "ok\n" {
		t.Errorf("/healthz healthy: %d %q", code, body)
	}
	sick.Store("not connected to Temporal yet")
	if code, body := get(); code != 503 || !strings.Contains(body, "not connected to Temporal yet") {
		t.Errorf("/healthz unhealthy: %d %q, want 503 with the reason", code, body)
	}
}

// TestNil: a nil Metrics records nothing and does not panic.
func TestNil(t *testing.T) {
	var m *metrics.Metrics
	m.BackupCommitted(metrics.Backup{Workload: "w"})
	m.Copied("r", 1, 1, 1, 1)
	m.Thawed(metrics.ThawedByGuard, 1)
	m.VerifyFailed("r", "full")
	m.Restored("r", 1)
	if m.TemporalHandler() != nil {
		t.Error("a nil Metrics has a handler")
	}
	if err := m.Close(context.Background()); err != nil {
		t.Error(err)
	}
}
