package policies

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/workflows"
)

// base is a valid policy; cases replace or add lines.
const base = `name: demo-daily
selector:
  project: demo
  metadata:
    raksha.workload: demo
schedule:
  cron: "0 2 * * *"
repository: main
`

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want []string // every error message, in order
	}{
		{"unknown top-level field with suggestion", base + "retension:\n  daily: 7\n",
			[]string{`p.yaml:9:1: retension: unknown field "retension"; did you mean "retention"?`}},
		{"system label", base + "labels:\n  team: shop\n  project: other\n",
			[]string{`p.yaml:11:3: labels.project: label "project" is a system label (set by Raksha: [policy project workload]); a request's labels cannot set it`}},
		{"system label workload", base + "labels:\n  workload: other\n",
			[]string{`p.yaml:10:3: labels.workload: label "workload" is a system label (set by Raksha: [policy project workload]); a request's labels cannot set it`}},
		{"unknown field without suggestion", base + "colour: blue\n",
			[]string{`p.yaml:9:1: colour: unknown field "colour" (known: consistency, description, drill, hooks, kind, labels, maintenance, name, paused, project, repository, retention, schedule, selector, workload)`}},
		{"missing required fields", "description: nothing else\n",
			[]string{
				"p.yaml:1:1: name: missing (every policy needs name, selector, schedule and repository)",
				"p.yaml:1:1: selector: missing (every policy needs name, selector, schedule and repository)",
				"p.yaml:1:1: schedule: missing (every policy needs name, selector, schedule and repository)",
				"p.yaml:1:1: repository: missing (every policy needs name, selector, schedule and repository)",
			}},
		{"document is not a mapping", "- a\n- b\n",
			[]string{"p.yaml:1:1: want a mapping of fields, got a list"}},
		{"bad name", strings.Replace(base, "name: demo-daily", "name: demo daily!", 1),
			[]string{`p.yaml:1:7: name: "demo daily!": want letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63 characters`}},
		{"duplicate key", base + "repository: other\n",
			[]string{"p.yaml:9:1: repository: given twice (first at line 8)"}},
		{"cron hour out of range", strings.Replace(base, `"0 2 * * *"`, `"0 25 * * *"`, 1),
			[]string{`p.yaml:7:9: schedule.cron: "0 25 * * *": hour field "25": 25 is out of range 0-23`}},
		{"cron field count", strings.Replace(base, `"0 2 * * *"`, `"0 2 * *"`, 1),
			[]string{`p.yaml:7:9: schedule.cron: "0 2 * *": has 4 fields, want 5: minute hour day-of-month month day-of-week`}},
		{"cron bad month name", strings.Replace(base, `"0 2 * * *"`, `"0 2 1 JUNE *"`, 1),
			[]string{`p.yaml:7:9: schedule.cron: "0 2 1 JUNE *": month field "JUNE": "JUNE": want a number 1-12 or a name such as JAN`}},
		{"cron @every", strings.Replace(base, `"0 2 * * *"`, `"@every 1h"`, 1),
			[]string{`p.yaml:7:9: schedule.cron: "@every 1h": @every is not supported here: use the schedule's every field`}},
		{"unquoted cron starting with *", strings.Replace(base, `"0 2 * * *"`, `* 2 * * *`, 1),
			[]string{`p.yaml:7: YAML syntax: did not find expected alphabetic or numeric character (a value starting with * is an alias in YAML: quote cron expressions)`}},
		{"cron and every", base[:strings.Index(base, "repository")] + "  every: 6h\nrepository: main\n",
			[]string{"p.yaml:8:3: schedule.every: give cron or every, not both"}},
		{"no time", strings.Replace(base, `cron: "0 2 * * *"`, `jitter: 5m`, 1),
			[]string{`p.yaml:7:3: schedule: says no time: give cron (such as "0 2 * * *") or every (such as 6h)`}},
		{"bad time zone", strings.Replace(base, `"0 2 * * *"`, "\"0 2 * * *\"\n  time_zone: Mars/Olympus", 1),
			[]string{`p.yaml:8:14: schedule.time_zone: "Mars/Olympus" is not a known time zone: give an IANA name such as UTC or Europe/Berlin`}},
		{"time zone with interval", strings.Replace(base, `cron: "0 2 * * *"`, "every: 1h\n  time_zone: UTC", 1),
			[]string{"p.yaml:8:3: schedule.time_zone: applies to cron only (an interval is the same in every time zone)"}},
		{"jitter not shorter than interval", strings.Replace(base, `cron: "0 2 * * *"`, "every: 1h\n  jitter: 2h", 1),
			[]string{"p.yaml:8:11: schedule.jitter: 2h must be shorter than every (1h)"}},
		{"offset not shorter than interval", strings.Replace(base, `cron: "0 2 * * *"`, "every: 1h\n  offset: 90m", 1),
			[]string{"p.yaml:8:11: schedule.offset: 90m must be shorter than every (1h)"}},
		{"offset with cron", strings.Replace(base, `"0 2 * * *"`, "\"0 2 * * *\"\n  offset: 5m", 1),
			[]string{"p.yaml:8:3: schedule.offset: applies to every only (a cron expression says its own times)"}},
		{"duration without unit", strings.Replace(base, `cron: "0 2 * * *"`, "every: 3600", 1),
			[]string{`p.yaml:7:10: schedule.every: "3600" is not a duration: want a number with a unit such as 30s, 15m, 2h or 7d`}},
		{"catchup window too short", strings.Replace(base, `"0 2 * * *"`, "\"0 2 * * *\"\n  catchup_window: 5s", 1),
			[]string{"p.yaml:8:19: schedule.catchup_window: 5s is too short: at least 10s"}},
		{"two selector kinds", strings.Replace(base, "  project: demo\n", "  project: demo\n  tag: prod\n", 1),
			[]string{"p.yaml:5:3: selector.metadata: a selector uses one of metadata, tag, stack, server_group or servers, and tag is given too"}},
		{"no selector kind", strings.Replace(base, "  metadata:\n    raksha.workload: demo\n", "", 1),
			[]string{"p.yaml:3:3: selector: selects no servers: give one of metadata, tag, stack, server_group or servers"}},
		{"unsupported metadata key", strings.Replace(base, "raksha.workload: demo", "app: shop", 1),
			[]string{`p.yaml:5:5: selector.metadata.app: unknown field "app" (known: raksha.workload)`}},
		{"empty metadata value", strings.Replace(base, "raksha.workload: demo", `raksha.workload: ""`, 1),
			[]string{`p.yaml:5:22: selector.metadata["raksha.workload"]: is empty`}},
		{"bad exclude regexp", strings.Replace(base, "  project: demo\n", "  project: demo\n  exclude: [\"-tmp$\", \"(cattle\"]\n", 1),
			[]string{"p.yaml:4:22: selector.exclude[1]: \"(cattle\" is not a valid regular expression: missing closing ): `(cattle`"}},
		{"duplicate server ids", strings.Replace(base, "  metadata:\n    raksha.workload: demo\n", "  servers: [a1, b2, a1]\n", 1),
			[]string{`p.yaml:4:21: selector.servers[2]: server "a1" is listed twice (also selector.servers[0])`}},
		{"bad consistency mode", base + "consistency:\n  mode: fuzzy\n",
			[]string{`p.yaml:10:9: consistency.mode: "fuzzy": want app or crash`}},
		{"freeze timeout too long", base + "consistency:\n  freeze_timeout: 1h\n",
			[]string{"p.yaml:10:19: consistency.freeze_timeout: 1h is too long: at most 10m"}},
		{"app options with crash", base + "consistency:\n  mode: crash\n  on_app_failure: crash\n",
			[]string{"p.yaml:11:3: consistency.on_app_failure: applies to mode app only (mode crash does not freeze)"}},
		{"hooks with crash", base + "consistency:\n  mode: crash\nhooks:\n  pre:\n    - path: /bin/sync\n",
			[]string{"p.yaml:11:1: hooks: hooks run around the guest freeze, and consistency mode crash does not freeze: use mode app or drop the hooks"}},
		{"hook without path", base + "hooks:\n  pre:\n    - name: flush\n      timeout: 10s\n",
			[]string{"p.yaml:11:7: hooks.pre[0].path: missing: the program to run in the guest"}},
		{"hook relative path and bad on_failure", base + "hooks:\n  post:\n    - path: bin/resume\n  on_failure: ignore\n",
			[]string{
				`p.yaml:11:13: hooks.post[0].path: "bin/resume": want an absolute path in the guest`,
				`p.yaml:12:15: hooks.on_failure: "ignore": want fail or continue`,
			}},
		{"hooks not a list", base + "hooks:\n  pre: /bin/sync\n",
			[]string{`p.yaml:10:8: hooks.pre: want a list of hooks ({path: /usr/local/bin/flush, args: [...], timeout: 30s}), got "/bin/sync"`}},
		{"negative and non-integer retention", base + "retention:\n  daily: -1\n  weekly: four\n",
			[]string{
				"p.yaml:10:10: retention.daily: -1: must be 0 or more",
				`p.yaml:11:11: retention.weekly: want a whole number, got "four"`,
			}},
		{"expiry too short", base + "retention:\n  expire_after: 10m\n",
			[]string{"p.yaml:10:17: retention.expire_after: 10m is too short: at least 1h"}},
		{"paused not a bool", base + "paused: maybe\n",
			[]string{`p.yaml:9:9: paused: want true or false, got "maybe"`}},
		{"section not a mapping", strings.Replace(base, "schedule:\n  cron: \"0 2 * * *\"\n", "schedule: daily\n", 1),
			[]string{`p.yaml:6:11: schedule: want a mapping of fields, got "daily"`}},
		{"empty value", base + "description:\n",
			[]string{"p.yaml:9:13: description: want a string, got no value"}},
		{"two documents with the same name", base + "---\n" + base,
			[]string{`p.yaml:10:1: name: policy "demo-daily" is also defined at p.yaml:1`}},
		{"empty file", "", []string{"p.yaml: no policy in the file"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tc.yaml))
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("err %v (%T), want a *ValidationError", err, err)
			}
			var got []string
			for _, fe := range ve.Errs {
				got = append(got, fe.Error())
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("errors:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

func TestParseDefaults(t *testing.T) {
	ps, err := Parse("p.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	p := ps[0]
	if p.Workload != "demo" || p.Consistency.Mode != "app" || p.Consistency.OnAppFailure != "fail" ||
		p.Consistency.FreezeTimeout != DefaultFreezeTimeout || p.Schedule.CatchupWindow != DefaultCatchupWindow || p.Paused != nil {
		t.Errorf("defaults: %+v", p)
	}
	// Without a metadata selector the workload defaults to the policy name.
	ps, err = Parse("p.yaml", []byte(strings.Replace(base, "  metadata:\n    raksha.workload: demo\n", "  tag: prod\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if ps[0].Workload != "demo-daily" {
		t.Errorf("workload %q, want the policy name", ps[0].Workload)
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"90s": 90 * time.Second, "7d": 7 * 24 * time.Hour, "2w": 14 * 24 * time.Hour,
		"1d12h": 36 * time.Hour, "400d": 400 * 24 * time.Hour, "1h30m": 90 * time.Minute} {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "7", "d", "-5m", "1dd", "3 days"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) succeeded", in)
		}
	}
}

func TestValidateCron(t *testing.T) {
	for _, ok := range []string{"0 2 * * *", "*/15 * * * *", "0 0-23/6 * * MON-FRI", "30 1 1,15 jan,jul 0", "0 3 * * 7", "@daily", "@weekly"} {
		if err := ValidateCron(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for bad, want := range map[string]string{
		"60 * * * *":       `minute field "60": 60 is out of range 0-59`,
		"0 2 32 * *":       `day of month field "32": 32 is out of range 1-31`,
		"0 2 * * 1-":       `day of week field "1-": "": want a number 0-7 or a name such as SUN`,
		"0 5-2 * * *":      `hour field "5-2": range 5-2 ends before it starts`,
		"*/0 * * * *":      `minute field "*/0": step "0": want a whole number of 1 or more`,
		"0 2 * * * 2026":   "has 6 fields, want 5",
		"@fortnightly":     "unknown macro",
		"TZ=UTC 0 2 * * *": "use the schedule's time_zone field",
	} {
		err := ValidateCron(bad)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err %v, want %q", bad, err, want)
		}
	}
}

// TestExamples checks that every example policy is valid, and what the demo
// example turns into.
func TestExamples(t *testing.T) {
	ps, err := Load("examples")
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*Policy{}
	for _, p := range ps {
		byName[p.Name] = p
	}
	demo := byName["demo-daily"]
	if demo == nil {
		t.Fatalf("no demo-daily among %d examples", len(ps))
	}
	want := workflows.BackupRequest{
		Workload: "demo", Project: "demo", Policy: "demo-daily", Repository: "main",
		Selector:    activities.Selector{Workload: "demo"},
		Consistency: "app", OnAppFailure: "fail", FreezeTimeout: 10 * time.Second,
		Retention:   activities.Retention{Last: 3, Daily: 7, Weekly: 4, Monthly: 6},
		ExpireAfter: 400 * 24 * time.Hour,
		Operator:    true,
	}
	if got := demo.BackupRequest(); !reflect.DeepEqual(got, want) {
		t.Errorf("demo request\n got %+v\nwant %+v", got, want)
	}
	o := demo.ScheduleOptions()
	act := o.Action.(*client.ScheduleWorkflowAction)
	if o.ID != "policy/demo-daily" || o.Overlap != enumspb.SCHEDULE_OVERLAP_POLICY_SKIP || o.CatchupWindow != 2*time.Hour ||
		o.Spec.Jitter != 10*time.Minute || o.Spec.TimeZoneName != "UTC" || !reflect.DeepEqual(o.Spec.CronExpressions, []string{"0 2 * * *"}) ||
		o.Paused || act.ID != "backup/demo/demo" || act.TaskQueue != activities.ControlQueue || act.Memo[MemoExpireAfter] != "400d" {
		t.Errorf("schedule options %+v, action %+v", o, act)
	}
	for _, sa := range []struct {
		key  string
		want string
	}{{"RakshaPolicy", "demo-daily"}, {"RakshaWorkload", "demo"}, {"RakshaProject", "demo"}, {"RakshaOperation", "backup"}} {
		key := temporal.NewSearchAttributeKeyKeyword(sa.key)
		v, ok := act.TypedSearchAttributes.GetKeyword(key)
		if !ok || v != sa.want {
			t.Errorf("action search attribute %s = %q, %v; want %q", sa.key, v, ok, sa.want)
		}
		v, ok = o.TypedSearchAttributes.GetKeyword(key)
		if !ok || v != sa.want {
			t.Errorf("schedule search attribute %s = %q, %v; want %q", sa.key, v, ok, sa.want)
		}
	}

	erp := byName["erp-every-6h"]
	if erp == nil {
		t.Fatal("no erp-every-6h example")
	}
	req := erp.BackupRequest()
	if req.Selector.Stack != "erp-prod" || req.Selector.Exclude != "(?:-scratch$)|(?:^erp-build-)" || req.Selector.Include != "^erp-" ||
		len(req.PreHooks) != 1 || req.PreHooks[0].Timeout != time.Minute || req.PostHooks[0].Timeout != DefaultHookTimeout ||
		req.HookFailure != "fail" || req.OnAppFailure != "crash" {
		t.Errorf("erp request %+v", req)
	}
	dr := byName["demo-drill"]
	if dr == nil || dr.Kind != KindDrill {
		t.Fatal("no demo-drill example")
	}
	if r := dr.DrillRequest(); r.Workload != "demo" || r.Project != "demo" || r.DrillProject != "staging" || r.Networks["lab-net"] != "lab-net-2" ||
		len(r.PostHooks) != 1 || r.HealthCheck == nil || r.HealthCheck.Timeout != 2*time.Minute || r.Timeout != time.Hour {
		t.Errorf("demo-drill request %+v", r)
	}
	eo := erp.ScheduleOptions()
	if len(eo.Spec.Intervals) != 1 || eo.Spec.Intervals[0] != (client.ScheduleIntervalSpec{Every: 6 * time.Hour, Offset: 30 * time.Minute}) ||
		len(eo.Spec.CronExpressions) != 0 || eo.Spec.TimeZoneName != "" {
		t.Errorf("erp spec %+v", eo.Spec)
	}
}

func TestLoadDirectoryCollectsAllErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(base), 0o644)
	os.WriteFile(filepath.Join(dir, "b.yml"), []byte(base), 0o644)                                                              // same name again
	os.WriteFile(filepath.Join(dir, "c.yaml"), []byte(strings.Replace(base, "name: demo-daily", "name: c", 1)+"x: 1\n"), 0o644) // unknown field
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not a policy"), 0o644)
	_, err := Load(dir)
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Errs) != 2 {
		t.Fatalf("err %v", err)
	}
	msg := err.Error()
	for _, want := range []string{filepath.Join(dir, "b.yml") + `:1:1: name: policy "demo-daily" is also defined at ` + filepath.Join(dir, "a.yaml") + ":1",
		filepath.Join(dir, "c.yaml") + `:9:1: x: unknown field "x"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("error\n%s\nlacks %q", msg, want)
		}
	}
	if _, err := Load(filepath.Join(dir, "missing")); err == nil {
		t.Error("loading a missing path succeeded")
	}
}

// TestParseMaintenancePolicy: a maintenance policy gets its defaults, and its
// schedule starts RepositoryMaintenance on the control queue under the
// repository's fixed workflow id; backup fields in it are refused by name.
func TestParseMaintenancePolicy(t *testing.T) {
	ps, err := Parse("m.yaml", []byte(`kind: maintenance
name: main-weekly
schedule:
  cron: "0 4 * * 0"
repository: main
maintenance:
  gc_grace: 2h
`))
	if err != nil {
		t.Fatal(err)
	}
	p := ps[0]
	want := workflows.MaintenanceRequest{Repository: "main", PruneExpired: true, GC: true, GCGrace: 2 * time.Hour, Verify: "check"}
	if got := p.MaintenanceRequest(); got != want {
		t.Errorf("request %+v, want %+v", got, want)
	}
	act := p.ScheduleOptions().Action.(*client.ScheduleWorkflowAction)
	if act.ID != "maintenance/main" || act.TaskQueue != activities.ControlQueue || act.Args[0] != want {
		t.Errorf("action %+v", act)
	}
	if reflect.ValueOf(act.Workflow).Pointer() != reflect.ValueOf(workflows.RepositoryMaintenance).Pointer() {
		t.Errorf("action workflow %T, want RepositoryMaintenance", act.Workflow)
	}

	ps, err = Parse("m.yaml", []byte(`kind: maintenance
name: main-verify
schedule:
  every: 24h
repository: main
maintenance:
  prune_expired: false
  gc: false
  verify: full
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := ps[0].MaintenanceRequest(); got != (workflows.MaintenanceRequest{Repository: "main", Verify: "full"}) {
		t.Errorf("request %+v", got)
	}

	_, err = Parse("m.yaml", []byte("kind: maintenance\nname: m\nschedule:\n  every: 1h\nrepository: main\nselector:\n  tag: x\nmaintenance:\n  verify: deep\n"))
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v, want a ValidationError", err)
	}
	msg := err.Error()
	for _, w := range []string{"m.yaml:6:1: selector: a maintenance policy backs up nothing", `m.yaml:9:11: maintenance.verify: "deep"`} {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not contain %q", msg, w)
		}
	}
	_, err = Parse("m.yaml", []byte(base+"maintenance:\n  gc: true\n"))
	if err == nil || !strings.Contains(err.Error(), "only a policy of kind maintenance has a maintenance section") {
		t.Errorf("maintenance section in a backup policy: %v", err)
	}
}

