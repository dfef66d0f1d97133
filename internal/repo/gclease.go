package repo

// The gc lease: one gc at a time per repository.
//
// Object stores offer no lock and no conditional put that every store here
// honours, so the lease works as restic's exclusive lock does: a gc run saves
// its own lease object gc/lease/<run id>, waits a moment for the store's
// listing to settle, and lists gc/lease/. A lease whose ModTime is younger
// than the TTL (by the store's clock: the run's own save is "now") belongs to
// a live run. If another live lease was saved no later than this run's own
// (by ModTime), this run removes its own lease and refuses with ErrGCRunning
// naming the holder; leases saved strictly later are ignored, since their
// runs see this one and refuse. So two runs never go ahead together: a run
// that saw no other lease listed before the other saved, and the other then
// sees a lease no later than its own. Two leases with the same ModTime (S3
// keeps whole seconds) make both runs refuse: sometimes none runs, and the
// next scheduled run goes ahead.
//
// A live run re-saves its lease every TTL/4. Before each step that deletes
// or moves data the run checks that its last successful refresh is younger
// than TTL/2 by its own monotonic clock; a run that was paused or cut off
// from the store for that long stops with ErrGCLeaseLost instead of going
// on, because another run may have taken over by then.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

// ErrGCRunning means another gc run holds the repository's gc lease.
var ErrGCRunning = errors.New("another gc is running on this repository")

// ErrGCLeaseLost means a gc run could not refresh its lease in time and
// stopped before deleting anything more.
var ErrGCLeaseLost = errors.New("gc lease lost")

// DefaultGCLeaseTTL is how long a gc lease lives without a refresh.
const DefaultGCLeaseTTL = 10 * time.Minute

// gcLeaseInfo is the content of a lease object: who holds it.
type gcLeaseInfo struct {
	Run     string    `json:"run"`
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
}

func (i gcLeaseInfo) String() string {
	return fmt.Sprintf("run %s on host %s, pid %d, started %s", i.Run, i.Host, i.PID, i.Started.Format(time.RFC3339))
}

// gcLease is a held lease. check reports whether it may still be relied on;
// release stops the refresher and removes the lease object.
type gcLease struct {
	r    *Repository
	name string
	info gcLeaseInfo
	ttl  time.Duration

	mu          sync.Mutex
	lastRefresh time.Time // local monotonic clock
	refreshErr  error

	stop chan struct{}
	done chan struct{}
}

// acquireGCLease takes the gc lease or returns ErrGCRunning (wrapped with the
// holder). settle is how long to wait between saving the lease and listing.
func (r *Repository) acquireGCLease(ctx context.Context, ttl, settle time.Duration) (*gcLease, error) {
	host, _ := os.Hostname()
	info := gcLeaseInfo{Run: NewBackupID(time.Now()), Host: host, PID: os.Getpid(), Started: time.Now().UTC()}
	data, err := json.Marshal(info)
	if err != nil {
		return nil, fmt.Errorf("gc lease: %w", err)
	}
	name := "gc/lease/" + info.Run
	saved := time.Now()
	if err := r.be.Save(ctx, name, data); err != nil {
		return nil, fmt.Errorf("gc lease: save %s: %w", name, err)
	}
	l := &gcLease{r: r, name: name, info: info, ttl: ttl, lastRefresh: saved,
		stop: make(chan struct{}), done: make(chan struct{})}
	if err := l.checkOthers(ctx, settle); err != nil {
		if derr := r.be.Delete(context.WithoutCancel(ctx), name); derr != nil && !backend.IsNotFound(derr) {
			r.log.WarnContext(ctx, "gc lease: could not remove the lease of a run that did not start", "lease", name, "err", derr)
		}
		return nil, err
	}
	go l.refresher()
	return l, nil
}

