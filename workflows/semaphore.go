package workflows

import (
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/raksha-backup/raksha/activities"
)

// CopySemaphoreID is the workflow id of the semaphore that caps concurrent
// disk copies across all workers (DESIGN.md, promise 5). Every backup asks
// it for one permit per disk before the copy and gives it back after.
const CopySemaphoreID = "raksha-copy-semaphore"

// DefaultCopyPermits is the global cap on concurrent disk copies when the
// copy semaphore is started by a backup (like cinder's
// backup_max_operations). Change a running semaphore's size with the
// activities.SemaphoreResizeSignal signal.
const DefaultCopyPermits = 15

// SemaphoreStateQuery is the query that returns a semaphore's SemaphoreState.
const SemaphoreStateQuery = "state"

// Defaults of SemaphoreState.
const (
	DefaultSemaphoreCheckInterval = time.Minute
	DefaultSemaphoreMaxHistory    = 5000
)

// SemaphoreState is the input of the Semaphore workflow and what it carries
// over when it continues as new.
type SemaphoreState struct {
	// Permits is how many holders there may be at once.
	Permits int `json:"permits"`
	// Holders hold a permit; Waiting wait for one, in arrival order.
	Holders []Permit `json:"holders,omitempty"`
	Waiting []Permit `json:"waiting,omitempty"`
	// CheckInterval is how often, while there are holders or waiters, the
	// semaphore checks that their workflow runs still run, and frees the
	// permits and requests of those that ended (default 1 minute).
	CheckInterval time.Duration `json:"check_interval,omitempty"`
	// MaxHistory is the history length (events) at which the semaphore
	// continues as new (default 5000; sooner when the server suggests it).
	MaxHistory int `json:"max_history,omitempty"`
	// Runs counts the runs of this semaphore (continue-as-new), Granted the
	// permits granted over all runs.
	Runs    int   `json:"runs"`
	Granted int64 `json:"granted"`
}

// Permit is one permit held or asked for.
type Permit struct {
	WorkflowID string `json:"workflow_id"`
	RunID      string `json:"run_id"`
	Key        string `json:"key"`
	// Group is the request's activities.SemaphoreRequest.Group.
	Group string `json:"group,omitempty"`
	// Since is when the permit was granted (holders) or asked for (waiting).
	Since time.Time `json:"since"`
}

func (p Permit) run() activities.WorkflowRun {
	return activities.WorkflowRun{WorkflowID: p.WorkflowID, RunID: p.RunID}
}

// share is whose share p counts toward: its group, or else its run (and
// always its run when byGroup is off).
func (p Permit) share(byGroup bool) activities.WorkflowRun {
	if byGroup && p.Group != "" {
		return activities.WorkflowRun{WorkflowID: p.Group}
	}
	return p.run()
}

// semaphoreGroupsChange gates counting a request's share by its group
// (activities.SemaphoreRequest.Group) instead of by its run. A semaphore
// run that began without the marker keeps counting by run; the next run
// (it continues as new) counts by group.
const semaphoreGroupsChange = "semaphore-shares-by-group"