// TestPolicyLabels: a policy's user labels reach every run's request, and
// its runs are marked as the operator's (a policy is the operator's file).
func TestPolicyLabels(t *testing.T) {
	ps, err := Parse("p.yaml", []byte(base+"labels:\n  team: shop\n  env: prod\n"))
	if err != nil {
		t.Fatal(err)
	}
	req := ps[0].BackupRequest()
	if req.Labels["team"] != "shop" || req.Labels["env"] != "prod" || len(req.Labels) != 2 {
		t.Errorf("labels %v", req.Labels)
	}
	if !req.Operator {
		t.Error("a policy's run is not marked operator")
	}
}

// drillBase is a valid drill policy; cases replace or add lines.
const drillBase = `kind: drill
name: demo-drill
workload: demo
project: demo
repository: main
schedule:
  every: 24h
drill:
  project: staging
  health_check:
    path: /bin/sh
    args: ["-c", "guestapp check /data/*"]
`

// TestParseDrillPolicy: a drill policy gets its defaults, and its schedule
// starts RestoreDrill on the control queue under the workload's drill id
// with the drill's search attributes; what is wrong is named by field.
func TestParseDrillPolicy(t *testing.T) {
	ps, err := Parse("d.yaml", []byte(drillBase+"  vms: [demo-1]\n  networks:\n    lab-net: lab-net-2\n  post_hooks:\n    - path: /bin/mask\n"))
	if err != nil {
		t.Fatal(err)
	}
	p := ps[0]
	hc := activities.Hook{Path: "/bin/sh", Args: []string{"-c", "guestapp check /data/*"}, Timeout: DefaultHookTimeout}
	want := workflows.DrillRequest{Workload: "demo", Project: "demo", Policy: "demo-drill", Repository: "main", DrillProject: "staging", Operator: true,
		VMs: []string{"demo-1"}, Networks: map[string]string{"lab-net": "lab-net-2"}, PostHooks: []activities.Hook{{Path: "/bin/mask", Timeout: DefaultHookTimeout}},
		HealthCheck: &hc, Timeout: DefaultDrillTimeout}
	if got := p.DrillRequest(); !reflect.DeepEqual(got, want) {
		t.Errorf("request\n got %+v\nwant %+v", got, want)
	}
	o := p.ScheduleOptions()
	act := o.Action.(*client.ScheduleWorkflowAction)
	if act.ID != "drill/demo" || act.TaskQueue != activities.ControlQueue || !reflect.DeepEqual(act.Args[0], want) {
		t.Errorf("action %+v", act)
	}
	if reflect.ValueOf(act.Workflow).Pointer() != reflect.ValueOf(workflows.RestoreDrill).Pointer() {
		t.Errorf("action workflow %T, want RestoreDrill", act.Workflow)
	}
	for _, sa := range [][2]string{{"RakshaPolicy", "demo-drill"}, {"RakshaWorkload", "demo"}, {"RakshaOperation", "drill"}, {"RakshaProject", "staging"}} {
		if v, ok := act.TypedSearchAttributes.GetKeyword(temporal.NewSearchAttributeKeyKeyword(sa[0])); !ok || v != sa[1] {
			t.Errorf("action search attribute %s = %q, %v; want %q", sa[0], v, ok, sa[1])
		}
	}

	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"missing drill section and workload", "kind: drill\nname: d\nrepository: main\nschedule:\n  every: 1h\n",
			[]string{"d.yaml:1:1: workload: missing (a drill policy needs name, workload, schedule, repository and drill)",
				"d.yaml:1:1: drill: missing (a drill policy needs name, workload, schedule, repository and drill)"}},
		{"no health check, no project", drillBase[:strings.Index(drillBase, "  project: staging")] + "  timeout: 1h\n",
			[]string{"d.yaml:9:3: drill.project: missing: the project the drill clones into",
				"d.yaml:9:3: drill.health_check: missing: the program that says, in every guest of the clone, whether it is healthy (exit 0)"}},
		{"drill into the workload's own project", strings.Replace(drillBase, "project: staging", "project: demo", 1),
			[]string{`d.yaml:9:3: drill.project: "demo" is the workload's own project: a drill clones into a separate drill project`}},
		{"health check relative path", strings.Replace(drillBase, "path: /bin/sh", "path: bin/sh", 1),
			[]string{`d.yaml:11:11: drill.health_check.path: "bin/sh": want an absolute path in the guest`}},
		{"health check as a list", strings.Replace(drillBase, "  health_check:\n    path: /bin/sh\n", "  health_check:\n  - path: /bin/sh\n", 1),
			[]string{"d.yaml:11:3: drill.health_check: want one hook ({path: /usr/local/bin/check, args: [...], timeout: 2m}), got a list"}},
		{"timeout too short", drillBase + "  timeout: 10s\n",
			[]string{"d.yaml:13:12: drill.timeout: 10s is too short: at least 1m"}},
		{"vm listed twice", drillBase + "  vms: [a, a]\n",
			[]string{`d.yaml:13:12: drill.vms[1]: VM "a" is listed twice (also drill.vms[0])`}},
		{"network remap to nothing", drillBase + "  networks:\n    lab-net:\n",
			[]string{"d.yaml:14:13: drill.networks.lab-net: want a string, got no value"}},
		{"backup fields in a drill", drillBase + "retention:\n  daily: 7\nselector:\n  tag: x\n",
			[]string{"d.yaml:13:1: retention: a drill policy backs up nothing: retention belongs to a backup policy (a drill takes the newest backup of its workload)",
				"d.yaml:15:1: selector: a drill policy backs up nothing: selector belongs to a backup policy (a drill takes the newest backup of its workload)"}},
		{"drill section in a backup policy", base + "drill:\n  project: x\n  health_check: {path: /x}\n",
			[]string{"p.yaml:9:1: drill: only a policy of kind drill has a drill section (add kind: drill, or drop it)"}},
		{"project in a backup policy", base + "project: demo\n",
			[]string{"p.yaml:9:1: project: a backup policy names its project as selector.project"}},
		{"unknown drill field", drillBase + "  helth_check: {path: /x}\n",
			[]string{`d.yaml:13:3: drill.helth_check: unknown field "helth_check"; did you mean "health_check"?`}},
	}
	for _, c := range cases {
		file := "d.yaml"
		if !strings.HasPrefix(c.yaml, "kind: drill") {
			file = "p.yaml"
		}
		_, err := Parse(file, []byte(c.yaml))
		var ve *ValidationError
		if !errors.As(err, &ve) {
			t.Errorf("%s: error %v, want a ValidationError", c.name, err)
			continue
		}
		var got []string
		for _, fe := range ve.Errs {
			got = append(got, fe.Error())
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, c.want)
		}
	}
}
