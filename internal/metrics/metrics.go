// Package metrics is what a Raksha worker tells Prometheus: the Temporal
// SDK's own metrics (through the SDK's OpenTelemetry handler, exported into
// a Prometheus registry) and Raksha's (backup figures, freeze windows,
// thaws, verify failures), all in one registry of the worker's own, served
// on /metrics beside /healthz (Serve).
//
// Labels are the workload, the repository and small fixed sets (kind,
// consistency, by, mode); never a VM, disk, backup or project name, which
// tenants choose without bound. Metrics the workflows record (durations,
// the wait for a copy permit) go through the SDK's handler
// (workflow.GetMetricsHandler), which skips replays; their names are in
// package workflows.
//
// A nil *Metrics records nothing: activities built without one (tests, the
// CLI) need no checks.
package metrics

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.temporal.io/sdk/client"
	temporalotel "go.temporal.io/sdk/contrib/opentelemetry"
)

// Names of Raksha's own metrics recorded by the activities (the workflows'
// are in package workflows). README.md's metrics reference lists them all.
const (
	BackupBytes             = "raksha_backup_bytes_total"
	BackupLastBytes         = "raksha_backup_last_bytes"
	BackupsCommitted        = "raksha_backups_committed_total"
	FreezeWindowVM          = "raksha_freeze_window_vm_seconds"
	FreezeWindowWorkload    = "raksha_freeze_window_workload_seconds"
	FreezeWindowLast        = "raksha_freeze_window_last_seconds"
	CopyBytes               = "raksha_copy_bytes_total"
	GuestsThawed            = "raksha_guests_thawed_total"
	VerifyFailures          = "raksha_verify_failures_total"
	RestoreBytes            = "raksha_restore_bytes_total"
	temporalMeterName       = "temporal-sdk"
	rakshaHistogramPattern  = "raksha_*"
	temporalInstrumentMatch = "temporal_*"
)

// Who thawed a guest (the by label of GuestsThawed).
const (
	// ThawedByGuard: the freeze's own guard, at the freeze deadline,
	// before the backup's Thaw came (reported by that Thaw).
	ThawedByGuard = "guard"
	// ThawedByOrphanSweep: the sweep of a starting host worker found the
	// guest frozen with no live owner.
	ThawedByOrphanSweep = "orphan_sweep"
	// ThawedLost: a Thaw reached a worker without the freeze (the worker
	// that froze the guest is gone) and found the guest still frozen.
	ThawedLost = "lost_freeze"
)

// DurationBuckets returns the histogram buckets (seconds) of Raksha's
// durations: freeze windows (tenths of a second to a minute) up to backups
// and restores (hours).
func DurationBuckets() []float64 {
	return []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400}
}

// requestBuckets returns the buckets (seconds) of the SDK's latencies
// (requests, polls, task and activity latencies).
func requestBuckets() []float64 {
	return []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}
}

// Metrics is one worker's metrics: a Prometheus registry holding the
// Temporal SDK's metrics and Raksha's. Safe for concurrent use.
type Metrics struct {
	reg      *prometheus.Registry
	provider *sdkmetric.MeterProvider
	temporal client.MetricsHandler

	backupBytes    *prometheus.CounterVec
	lastBytes      *prometheus.GaugeVec
	backups        *prometheus.CounterVec
	freezeVM       *prometheus.HistogramVec
	freezeWorkload *prometheus.HistogramVec
	freezeLast     *prometheus.GaugeVec
	copyBytes      *prometheus.CounterVec
	thawed         *prometheus.CounterVec
	verifyFailures *prometheus.CounterVec
	restoreBytes   *prometheus.CounterVec
}