// Semaphore is a workflow that holds a number of permits. Workflows ask for
// permits with the AcquirePermits activity (signal-with-start of the
// semaphore), get each as a activities.PermitGrantedSignal signal, and give
// them back with the release signal (RequestPermits does all of that).
// When permits are scarce, a waiting request of the share holding the
// fewest permits goes first (in arrival order among equals), so one large
// backup does not starve small ones; a share is the request's group (a
// backup and its copy children), or else its run. A holder or waiter whose run ends without
// releasing loses its permits at the next check (CheckInterval), and at
// once when a grant to it fails. The history stays bounded: the semaphore
// continues as new with its state after MaxHistory events.
func Semaphore(ctx workflow.Context, st SemaphoreState) error {
	log := workflow.GetLogger(ctx)
	s := &semaphore{st: st}
	if s.st.Permits <= 0 {
		s.st.Permits = 1
	}
	if s.st.CheckInterval <= 0 {
		s.st.CheckInterval = DefaultSemaphoreCheckInterval
	}
	if s.st.MaxHistory <= 0 {
		s.st.MaxHistory = DefaultSemaphoreMaxHistory
	}
	s.st.Runs++
	s.byGroup = workflow.GetVersion(ctx, semaphoreGroupsChange, workflow.DefaultVersion, 1) >= 1
	id := workflow.GetInfo(ctx).WorkflowExecution.ID
	if err := workflow.SetQueryHandler(ctx, SemaphoreStateQuery, func() (SemaphoreState, error) { return s.st, nil }); err != nil {
		return err
	}
	acquireCh := workflow.GetSignalChannel(ctx, activities.SemaphoreAcquireSignal)
	releaseCh := workflow.GetSignalChannel(ctx, activities.SemaphoreReleaseSignal)
	resizeCh := workflow.GetSignalChannel(ctx, activities.SemaphoreResizeSignal)
	onAcquire := func(r activities.SemaphoreRequest) { s.acquire(workflow.Now(ctx), r) }
	onRelease := func(r activities.SemaphoreRelease) { s.release(r) }
	onResize := func(n int) {
		if n > 0 {
			log.Info("semaphore resized", "from", s.st.Permits, "to", n)
			s.st.Permits = n
		}
	}

	sel := workflow.NewSelector(ctx)
	sel.AddReceive(acquireCh, func(c workflow.ReceiveChannel, _ bool) {
		var r activities.SemaphoreRequest
		c.Receive(ctx, &r)
		onAcquire(r)
	})
	sel.AddReceive(releaseCh, func(c workflow.ReceiveChannel, _ bool) {
		var r activities.SemaphoreRelease
		c.Receive(ctx, &r)
		onRelease(r)
	})
	sel.AddReceive(resizeCh, func(c workflow.ReceiveChannel, _ bool) {
		var n int
		c.Receive(ctx, &n)
		onResize(n)
	})
	cancelled := false
	sel.AddReceive(ctx.Done(), func(c workflow.ReceiveChannel, _ bool) {
		c.Receive(ctx, nil)
		cancelled = true
	})

	checkCtx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           activities.ControlQueue,
		StartToCloseTimeout: time.Minute,
		HeartbeatTimeout:    30 * time.Second,
		RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumAttempts: 3, NonRetryableErrorTypes: activities.NonRetryable},
	})
	inFlight := 0 // grant signals not yet delivered
	timerSet, checking := false, false
	for {
		if cancelled {
			return temporal.NewCanceledError("semaphore cancelled")
		}
		info := workflow.GetInfo(ctx)
		draining := info.GetCurrentHistoryLength() >= s.st.MaxHistory || info.GetContinueAsNewSuggested()
		if draining && inFlight == 0 {
			// Take in every signal already received, then carry the state
			// over: nothing is lost between the runs.
			for {
				var r activities.SemaphoreRequest
				if !acquireCh.ReceiveAsync(&r) {
					break
				}
				onAcquire(r)
			}
			for {
				var r activities.SemaphoreRelease
				if !releaseCh.ReceiveAsync(&r) {
					break
				}
				onRelease(r)
			}
			for {
				var n int
				if !resizeCh.ReceiveAsync(&n) {
					break
				}
				onResize(n)
			}
			log.Info("semaphore continues as new", "history", info.GetCurrentHistoryLength(),
				"holders", len(s.st.Holders), "waiting", len(s.st.Waiting))
			return workflow.NewContinueAsNewError(ctx, Semaphore, s.st)
		}
		if !draining {
			for _, p := range s.grant(workflow.Now(ctx)) {
				inFlight++
				f := workflow.SignalExternalWorkflow(ctx, p.WorkflowID, p.RunID, activities.PermitGrantedSignal(id),
					activities.PermitGrant{Semaphore: id, Key: p.Key})
				sel.AddFuture(f, func(f workflow.Future) {
					inFlight--
					if err := f.Get(ctx, nil); err != nil {
						// The run is gone: it holds nothing any more.
						log.Warn("grant not delivered: freeing the run's permits", "workflow", p.WorkflowID, "run", p.RunID, "error", err)
						s.dropRun(p.run())
					}
				})
			}
		}
		if !timerSet && !checking && s.busy() {
			timerSet = true
			sel.AddFuture(workflow.NewTimer(ctx, s.st.CheckInterval), func(f workflow.Future) {
				timerSet = false
				runs := s.runs()
				if f.Get(ctx, nil) != nil || len(runs) == 0 {
					return
				}
				checking = true
				sel.AddFuture(workflow.ExecuteActivity(checkCtx, a.ClosedRuns, activities.ClosedRunsInput{Runs: runs}), func(f workflow.Future) {
					checking = false
					var res activities.ClosedRunsResult
					if err := f.Get(ctx, &res); err != nil {
						log.Warn("checking the holders failed; next check in a while", "error", err)
						return
					}
					for _, r := range res.Closed {
						log.Info("freeing the permits of a run that ended", "workflow", r.WorkflowID, "run", r.RunID)
						s.dropRun(r)
					}
				})
			})
		}
		sel.Select(ctx)
	}
}

// semaphore is the pure state machine of Semaphore.
type semaphore struct {
	st SemaphoreState
	// byGroup: shares are groups (semaphoreGroupsChange).
	byGroup bool
}

func (s *semaphore) acquire(now time.Time, r activities.SemaphoreRequest) {
	for _, k := range r.Keys {
		p := Permit{WorkflowID: r.WorkflowID, RunID: r.RunID, Key: k, Group: r.Group, Since: now}
		if indexOf(s.st.Holders, p) >= 0 || indexOf(s.st.Waiting, p) >= 0 {
			continue // a repeated request
		}
		s.st.Waiting = append(s.st.Waiting, p)
	}
}

