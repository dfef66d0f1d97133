package workflows

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/temporalx"
)

// drillFixture is the restore fixture with RestoreDrill, the newest backup
// b1, a recorded RecordDrill and the RakshaDrill values upserted.
type drillFixture struct {
	*restoreFixture
	mu      sync.Mutex
	records []repo.Drill
	drillSA []string
	backup  []string
	metrics *countingMetrics
}

// countingMetrics is a metrics handler that counts DrillMetric by tags.
type countingMetrics struct {
	tags   map[string]string
	mu     *sync.Mutex
	counts map[string]int64 // "result/workload" → count
}

func newCountingMetrics() *countingMetrics {
	return &countingMetrics{mu: &sync.Mutex{}, counts: map[string]int64{}}
}

func (m *countingMetrics) WithTags(tags map[string]string) client.MetricsHandler {
	n := *m
	n.tags = maps.Clone(m.tags)
	if n.tags == nil {
		n.tags = map[string]string{}
	}
	maps.Copy(n.tags, tags)
	return &n
}

func (m *countingMetrics) Counter(name string) client.MetricsCounter {
	if name != DrillMetric {
		return client.MetricsNopHandler.Counter(name)
	}
	return counterFunc(func(d int64) {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.counts[m.tags["result"]+"/"+m.tags["workload"]] += d
	})
}

func (m *countingMetrics) Gauge(name string) client.MetricsGauge {
	return client.MetricsNopHandler.Gauge(name)
}
func (m *countingMetrics) Timer(name string) client.MetricsTimer {
	return client.MetricsNopHandler.Timer(name)
}

type counterFunc func(int64)

func (f counterFunc) Inc(d int64) { f(d) }

func (m *countingMetrics) count(key string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[key]
}

func newDrillFixture(t *testing.T) *drillFixture {
	m := newCountingMetrics()
	f := &drillFixture{restoreFixture: newRestoreFixtureWith(t, m), metrics: m}
	acts := activities.New(activities.Config{})
	f.env.RegisterWorkflow(RestoreDrill)
	f.env.OnActivity(acts.FindNewestBackup, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.NewestBackupInput) (*activities.NewestBackup, error) {
		if in.Workload != "demo" || in.Project != "p1" {
			return nil, temporal.NewNonRetryableApplicationError("workload "+in.Workload+" has no backup", activities.ErrNotFound, nil)
		}
		return &activities.NewestBackup{BackupID: "b1", VMs: []string{"db", "web"}}, nil
	})
	f.env.OnActivity(acts.RecordDrill, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.RecordDrillInput) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.records = append(f.records, in.Drill)
		f.rec.add("record " + in.Drill.Result)
		return nil
	})
	f.env.OnUpsertTypedSearchAttributes(mock.Anything).Run(func(args mock.Arguments) {
		sa := args.Get(0).(temporal.SearchAttributes)
		f.mu.Lock()
		defer f.mu.Unlock()
		if v, ok := sa.GetKeyword(SADrill); ok {
			f.drillSA = append(f.drillSA, v)
		}
		if v, ok := sa.GetKeyword(SABackup); ok {
			f.backup = append(f.backup, v)
		}
	}).Return(nil)
	return f
}

func drillRequest() DrillRequest {
	return DrillRequest{Workload: "demo", Project: "p1", Repository: "main", DrillProject: "drill", Policy: "demo-drill", Operator: true,
		Networks: map[string]string{"net1": "net-drill"}, HealthCheck: &activities.Hook{Name: "health", Path: "/bin/health"}}
}

// record returns the one drill recorded, failing the test otherwise.
func (f *drillFixture) record(t *testing.T) repo.Drill {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.records) != 1 {
		t.Fatalf("%d drill records, want 1: %+v", len(f.records), f.records)
	}
	return f.records[0]
}

func (f *drillFixture) nothingLeft(t *testing.T) {
	t.Helper()
	if len(f.servers)+len(f.volumes) != 0 {
		t.Errorf("the drill left servers %v volumes %v", f.servers, f.volumes)
	}
}

