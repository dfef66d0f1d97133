package api_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/workflows"
)

type policyList struct {
	Policies []api.PolicyView `json:"policies"`
}

func policyNames(l policyList) []string {
	var out []string
	for _, p := range l.Policies {
		out = append(out, p.Name)
	}
	return out
}

// TestTenantPolicies: a member publishes a backup policy of its project's
// workload within the admin's limits (minimum interval, maximum expiry,
// policies per project); it becomes a real Temporal Schedule whose runs
// back up that project's workload with the expiry, without hooks and not
// as the operator; what is outside the limits is refused naming the limit;
// another project neither sees nor deletes it, a reader cannot publish.
func TestTenantPolicies(t *testing.T) {
	tc := startTemporal(t)
	lim := &api.PolicyLimits{MinInterval: time.Hour, MaxExpireAfter: 30 * 24 * time.Hour, MaxPerProject: 2}
	e := newEnv(t, lab.Options{}, tc, api.Config{PolicyLimits: lim}, nil)
	ctx := context.Background()
	alpha := e.projects["alpha"]
	aliceTok := e.token(t, alice, "alpha")
	bobTok := e.token(t, bob, "beta")
	ritaTok := e.token(t, rita, "alpha")
	create := func(tok string, fields map[string]any) (int, []byte, api.PolicyView) {
		var out struct{ Policy api.PolicyView }
		st, body := e.call(t, tok, "POST", "/v1/policies", map[string]any{"policy": fields}, &out)
		return st, body, out.Policy
	}
	daily := map[string]any{"name": "daily", "workload": "web", "every": "24h", "offset": "2h", "expire_after": "168h",
		"retention": map[string]any{"daily": 7}}

	// Out of the limits, or not a tenant's to give.
	for _, c := range []struct {
		what   string
		fields map[string]any
		msg    string
	}{
		{"too often", map[string]any{"name": "p", "workload": "web", "every": "10m", "expire_after": "24h"}, "Invalid every 10m: the minimum interval is 1h."},
		{"kept too long", map[string]any{"name": "p", "workload": "web", "every": "24h", "expire_after": "2000h"}, "Invalid expire_after 2000h: the maximum retention is 30d."},
		{"no expiry", map[string]any{"name": "p", "workload": "web", "every": "24h"}, "No expire_after given: a tenant's policy needs one, at most 30d."},
		{"a bad workload", map[string]any{"name": "p", "workload": "../x", "every": "24h", "expire_after": "24h"}, `Invalid workload "../x": want 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit.`},
	} {
		st, body, _ := create(aliceTok, c.fields)
		wantError(t, c.what, st, body, 400, c.msg)
	}
	st, body := e.call(t, aliceTok, "POST", "/v1/policies", `{"policy": {"name": "p", "workload": "web", "every": "24h", "expire_after": "24h", "hooks": {"pre": [{"path": "/bin/sh"}]}}}`, nil)
	wantError(t, "a tenant's hooks", st, body, 400, `Malformed request body: json: unknown field "hooks"`)
	st, body, _ = create(ritaTok, daily)
	wantError(t, "the reader publishes", st, body, 403, msgPolicy("policy:create"))

	// Within them: a real schedule of alpha's workload.
	st, body, v := create(aliceTok, daily)
	if st != 201 || v.Name != "daily" || v.ProjectID != alpha || v.Every != "1d" || v.ExpireAfter != "7d" || v.Retention == nil || v.Retention.Daily != 7 {
		t.Fatalf("alice publishes: %d %s", st, body)
	}
	d, err := tc.ScheduleClient().GetHandle(ctx, "policy/"+alpha+"/daily").Describe(ctx)
	if err != nil {
		t.Fatalf("the schedule: %v", err)
	}
	act, ok := d.Schedule.Action.(*client.ScheduleWorkflowAction)
	if !ok || act.Workflow != "WorkloadBackup" || act.ID != workflows.BackupWorkflowID(alpha, "web") ||
		len(d.Schedule.Spec.Intervals) != 1 || d.Schedule.Spec.Intervals[0].Every != 24*time.Hour || d.Schedule.Spec.Intervals[0].Offset != 2*time.Hour {
		t.Fatalf("the schedule: %+v, action %+v", d.Schedule.Spec, d.Schedule.Action)
	}
	var req workflows.BackupRequest
	if len(act.Args) != 1 || decodePayload(act.Args[0], &req) != nil {
		t.Fatalf("the action's args: %v", act.Args)
	}
	if req.Project != alpha || req.Workload != "web" || req.Selector.Workload != "web" || req.Operator || len(req.PreHooks)+len(req.PostHooks) != 0 ||
		req.ExpireAfter != 168*time.Hour || req.Retention.Daily != 7 || req.Policy != alpha+"/daily" || req.Repository != repoID {
		t.Errorf("the runs' request: %+v", req)
	}

	// Listed and shown to alpha, never to beta.
	var l policyList
	waitFor(t, "alpha's policy listed", func() bool {
		st, _ := e.call(t, ritaTok, "GET", "/v1/policies", nil, &l)
		return st == 200 && slices.Equal(policyNames(l), []string{"daily"})
	})
	var one struct{ Policy api.PolicyView }
	if st, body := e.call(t, ritaTok, "GET", "/v1/policies/daily", nil, &one); st != 200 || len(one.Policy.NextRuns) == 0 || one.Policy.Workload != "web" {
		t.Errorf("the reader shows it: %d %s", st, body)
	}
	if st, _ := e.call(t, bobTok, "GET", "/v1/policies", nil, &l); st != 200 || len(l.Policies) != 0 {
		t.Errorf("bob lists beta's policies: %d %v", st, policyNames(l))
	}
	st, body = e.call(t, bobTok, "GET", "/v1/policies/daily", nil, nil)
	wantError(t, "bob shows alpha's policy", st, body, 404, "Policy daily could not be found.")
	st, body = e.call(t, bobTok, "DELETE", "/v1/policies/daily", nil, nil)
	wantError(t, "bob deletes alpha's policy", st, body, 404, "Policy daily could not be found.")
	st, body = e.call(t, bobTok, "GET", "/v1/policies?project_id="+alpha, nil, nil)
	wantError(t, "bob lists alpha's policies", st, body, 403, msgPolicy("policy:list"))
	st, body = e.call(t, ritaTok, "DELETE", "/v1/policies/daily", nil, nil)
	wantError(t, "the reader deletes", st, body, 403, msgPolicy("policy:delete"))
	// Beta may use the same name: another schedule.
	if st, body, _ := create(bobTok, map[string]any{"name": "daily", "workload": "db", "every": "24h", "expire_after": "24h"}); st != 201 {
		t.Errorf("bob publishes his daily: %d %s", st, body)
	}
	st, body, _ = create(aliceTok, daily)
	wantError(t, "the same name twice", st, body, 409, "A policy named daily exists already.")

	// Policies per project.
	if st, body, _ := create(aliceTok, map[string]any{"name": "app-hourly", "workload": "app", "every": "1h", "expire_after": "48h", "consistency": "crash"}); st != 201 {
		t.Fatalf("alice's second policy: %d %s", st, body)
	}
	waitFor(t, "both of alpha's policies listed", func() bool {
		st, _ := e.call(t, aliceTok, "GET", "/v1/policies", nil, &l)
		return st == 200 && len(l.Policies) == 2
	})
	st, body, _ = create(aliceTok, map[string]any{"name": "third", "workload": "web", "every": "12h", "expire_after": "24h"})
	wantError(t, "a third policy", st, body, 413, "Quota exceeded for policies: project "+alpha+" has 2 policies, the limit is 2.")

	// Delete: the schedule is gone.
	if st, body := e.call(t, aliceTok, "DELETE", "/v1/policies/daily", nil, nil); st != 204 {
		t.Fatalf("alice deletes: %d %s", st, body)
	}
	if _, err := tc.ScheduleClient().GetHandle(ctx, "policy/"+alpha+"/daily").Describe(ctx); err == nil {
		t.Error("the schedule is still there")
	}
	st, body = e.call(t, aliceTok, "GET", "/v1/policies/daily", nil, nil)
	wantError(t, "show a deleted policy", st, body, 404, "Policy daily could not be found.")
	e.checkLogs(t)
}

// decodePayload reads a described schedule's workflow argument.
func decodePayload(v any, dst any) error {
	pl, ok := v.(*commonpb.Payload)
	if !ok {
		return fmt.Errorf("not a payload: %T", v)
	}
	return converter.GetDefaultDataConverter().FromPayload(pl, dst)
}