func (s *semaphore) release(r activities.SemaphoreRelease) {
	for _, k := range r.Keys {
		p := Permit{WorkflowID: r.WorkflowID, RunID: r.RunID, Key: k}
		if i := indexOf(s.st.Holders, p); i >= 0 {
			s.st.Holders = append(s.st.Holders[:i], s.st.Holders[i+1:]...)
		}
		if i := indexOf(s.st.Waiting, p); i >= 0 {
			s.st.Waiting = append(s.st.Waiting[:i], s.st.Waiting[i+1:]...)
		}
	}
}

// dropRun forgets every permit and request of a run.
func (s *semaphore) dropRun(r activities.WorkflowRun) {
	keep := func(ps []Permit) []Permit {
		out := ps[:0]
		for _, p := range ps {
			if p.run() != r {
				out = append(out, p)
			}
		}
		return out
	}
	s.st.Holders = keep(s.st.Holders)
	s.st.Waiting = keep(s.st.Waiting)
}

// grant moves waiting requests to the holders while permits are free: the
// request of the share (Permit.share) that holds the fewest permits first,
// in arrival order among equals.
func (s *semaphore) grant(now time.Time) []Permit {
	var out []Permit
	for len(s.st.Holders) < s.st.Permits && len(s.st.Waiting) > 0 {
		held := map[activities.WorkflowRun]int{}
		for _, h := range s.st.Holders {
			held[h.share(s.byGroup)]++
		}
		best := 0
		for i, w := range s.st.Waiting {
			if held[w.share(s.byGroup)] < held[s.st.Waiting[best].share(s.byGroup)] {
				best = i
			}
		}
		p := s.st.Waiting[best]
		s.st.Waiting = append(s.st.Waiting[:best], s.st.Waiting[best+1:]...)
		p.Since = now
		s.st.Holders = append(s.st.Holders, p)
		s.st.Granted++
		out = append(out, p)
	}
	return out
}

func (s *semaphore) busy() bool { return len(s.st.Holders)+len(s.st.Waiting) > 0 }

// runs lists the runs with permits or requests, each once, in order.
func (s *semaphore) runs() []activities.WorkflowRun {
	seen := map[activities.WorkflowRun]bool{}
	var out []activities.WorkflowRun
	for _, list := range [][]Permit{s.st.Holders, s.st.Waiting} {
		for _, p := range list {
			if !seen[p.run()] {
				seen[p.run()] = true
				out = append(out, p.run())
			}
		}
	}
	return out
}

func indexOf(ps []Permit, p Permit) int {
	for i, q := range ps {
		if q.WorkflowID == p.WorkflowID && q.RunID == p.RunID && q.Key == p.Key {
			return i
		}
	}
	return -1
}

// Permits is a workflow's side of a semaphore: permits asked for with
// RequestPermits, granted one by one, given back with Release and Close.
// A workflow run uses at most one Permits per semaphore at a time (grants
// arrive on one signal channel per semaphore).
type Permits struct {
	sem        string
	workflowID string
	runID      string
	state      map[string]permitState
	order      []string
	acquire    workflow.Future
	grants     workflow.ReceiveChannel
	bypass     bool
	releases   []workflow.Future
	watching   bool

	// for Next
	sel   workflow.Selector
	ready []grantResult
}

type permitState int

const (
	permitWaiting permitState = iota + 1
	permitHeld
	permitDone
)

type grantResult struct {
	key string
	err error
}

// RequestPermits asks the semaphore semaphoreID for one permit per key
// (keys unique within the run), starting the semaphore with size permits
// if it is not running. It returns at once; the grants arrive through
// Watch or Next.
func RequestPermits(ctx workflow.Context, semaphoreID string, size int, keys ...string) *Permits {
	info := workflow.GetInfo(ctx)
	group := "" // a run of its own
	if info.ParentWorkflowExecution != nil {
		group = info.ParentWorkflowExecution.ID // a child counts toward its parent's share
	}
	p := &Permits{sem: semaphoreID, workflowID: info.WorkflowExecution.ID, runID: info.WorkflowExecution.RunID,
		state: map[string]permitState{}, grants: workflow.GetSignalChannel(ctx, activities.PermitGrantedSignal(semaphoreID))}
	for _, k := range keys {
		if _, dup := p.state[k]; dup {
			continue
		}
		p.state[k] = permitWaiting
		p.order = append(p.order, k)
	}
	if len(p.order) == 0 {
		return p
	}
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           activities.ControlQueue,
		StartToCloseTimeout: 30 * time.Second,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: 30 * time.Second,
			MaximumAttempts: 10, NonRetryableErrorTypes: activities.NonRetryable},
	})
	p.acquire = workflow.ExecuteActivity(actx, a.AcquirePermits, activities.SemaphoreRequest{
		Semaphore: semaphoreID, Permits: size, WorkflowID: p.workflowID, RunID: p.runID, Keys: p.order, Group: group})
	return p
}