func TestDrillPassesAndTearsDown(t *testing.T) {
	f := newDrillFixture(t)
	f.guestRun = func(in activities.GuestRunInput) (*activities.GuestRunResult, error) {
		return &activities.GuestRunResult{ExitCode: 0, Stdout: "OK " + in.Instance}, nil
	}
	f.env.ExecuteWorkflow(RestoreDrill, drillRequest())
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var res repo.Drill
	if err := f.env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	rec := f.record(t)
	if rec.Result != repo.DrillPass || rec.Backup != "b1" || rec.Project != "drill" || rec.Teardown != "done" || rec.Error != "" ||
		!strings.HasPrefix(rec.Clone, "drill-demo-") || rec.Policy != "demo-drill" || rec.ID != res.ID {
		t.Fatalf("record %+v", rec)
	}
	if len(rec.Guests) != 2 || rec.Guests[0].VM != "db" || rec.Guests[1].OutputTail != "OK inst-new-web" {
		t.Errorf("guests %+v", rec.Guests)
	}
	for _, c := range f.createIn {
		if c.Project != "drill" || c.Metadata[activities.MetaClone] != rec.Clone || c.Networks["net1"] != "net-drill" {
			t.Errorf("drill clone server input %+v", c)
		}
	}
	// The teardown ran before the record, and removed everything.
	f.before(t, "guest-run inst-new-web /bin/health", "delete-server new-db")
	f.before(t, "delete-volume new-vol-2", "record pass")
	f.nothingLeft(t)
	if !slices.Equal(f.drillSA, []string{"pass"}) || !slices.Contains(f.backup, "b1") {
		t.Errorf("search attributes: RakshaDrill %v, RakshaBackup %v", f.drillSA, f.backup)
	}
	if n, m := f.metrics.count("pass/demo"), f.metrics.count("fail/demo"); n != 1 || m != 0 {
		t.Errorf("%s: %d pass, %d fail; want 1 pass", DrillMetric, n, m)
	}
}

func TestDrillFailedHealthCheckTearsDownRecordsAndFails(t *testing.T) {
	f := newDrillFixture(t)
	f.guestRun = func(in activities.GuestRunInput) (*activities.GuestRunResult, error) {
		if in.Instance == "inst-new-web" {
			return &activities.GuestRunResult{ExitCode: 1, Stdout: strings.Repeat("x", 5000) + "\nBAD /data/web-data/records: torn record 17"}, nil
		}
		return &activities.GuestRunResult{ExitCode: 0, Stdout: "all good"}, nil
	}
	f.env.ExecuteWorkflow(RestoreDrill, drillRequest())
	err := f.env.GetWorkflowError()
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != ErrDrillFailed {
		t.Fatalf("error %v, want type %s", err, ErrDrillFailed)
	}
	for _, want := range []string{"drill of workload demo (backup b1) failed", "health check health in web exited 1", "BAD /data/web-data/records: torn record 17"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// The clone deleted what it made; the drill's teardown looked again
	// before the record.
	f.before(t, "guest-run inst-new-web /bin/health", "find-by-label "+activities.MetaClone)
	f.before(t, "find-by-label "+activities.MetaClone, "record fail")
	rec := f.record(t)
	if rec.Result != repo.DrillFail || rec.Teardown != "done" || rec.TimeToReady != 0 || !strings.Contains(rec.Error, "in web exited 1") {
		t.Fatalf("record %+v", rec)
	}
	if len(rec.Guests) != 2 || rec.Guests[1].ExitCode != 1 || len(rec.Guests[1].OutputTail) > DrillOutputTail+len("…") ||
		!strings.HasSuffix(rec.Guests[1].OutputTail, "torn record 17") {
		t.Errorf("guests %+v", rec.Guests)
	}
	f.nothingLeft(t)
	if !slices.Equal(f.drillSA, []string{"fail"}) {
		t.Errorf("RakshaDrill %v", f.drillSA)
	}
	if n, m := f.metrics.count("pass/demo"), f.metrics.count("fail/demo"); n != 0 || m != 1 {
		t.Errorf("%s: %d pass, %d fail; want 1 fail", DrillMetric, n, m)
	}
}

func TestDrillTimeoutCancelsTheClone(t *testing.T) {
	f := newDrillFixture(t)
	f.guestAfter = time.Hour
	req := drillRequest()
	req.Timeout = 10 * time.Minute
	f.env.ExecuteWorkflow(RestoreDrill, req)
	err := f.env.GetWorkflowError()
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != ErrDrillFailed || !strings.Contains(err.Error(), "within the drill's timeout of 10m0s") {
		t.Fatalf("error %v", err)
	}
	if rec := f.record(t); rec.Result != repo.DrillFail || rec.Teardown != "done" {
		t.Fatalf("record %+v", rec)
	}
	f.nothingLeft(t)
}

func TestDrillCancelledTearsDownAndRecords(t *testing.T) {
	f := newDrillFixture(t)
	f.guestAfter = time.Hour
	f.env.RegisterDelayedCallback(f.env.CancelWorkflow, 10*time.Minute)
	f.env.ExecuteWorkflow(RestoreDrill, drillRequest())
	err := f.env.GetWorkflowError()
	var ce *temporal.CanceledError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v, want a cancellation", err)
	}
	f.before(t, "find-by-label "+activities.MetaClone, "record fail")
	if rec := f.record(t); rec.Result != repo.DrillFail || rec.Teardown != "done" || !strings.HasPrefix(rec.Error, "cancelled") {
		t.Fatalf("record %+v", rec)
	}
	f.nothingLeft(t)
	if !slices.Equal(f.drillSA, []string{"fail"}) {
		t.Errorf("RakshaDrill %v", f.drillSA)
	}
}

