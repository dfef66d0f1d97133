// Package chaos records the outcome of chaos scenarios (faults injected into
// real components: killed workers, a killed Temporal server, S3 faults, full
// disks) as rows of the chaos report, integration/CHAOS.md.
//
// A scenario test repeats its fault Rounds times with randomized timing,
// checks the promises after each round, and calls Record once with the
// totals. Record always logs the row; when RAKSHA_CHAOS_REPORT names a file
// (make chaos sets it), it also appends the row there as one JSON line, and
// the report command (package report) renders the file as CHAOS.md.
package chaos

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// ReportEnv names the file rows are appended to.
const ReportEnv = "RAKSHA_CHAOS_REPORT"

// RoundsEnv overrides every scenario's number of rounds (make chaos sets it
// higher than the default that make test runs).
const RoundsEnv = "RAKSHA_CHAOS_ROUNDS"

// Row is one scenario's outcome. The promises are the zero columns:
// GuestsLeftFrozen, BytesLost, WronglyGood and Orphans must all be 0.
type Row struct {
	Scenario string `json:"scenario"`
	// Components says what was real (e.g. "dev server (sqlite), QEMU + qemu-ga, radosgw").
	Components string `json:"components"`
	Rounds     int    `json:"rounds"`
	// Completed counts rounds whose operation completed (after retries or a
	// restart); FailedCleanly those that failed with a clear error and
	// nothing half-written visible.
	Completed     int `json:"completed"`
	FailedCleanly int `json:"failed_cleanly"`
	// GuestsLeftFrozen counts guests found frozen after a round ended.
	GuestsLeftFrozen int `json:"guests_left_frozen"`
	// BytesLost counts bytes of committed backups that did not restore
	// identically (or of a restore target that differs from its backup).
	BytesLost int64 `json:"bytes_lost"`
	// WronglyGood counts backups reported good that are not.
	WronglyGood int `json:"wrongly_good"`
	// Orphans counts things left behind: snapshots, bitmaps, libvirt jobs,
	// volumes, servers, temporary objects.
	Orphans int `json:"orphans"`
	// Recover is the slowest time from the fault's end (restart, fault
	// lifted) to the operation completing or failing.
	Recover time.Duration `json:"recover_ns"`
	// Notes says what was injected and anything worth knowing.
	Notes string `json:"notes,omitempty"`
}

var mu sync.Mutex // serialises appends to the report file within a process

// Record logs the row, appends it to the report file if one is set, and
// fails the test if any promise column is not zero.
func Record(t testing.TB, r Row) {
	t.Helper()
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("chaos row: %s", data)
	if path := os.Getenv(ReportEnv); path != "" {
		mu.Lock()
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err == nil {
			_, err = f.Write(append(data, '\n'))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		mu.Unlock()
		if err != nil {
			t.Errorf("chaos report %s: %v", path, err)
		}
	}
	if r.GuestsLeftFrozen != 0 || r.BytesLost != 0 || r.WronglyGood != 0 || r.Orphans != 0 {
		t.Errorf("chaos %s broke a promise: %d guests left frozen, %d bytes lost, %d backups wrongly reported good, %d orphans",
			r.Scenario, r.GuestsLeftFrozen, r.BytesLost, r.WronglyGood, r.Orphans)
	}
	if r.Completed+r.FailedCleanly != r.Rounds {
		t.Errorf("chaos %s: %d rounds, but %d completed and %d failed cleanly", r.Scenario, r.Rounds, r.Completed, r.FailedCleanly)
	}
}

// Rounds is how many rounds a scenario runs: RAKSHA_CHAOS_ROUNDS if set,
// else def.
func Rounds(t testing.TB, def int) int {
	t.Helper()
	if s := os.Getenv(RoundsEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", RoundsEnv, s)
		}
		return n
	}
	return def
}

// Jitter returns a random duration in [lo, hi): the randomized timing of a
// fault. The seed is logged so that a failing round can be replayed.
func Jitter(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(rng.Int64N(int64(hi-lo)))
}

// NewRand returns a generator seeded from RAKSHA_CHAOS_SEED or the clock,
// and logs the seed.
func NewRand(t testing.TB) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("RAKSHA_CHAOS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("RAKSHA_CHAOS_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("chaos seed %d (RAKSHA_CHAOS_SEED=%d replays it)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))
}

// String renders a duration for the report.
func fmtDur(d time.Duration) string {
	if d == 0 {
		return "—"
	}
	return d.Round(100 * time.Millisecond).String()
}

// Markdown renders rows as the report's table.
func Markdown(rows []Row) string {
	s := "| scenario | real components | rounds | completed | failed cleanly | guests left frozen | bytes lost | wrongly reported good | orphans | slowest recovery | notes |\n"
	s += "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
	for _, r := range rows {
		s += fmt.Sprintf("| %s | %s | %d | %d | %d | %d | %d | %d | %d | %s | %s |\n", r.Scenario, r.Components, r.Rounds,
			r.Completed, r.FailedCleanly, r.GuestsLeftFrozen, r.BytesLost, r.WronglyGood, r.Orphans, fmtDur(r.Recover), r.Notes)
	}
	return s
}
