package policies

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// FuzzParse reads fuzzed policy YAML (policy files come from users and
// from version control, not from a trusted source). It must never panic;
// a rejection is a *ValidationError whose every entry names the file and
// says what is wrong; an accepted policy is complete, its selectors
// compile, and it survives its JSON form (which Digest hashes) unchanged.
func FuzzParse(f *testing.F) {
	examples, _ := filepath.Glob(filepath.Join("examples", "*.yaml"))
	for _, p := range examples {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(base))
	f.Add([]byte(base + "---\n" + strings.Replace(base, "demo-daily", "other", 1)))
	f.Add([]byte(strings.Replace(base, `cron: "0 2 * * *"`, "every: 1h\n  offset: 90m", 1)))
	f.Add([]byte(base + "retention:\n  expire_after: 400d\n  last: 3\n"))
	f.Add([]byte(base + "hooks:\n  pre: &h\n    - path: /bin/a\n      args: [x]\n  post: *h\n"))
	f.Add([]byte("name: [unclosed\n"))
	f.Add([]byte(drillBase + "  networks: {a: b}\n  vms: [x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := Parse("p.yaml", data)
		if err != nil {
			checkValidationError(t, err)
			return
		}
		if len(ps) == 0 {
			t.Fatal("no policy and no error")
		}
		for _, p := range ps {
			checkPolicy(t, p)
		}
	})
}

// checkValidationError fails unless err lists field errors that name the
// file and say something.
func checkValidationError(t *testing.T, err error) {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Errs) == 0 {
		t.Fatalf("error %q is not a *ValidationError with entries", err)
	}
	for _, fe := range ve.Errs {
		if fe.File != "p.yaml" || fe.Msg == "" || fe.Line < 0 || fe.Column < 0 {
			t.Fatalf("field error %+v does not name the file and what is wrong", fe)
		}
	}
}

// checkPolicy checks what an accepted policy must hold.
func checkPolicy(t *testing.T, p *Policy) {
	t.Helper()
	switch p.Kind {
	case KindMaintenance:
		if p.Name == "" || p.Repository == "" || p.Workload != "" || p.Maintenance == nil {
			t.Fatalf("accepted a maintenance policy without name, repository or what it does, or with a workload: %+v", p)
		}
		if v := p.MaintenanceRequest().Verify; v != "" && v != "check" && v != "full" {
			t.Fatalf("accepted a maintenance policy with verify %q", v)
		}
	case KindBackup:
		if p.Name == "" || p.Repository == "" || p.Workload == "" {
			t.Fatalf("accepted a policy without name, repository or workload: %+v", p)
		}
	case KindDrill:
		dr := p.Drill
		if p.Name == "" || p.Repository == "" || p.Workload == "" || dr == nil || dr.Project == "" || !strings.HasPrefix(dr.HealthCheck.Path, "/") ||
			dr.Project == p.Project || dr.Timeout < time.Minute {
			t.Fatalf("accepted a drill policy without name, repository, workload, drill project, health check or timeout, or into its own project: %+v", p)
		}
		if req := p.DrillRequest(); req.HealthCheck == nil || req.DrillProject != dr.Project {
			t.Fatalf("drill request %+v of policy %+v", req, p)
		}
	default:
		t.Fatalf("accepted a policy of kind %q", p.Kind)
	}
	req := p.BackupRequest()
	for _, re := range []string{req.Selector.Include, req.Selector.Exclude} {
		if _, err := regexp.Compile(re); err != nil {
			t.Fatalf("accepted a selector whose regular expression %q does not compile: %v", re, err)
		}
	}
	_ = p.ScheduleOptions()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back Policy
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("policy JSON %s does not decode: %v", b, err)
	}
	if b2, _ := json.Marshal(&back); !bytes.Equal(b, b2) {
		t.Fatalf("policy does not survive JSON:\n%s\n%s", b, b2)
	}
	back.File, back.Line, back.Column = p.File, p.Line, p.Column
	if back.Digest() != p.Digest() {
		t.Fatal("digest changes after a JSON round trip")
	}
}

// FuzzParseDuration parses fuzzed durations (7d, 1h30m): never a panic,
// never a negative duration, and what is accepted reads back the same
// from FormatDuration's spelling.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"7d", "2w", "1d12h", "90s", "1h30m", "400d", "0s", "36600d", "15250w", "106751d23h47m16.854775807s", "1.5h", "-1h", "3600"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			if !strings.Contains(err.Error(), "is not a duration") {
				t.Fatalf("error %q does not say what is wrong", err)
			}
			return
		}
		if d < 0 {
			t.Fatalf("%q parsed as a negative duration %v", s, d)
		}
		if want := daysValue(s); want != nil && want.Cmp(big.NewInt(int64(d))) != 0 {
			t.Fatalf("%q parsed as %v (%d ns), not %s ns", s, d, d, want)
		}
		back, err := ParseDuration(FormatDuration(d))
		if err != nil || back != d {
			t.Fatalf("%q is %v, spelled %q, which reads back as %v, %v", s, d, FormatDuration(d), back, err)
		}
	})
}

// daysValue computes what a duration spelled with days or weeks is, in
// nanoseconds without overflow (nil for another spelling).
func daysValue(s string) *big.Int {
	m := dayDuration.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return nil
	}
	n, ok := new(big.Int).SetString(m[1], 10)
	if !ok {
		return nil
	}
	unit := int64(24 * time.Hour)
	if m[2] == "w" {
		unit *= 7
	}
	n.Mul(n, big.NewInt(unit))
	if m[3] != "" {
		v, err := time.ParseDuration(m[3])
		if err != nil {
			return nil
		}
		n.Add(n, big.NewInt(int64(v)))
	}
	return n
}