func TestDrillTeardownLeftoversFailTheRun(t *testing.T) {
	f := newDrillFixture(t)
	f.stuck = map[string]bool{"new-web": true}
	f.env.ExecuteWorkflow(RestoreDrill, drillRequest())
	err := f.env.GetWorkflowError()
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != ErrLeftovers || !strings.Contains(err.Error(), "passed, but its teardown left") ||
		!strings.Contains(err.Error(), "server new-web") {
		t.Fatalf("error %v, want %s naming new-web", err, ErrLeftovers)
	}
	rec := f.record(t)
	if rec.Result != repo.DrillPass || !strings.HasPrefix(rec.Teardown, "left: ") || !strings.Contains(rec.Teardown, "server new-web") {
		t.Errorf("record %+v", rec)
	}
	if !f.servers["new-web"] || f.servers["new-db"] {
		t.Errorf("servers after the teardown %v: want only the stuck one", f.servers)
	}
}

func TestDrillWithoutBackupFails(t *testing.T) {
	f := newDrillFixture(t)
	req := drillRequest()
	req.Workload = "other"
	f.env.ExecuteWorkflow(RestoreDrill, req)
	err := f.env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "has no backup") {
		t.Fatalf("error %v", err)
	}
	if len(f.records) != 0 || len(f.createIn) != 0 {
		t.Errorf("a drill without a backup recorded %v, made %v", f.records, f.createIn)
	}
	req = drillRequest()
	req.HealthCheck = nil
	g := newDrillFixture(t)
	g.env.ExecuteWorkflow(RestoreDrill, req)
	if err := g.env.GetWorkflowError(); err == nil || !strings.Contains(err.Error(), "no health check") {
		t.Fatalf("drill without a health check: %v", err)
	}
}

func TestSearchAttributeNamesAgree(t *testing.T) {
	if !slices.Equal(SearchAttributeNames, temporalx.SearchAttributes) {
		t.Errorf("workflows.SearchAttributeNames %v, temporalx.SearchAttributes %v", SearchAttributeNames, temporalx.SearchAttributes)
	}
}