// checkOthers lists the leases after settle and fails if another is live.
// Stale leases (of runs killed without releasing) are removed.
func (l *gcLease) checkOthers(ctx context.Context, settle time.Duration) error {
	select {
	case <-time.After(settle):
	case <-ctx.Done():
		return fmt.Errorf("gc lease: %w", ctx.Err())
	}
	// Compare ModTimes from one listing: a store may report them at a finer
	// resolution there than in a HEAD answer (radosgw does).
	var all []backend.Info
	var own *backend.Info
	err := l.r.be.List(ctx, "gc/lease/", func(in backend.Info) error {
		all = append(all, in)
		return nil
	})
	if err != nil {
		return fmt.Errorf("gc lease: list: %w", err)
	}
	for i := range all {
		if all[i].Name == l.name {
			own = &all[i]
		}
	}
	if own == nil {
		return fmt.Errorf("gc lease: own lease %s not listed after %v (the store's listing lags; raise the settle time)", l.name, settle)
	}
	var live, stale []backend.Info
	for _, in := range all {
		switch {
		case in.Name == l.name:
		case own.ModTime.Sub(in.ModTime) >= l.ttl:
			stale = append(stale, in)
		case in.ModTime.After(own.ModTime):
			// Saved after this one: that run sees this lease and refuses.
		default:
			live = append(live, in)
		}
	}
	if len(live) > 0 {
		holders := make([]string, 0, len(live))
		for _, in := range live {
			holders = append(holders, l.r.describeLease(ctx, in))
		}
		return fmt.Errorf("%w: %s", ErrGCRunning, strings.Join(holders, "; "))
	}
	for _, in := range stale {
		l.r.log.WarnContext(ctx, "gc lease: removing the stale lease of a run that stopped without releasing it",
			"lease", l.r.describeLease(ctx, in), "age", own.ModTime.Sub(in.ModTime).Round(time.Second))
		if err := l.r.be.Delete(ctx, in.Name); err != nil && !backend.IsNotFound(err) {
			return fmt.Errorf("gc lease: remove stale %s: %w", in.Name, err)
		}
	}
	return nil
}

// describeLease names the holder of a lease object for messages.
func (r *Repository) describeLease(ctx context.Context, in backend.Info) string {
	data, err := r.be.Load(ctx, in.Name)
	var info gcLeaseInfo
	if err != nil || json.Unmarshal(data, &info) != nil || info.Run == "" {
		return fmt.Sprintf("%s (refreshed %s)", in.Name, in.ModTime.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("%s (refreshed %s)", info, in.ModTime.UTC().Format(time.RFC3339))
}

// refresher re-saves the lease every TTL/4 until release.
func (l *gcLease) refresher() {
	defer close(l.done)
	data, _ := json.Marshal(l.info) // plain data: cannot fail
	t := time.NewTicker(l.ttl / 4)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.ttl/4)
		start := time.Now()
		err := l.r.be.Save(ctx, l.name, data)
		cancel()
		l.mu.Lock()
		if err == nil {
			l.lastRefresh = start
		} else {
			l.refreshErr = err
			l.r.log.WarnContext(ctx, "gc lease: refresh failed", "lease", l.name, "err", err)
		}
		l.mu.Unlock()
	}
}

// check returns ErrGCLeaseLost when the last successful refresh is older than
// TTL/2: past that, another run may take over before this one's next step.
func (l *gcLease) check() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if age := time.Since(l.lastRefresh); age >= l.ttl/2 {
		return fmt.Errorf("%w: last refreshed %v ago (TTL %v; last error: %v)", ErrGCLeaseLost, age.Round(time.Millisecond), l.ttl, l.refreshErr)
	}
	return nil
}

// release stops refreshing and removes the lease object.
func (l *gcLease) release(ctx context.Context) {
	close(l.stop)
	<-l.done
	if err := l.r.be.Delete(context.WithoutCancel(ctx), l.name); err != nil && !backend.IsNotFound(err) {
		l.r.log.WarnContext(ctx, "gc lease: could not remove the lease; the next gc waits for it to go stale", "lease", l.name, "err", err)
	}
}