// Watch adds the permits' events to sel: as each key is granted, or can no
// longer be (the request failed, or ctx was cancelled), onGrant is called
// once for it, from inside sel.Select. A grant that is not expected (a
// repeated request granted after its key was released) is given back.
func (p *Permits) Watch(ctx workflow.Context, sel workflow.Selector, onGrant func(key string, err error)) {
	p.watching = true
	if p.acquire != nil {
		sel.AddFuture(p.acquire, func(f workflow.Future) {
			var res activities.AcquireResult
			if err := f.Get(ctx, &res); err != nil {
				p.failWaiting(ctx, fmt.Errorf("request permits of %s: %w", p.sem, err), onGrant)
				return
			}
			if res.Bypass {
				p.bypass = true
				for _, k := range p.order {
					if p.state[k] == permitWaiting {
						p.state[k] = permitHeld
						onGrant(k, nil)
					}
				}
			}
		})
	}
	sel.AddReceive(p.grants, func(c workflow.ReceiveChannel, _ bool) {
		var g activities.PermitGrant
		c.Receive(ctx, &g)
		switch p.state[g.Key] {
		case permitWaiting:
			p.state[g.Key] = permitHeld
			onGrant(g.Key, nil)
		case permitHeld:
			// a repeated grant of a permit held: nothing to do
		default:
			p.signalRelease(ctx, []string{g.Key})
		}
	})
	sel.AddReceive(ctx.Done(), func(c workflow.ReceiveChannel, _ bool) {
		c.Receive(ctx, nil)
		p.failWaiting(ctx, temporal.NewCanceledError("cancelled while waiting for a permit of "+p.sem), onGrant)
	})
}

// failWaiting ends every waiting key with err and withdraws the requests.
func (p *Permits) failWaiting(ctx workflow.Context, err error, onGrant func(string, error)) {
	var keys []string
	for _, k := range p.order {
		if p.state[k] == permitWaiting {
			p.state[k] = permitDone
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return
	}
	p.signalRelease(ctx, keys)
	for _, k := range keys {
		onGrant(k, err)
	}
}

// Next waits for the next key to be granted (for workflows that do not
// run their own selector; do not mix with Watch).
func (p *Permits) Next(ctx workflow.Context) (string, error) {
	if p.sel == nil {
		if p.watching {
			return "", errors.New("permits: Next after Watch")
		}
		p.sel = workflow.NewSelector(ctx)
		p.Watch(ctx, p.sel, func(k string, err error) { p.ready = append(p.ready, grantResult{k, err}) })
	}
	for len(p.ready) == 0 {
		if !p.anyWaiting() {
			return "", fmt.Errorf("permits of %s: no request is waiting", p.sem)
		}
		p.sel.Select(ctx)
	}
	r := p.ready[0]
	p.ready = p.ready[1:]
	return r.key, r.err
}

func (p *Permits) anyWaiting() bool {
	for _, k := range p.order {
		if p.state[k] == permitWaiting {
			return true
		}
	}
	return false
}

// Release gives back the permits of keys (held or still waiting). It does
// not wait: Close waits for every release to reach the semaphore.
func (p *Permits) Release(ctx workflow.Context, keys ...string) {
	var out []string
	for _, k := range keys {
		if s := p.state[k]; s == permitHeld || s == permitWaiting {
			p.state[k] = permitDone
			out = append(out, k)
		}
	}
	p.signalRelease(ctx, out)
}

// Close releases every permit still held or waited for and waits until
// the semaphore has every release (a signal sent just before a workflow
// ends may never be delivered). It works in a cancelled ctx too.
func (p *Permits) Close(ctx workflow.Context) {
	var keys []string
	for _, k := range p.order {
		if s := p.state[k]; s == permitHeld || s == permitWaiting {
			p.state[k] = permitDone
			keys = append(keys, k)
		}
	}
	p.signalRelease(ctx, keys)
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	for _, f := range p.releases {
		_ = f.Get(dctx, nil) // a semaphore that is gone holds nothing
	}
	p.releases = nil
}

func (p *Permits) signalRelease(ctx workflow.Context, keys []string) {
	if len(keys) == 0 || p.bypass {
		return
	}
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	p.releases = append(p.releases, workflow.SignalExternalWorkflow(dctx, p.sem, "", activities.SemaphoreReleaseSignal,
		activities.SemaphoreRelease{WorkflowID: p.workflowID, RunID: p.runID, Keys: keys}))
}
