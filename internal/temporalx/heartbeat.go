package temporalx

import (
	"context"
	"sync"
	"time"

	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/interceptor"
)

// AutoHeartbeat returns a worker interceptor that heartbeats every activity
// that has a heartbeat timeout, for as long as it runs, whenever the activity
// itself has not heartbeated for a quarter of that timeout (at least 1 s, at
// most 10 s). It resends the details the activity last recorded (at first,
// those of the previous attempt), so a resume point is never overwritten.
//
// With it, a workflow learns within one heartbeat timeout that an activity's
// worker is gone, or that its completion was lost (a Temporal server killed
// after handing out the task): the activity is retried then, instead of at
// its start-to-close timeout.
func AutoHeartbeat() interceptor.WorkerInterceptor { return &autoHeartbeat{} }

type autoHeartbeat struct {
	interceptor.WorkerInterceptorBase
}

func (w *autoHeartbeat) InterceptActivity(ctx context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	return &hbInbound{ActivityInboundInterceptorBase: interceptor.ActivityInboundInterceptorBase{Next: next}}
}

type hbInbound struct {
	interceptor.ActivityInboundInterceptorBase
	out interceptor.ActivityOutboundInterceptor
}

func (i *hbInbound) Init(outbound interceptor.ActivityOutboundInterceptor) error {
	o := &hbOutbound{ActivityOutboundInterceptorBase: interceptor.ActivityOutboundInterceptorBase{Next: outbound}}
	i.out = o
	return i.Next.Init(o)
}

// hbStateKey finds an execution's heartbeat state in its context.
type hbStateKey struct{}

// hbState is what one activity execution last heartbeated, and when.
type hbState struct {
	mu      sync.Mutex
	last    time.Time
	details []any
}

func (i *hbInbound) ExecuteActivity(ctx context.Context, in *interceptor.ExecuteActivityInput) (any, error) {
	info := i.out.GetInfo(ctx)
	if info.HeartbeatTimeout <= 0 {
		return i.Next.ExecuteActivity(ctx, in)
	}
	st := &hbState{last: time.Now()}
	if i.out.HasHeartbeatDetails(ctx) {
		var prev converter.RawValue
		if err := i.out.GetHeartbeatDetails(ctx, &prev); err == nil {
			st.details = []any{prev}
		}
	}
	ctx = context.WithValue(ctx, hbStateKey{}, st)
	every := min(max(info.HeartbeatTimeout/4, time.Second), 10*time.Second)
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(every / 2)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			st.mu.Lock()
			due := time.Since(st.last) >= every
			details := st.details
			if due {
				st.last = time.Now()
			}
			st.mu.Unlock()
			if due {
				i.out.RecordHeartbeat(ctx, details...)
			}
		}
	}()
	return i.Next.ExecuteActivity(ctx, in)
}

type hbOutbound struct {
	interceptor.ActivityOutboundInterceptorBase
}

// RecordHeartbeat notes the activity's own heartbeat (its details are what
// automatic heartbeats resend) and passes it on.
func (o *hbOutbound) RecordHeartbeat(ctx context.Context, details ...any) {
	if st, ok := ctx.Value(hbStateKey{}).(*hbState); ok {
		st.mu.Lock()
		st.last, st.details = time.Now(), details
		st.mu.Unlock()
	}
	o.Next.RecordHeartbeat(ctx, details...)
}