// New makes a worker's registry: the Go runtime and process collectors,
// Raksha's metrics, and the exporter of the Temporal SDK's metrics (give
// TemporalHandler to client.Options.MetricsHandler).
func New() (*Metrics, error) {
	reg := prometheus.NewRegistry()
	m := &Metrics{reg: reg}
	m.backupBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: BackupBytes,
		Help: "Bytes of committed workload backups, by kind: read from the disks, new (chunks not in the repository before), reused (chunks found in the repository or the base), stored (new, after compression and encryption)."},
		[]string{"workload", "repository", "kind"})
	m.lastBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: BackupLastBytes,
		Help: "The same figures as raksha_backup_bytes_total for the workload's last committed backup alone."},
		[]string{"workload", "repository", "kind"})
	m.backups = prometheus.NewCounterVec(prometheus.CounterOpts{Name: BackupsCommitted,
		Help: "Workload backups committed, by consistency (app, crash)."},
		[]string{"workload", "repository", "consistency"})
	m.freezeVM = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: FreezeWindowVM,
		Help: "How long each guest was frozen, one observation per VM of each committed application-consistent backup.", Buckets: DurationBuckets()},
		[]string{"workload"})
	m.freezeWorkload = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: FreezeWindowWorkload,
		Help: "The workload's freeze window (first guest's freeze to last guest's thaw) of each committed application-consistent backup.", Buckets: DurationBuckets()},
		[]string{"workload"})
	m.freezeLast = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: FreezeWindowLast,
		Help: "The workload's freeze window of its last committed application-consistent backup."},
		[]string{"workload"})
	m.copyBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: CopyBytes,
		Help: "Bytes this worker's disk copies (CopyDisk) moved, by kind (read, new, reused, stored); counted when a copy completes."},
		[]string{"repository", "kind"})
	m.thawed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: GuestsThawed,
		Help: "Guests this worker thawed other than by a backup's timely Thaw, by who thawed them: guard (the freeze deadline passed), orphan_sweep (found frozen at worker start), lost_freeze (a Thaw that found the guest still frozen by a worker that is gone)."},
		[]string{"by"})
	m.verifyFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: VerifyFailures,
		Help: "Verify or check runs (VerifyRepository) that found damage, by mode (check, full)."},
		[]string{"repository", "mode"})
	m.restoreBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: RestoreBytes,
		Help: "Bytes of disks this worker restored (WriteDisk), counted when a disk is written."},
		[]string{"repository"})
	for _, c := range []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.backupBytes, m.lastBytes, m.backups, m.freezeVM, m.freezeWorkload, m.freezeLast, m.copyBytes, m.thawed, m.verifyFailures, m.restoreBytes} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: register: %w", err)
		}
	}
	exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	if err != nil {
		return nil, fmt.Errorf("metrics: the Temporal SDK's exporter: %w", err)
	}
	hist := func(pattern string, buckets []float64) sdkmetric.View {
		return sdkmetric.NewView(sdkmetric.Instrument{Name: pattern, Kind: sdkmetric.InstrumentKindHistogram},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationExplicitBucketHistogram{Boundaries: buckets}})
	}
	m.provider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp),
		sdkmetric.WithView(hist(temporalInstrumentMatch, requestBuckets()), hist(rakshaHistogramPattern, DurationBuckets())))
	m.temporal = temporalotel.NewMetricsHandler(temporalotel.MetricsHandlerOptions{
		Meter:                m.provider.Meter(temporalMeterName),
		UseMonotonicCounters: true,
		// A metric that cannot be made is not worth a worker: leave it out.
		OnError: func(error) {},
	})
	return m, nil
}

// Registry is the worker's Prometheus registry.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// TemporalHandler is the metrics handler to give the worker's Temporal
// client (client.Options.MetricsHandler): the SDK's metrics and those the
// workflows record end up in Registry. Nil on a nil Metrics.
func (m *Metrics) TemporalHandler() client.MetricsHandler {
	if m == nil {
		return nil
	}
	return m.temporal
}

// Backup is what one committed workload backup adds to the metrics (its
// record's figures).
type Backup struct {
	Workload, Repository, Consistency             string
	BytesRead, BytesNew, BytesReused, BytesStored int64
	// FreezeWindows is each VM's freeze window (none for a
	// crash-consistent backup); WorkloadWindow the workload's.
	FreezeWindows  map[string]time.Duration
	WorkloadWindow time.Duration
}

// BackupCommitted records a committed backup. Call it once per backup.
func (m *Metrics) BackupCommitted(b Backup) {
	if m == nil {
		return
	}
	for kind, v := range map[string]int64{"read": b.BytesRead, "new": b.BytesNew, "reused": b.BytesReused, "stored": b.BytesStored} {
		m.backupBytes.WithLabelValues(b.Workload, b.Repository, kind).Add(float64(v))
		m.lastBytes.WithLabelValues(b.Workload, b.Repository, kind).Set(float64(v))
	}
	m.backups.WithLabelValues(b.Workload, b.Repository, b.Consistency).Inc()
	for _, w := range b.FreezeWindows {
		m.freezeVM.WithLabelValues(b.Workload).Observe(w.Seconds())
	}
	if b.WorkloadWindow > 0 {
		m.freezeWorkload.WithLabelValues(b.Workload).Observe(b.WorkloadWindow.Seconds())
		m.freezeLast.WithLabelValues(b.Workload).Set(b.WorkloadWindow.Seconds())
	}
}

// Copied records the bytes of one completed disk copy.
func (m *Metrics) Copied(repository string, read, new, reused, stored int64) {
	if m == nil {
		return
	}
	for kind, v := range map[string]int64{"read": read, "new": new, "reused": reused, "stored": stored} {
		m.copyBytes.WithLabelValues(repository, kind).Add(float64(v))
	}
}

// Thawed records n guests thawed by who (ThawedByGuard, ThawedByOrphanSweep,
// ThawedLost).
func (m *Metrics) Thawed(by string, n int) {
	if m == nil || n <= 0 {
		return
	}
	m.thawed.WithLabelValues(by).Add(float64(n))
}

// VerifyFailed records a verify or check run (mode) that found damage.
func (m *Metrics) VerifyFailed(repository, mode string) {
	if m == nil {
		return
	}
	m.verifyFailures.WithLabelValues(repository, mode).Inc()
}

// Restored records the bytes of one restored disk.
func (m *Metrics) Restored(repository string, bytes int64) {
	if m == nil {
		return
	}
	m.restoreBytes.WithLabelValues(repository).Add(float64(bytes))
}

// Close stops the exporter of the SDK's metrics.
func (m *Metrics) Close(ctx context.Context) error {
	if m == nil {
		return nil
	}
	if err := m.provider.Shutdown(ctx); err != nil {
		return fmt.Errorf("metrics: shut down the SDK's exporter: %w", err)
	}
	return nil
}
