package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Record is one row of results (one line of results.jsonl).
type Record struct {
	Name    string `json:"name"`
	Tool    string `json:"tool"`              // raksha, restic, kopia
	Op      string `json:"op"`                // full, incr, restore
	Pattern string `json:"pattern,omitempty"` // clustered, scattered
	Variant string `json:"variant,omitempty"` // extents, no-extents
	Chunk   string `json:"chunk,omitempty"`   // Raksha chunk size
	Image   string `json:"image,omitempty"`   // main, big
	Status  string `json:"status"`            // ok, failed, skipped
	Note    string `json:"note,omitempty"`

	ExitCode  int     `json:"exit_code"`
	SizeBytes int64   `json:"size_bytes"` // logical bytes of the image: MB/s = SizeBytes / wall
	WallS     float64 `json:"wall_s"`
	// WallSyncedS is WallS plus a sync(2) run right after the command
	// exited: its time up to a final sync, with its writes on the disk.
	// 0 in records made before it was measured.
	WallSyncedS float64 `json:"wall_synced_s,omitempty"`
	CPUS        float64 `json:"cpu_s"`
	Rchar       int64   `json:"rchar"`        // /proc/PID/io rchar at the exit stop
	RcharReaped int64   `json:"rchar_reaped"` // cross-check (see ExecResult)
	ExitSeen    bool    `json:"exit_seen"`
	ReadBytes   int64   `json:"read_bytes"` // storage reads (/proc/PID/io read_bytes)
	// Stats the tool itself printed (Raksha's JSON "stats" object).
	ToolStats     map[string]any `json:"tool_stats,omitempty"`
	ToolBytesRead *int64         `json:"tool_bytes_read,omitempty"`
	StoredBytes   *int64         `json:"stored_bytes,omitempty"` // repository growth (apparent bytes)
	MaxRSSKB      int64          `json:"maxrss_kb"`              // /usr/bin/time -v "Maximum resident set size"
	MaxRSSKBWait4 int64          `json:"maxrss_kb_wait4"`        // cross-check from the wrapper's wait4
	Verified      string         `json:"verified,omitempty"`     // restore compared with the source image
	Log           string         `json:"log,omitempty"`
	At            string         `json:"at"`
	Round         int            `json:"round"`
	Load1         float64        `json:"load1"` // 1-minute load average when the command started

	// Set only on the aggregates the report builds over rounds.
	Rounds   int     `json:"-"`
	OkRounds int     `json:"-"`
	WallMin  float64 `json:"-"`
	WallMax  float64 `json:"-"`
	// SyncedMin, SyncedMax: the range of WallSyncedS (0 when any ok round
	// lacks it).
	SyncedMin float64 `json:"-"`
	SyncedMax float64 `json:"-"`
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func recordFlags(fs *flag.FlagSet, r *Record) {
	fs.StringVar(&r.Name, "name", "", "row name (unique per run)")
	fs.StringVar(&r.Tool, "tool", "", "tool")
	fs.StringVar(&r.Op, "op", "", "operation: full, incr, restore")
	fs.StringVar(&r.Pattern, "pattern", "", "change pattern")
	fs.StringVar(&r.Variant, "variant", "", "variant")
	fs.StringVar(&r.Chunk, "chunk", "", "chunk size")
	fs.StringVar(&r.Image, "image", "main", "image: main or big")
	fs.StringVar(&r.Note, "note", "", "note")
	fs.Int64Var(&r.SizeBytes, "size", 0, "logical bytes processed (image size)")
	fs.IntVar(&r.Round, "round", 1, "round number")
}

func appendRecord(path string, r *Record) error {
	if r.At == "" {
		r.At = time.Now().UTC().Format(time.RFC3339)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write(append(b, '\n'))
	return err
}

func readRecords(path string) ([]*Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []*Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		r := new(Record)
		if err := json.Unmarshal([]byte(line), r); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

// cmdRecord appends a row without running anything: used for tools that were
// skipped or could not run, so that no row disappears silently.
func cmdRecord(args []string) error {
	fs := flag.NewFlagSet("record", flag.ExitOnError)
	var r Record
	results := fs.String("results", "", "results.jsonl to append to")
	recordFlags(fs, &r)
	fs.StringVar(&r.Status, "status", "skipped", "status")
	fs.Parse(args)
	if *results == "" || r.Name == "" {
		return fmt.Errorf("-results and -name are required")
	}
	return appendRecord(*results, &r)
}

// cmdAnnotate sets fields (verified=..., note=..., status=...) of the last record named NAME.
func cmdAnnotate(args []string) error {
	fs := flag.NewFlagSet("annotate", flag.ExitOnError)
	results := fs.String("results", "", "results.jsonl")
	name := fs.String("name", "", "record name")
	round := fs.Int("round", 0, "round number (0: any)")
	var sets multiFlag
	fs.Var(&sets, "set", "KEY=VALUE (verified, note, status); repeatable")
	fs.Parse(args)
	recs, err := readRecords(*results)
	if err != nil {
		return err
	}
	var target *Record
	for _, r := range recs {
		if r.Name == *name && (*round == 0 || r.Round == *round) {
			target = r
		}
	}
	if target == nil {
		return fmt.Errorf("no record named %q in %s", *name, *results)
	}
	for _, kv := range sets {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "verified":
			target.Verified = v
		case "note":
			if target.Note != "" && v != "" {
				target.Note += "; " + v
			} else {
				target.Note = v
			}
		case "status":
			target.Status = v
		default:
			return fmt.Errorf("annotate: unknown key %q", k)
		}
	}
	tmp := *results + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	for _, r := range recs {
		b, _ := json.Marshal(r)
		f.Write(append(b, '\n'))
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, *results)
}

// cmdMeasure runs CMD as `/usr/bin/time -v benchtool exec -- CMD`, with stdout
// and stderr to files, measures repository growth, and appends a Record. Its
// exit status is CMD's.
func cmdMeasure(args []string) error {
	fs := flag.NewFlagSet("measure", flag.ExitOnError)
	var r Record
	recordFlags(fs, &r)
	results := fs.String("results", "", "results.jsonl to append to")
	stdoutPath := fs.String("stdout", "", "file for CMD's stdout (default: LOG.out)")
	logPath := fs.String("log", "", "file for CMD's stderr")
	timeBin := fs.String("time", "/usr/bin/time", "GNU time binary")
	timeout := fs.Duration("timeout", 0, "kill CMD after this long (recorded as failed); 0 = never")
	doSync := fs.Bool("sync", true, "also time a sync(2) right after CMD exits (wall_synced_s)")
	var repos multiFlag
	fs.Var(&repos, "repo", "directory whose growth is the bytes stored; repeatable")
	fs.Parse(args)
	argv := fs.Args()
	if *results == "" || r.Name == "" || *logPath == "" || len(argv) == 0 {
		return fmt.Errorf("usage: benchtool measure -results F -name N -log F [flags] -- CMD [ARG]")
	}
	if *stdoutPath == "" {
		*stdoutPath = *logPath + ".out"
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	r.Log = *logPath
	// Whatever goes wrong from here on, the row is recorded.
	fail := func(err error) error {
		r.Status, r.ExitCode = "failed", -1
		r.Note = joinNote(r.Note, "benchtool: "+err.Error())
		if aerr := appendRecord(*results, &r); aerr != nil {
			return aerr
		}
		return err
	}
	for _, p := range []string{*logPath, *stdoutPath} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fail(err)
		}
	}

	var before int64
	for _, d := range repos {
		n, err := apparentSize(d)
		if err != nil {
			return fail(fmt.Errorf("sizing %s: %w", d, err))
		}
		before += n
	}

	r.Load1 = loadavg1()
	timeOut := *logPath + ".time"
	execOut := *logPath + ".exec.json"
	os.Remove(timeOut)
	os.Remove(execOut)
	full := append([]string{"-v", "-o", timeOut, self, "exec", "-o", execOut, "-timeout", timeout.String(), "-sync=" + strconv.FormatBool(*doSync), "--"}, argv...)
	c := exec.Command(*timeBin, full...)
	so, err := os.Create(*stdoutPath)
	if err != nil {
		return fail(err)
	}
	defer so.Close()
	se, err := os.Create(*logPath)
	if err != nil {
		return fail(err)
	}
	defer se.Close()
	c.Stdin, c.Stdout, c.Stderr = nil, so, se
	runErr := c.Run()
	so.Sync()
	se.Sync()

	var er ExecResult
	if b, err := os.ReadFile(execOut); err == nil {
		json.Unmarshal(b, &er)
	}
	r.MaxRSSKB = parseTimeV(timeOut)
	r.MaxRSSKBWait4 = er.MaxRSSKB
	r.ExitCode = er.ExitCode
	r.WallS = float64(er.WallNS) / 1e9
	if er.SyncNS > 0 {
		r.WallSyncedS = float64(er.WallNS+er.SyncNS) / 1e9
	}
	r.CPUS = float64(er.UserNS+er.SysNS) / 1e9
	r.Rchar = er.RcharExit
	r.RcharReaped = er.RcharReaped
	r.ExitSeen = er.ExitSeen
	r.ReadBytes = er.ReadBytesExit
	switch {
	case er.WallNS == 0:
		r.Status = "failed"
		r.ExitCode = -1
		r.Note = joinNote(r.Note, fmt.Sprintf("could not run: %v; %s", runErr, lastLine(*logPath)))
	case er.ExitCode != 0:
		r.Status = "failed"
		what := fmt.Sprintf("exit %d", er.ExitCode)
		if er.Signal != "" {
			what = "killed by " + er.Signal
		}
		if er.TimedOut {
			what = fmt.Sprintf("timed out after %s, killed", *timeout)
		}
		if l := lastLine(*logPath); l != "" {
			what += ": " + l
		}
		r.Note = joinNote(r.Note, what)
	default:
		r.Status = "ok"
	}
	if len(repos) > 0 {
		var after int64
		for _, d := range repos {
			n, err := apparentSize(d)
			if err == nil {
				after += n
			}
		}
		g := after - before
		r.StoredBytes = &g
	}
	if data, err := os.ReadFile(*stdoutPath); err == nil {
		if v, ok := lookupJSON(data, "stats"); ok {
			if m, isMap := v.(map[string]any); isMap {
				r.ToolStats = m
				if br, isNum := m["bytes_read"].(float64); isNum {
					n := int64(br)
					r.ToolBytesRead = &n
				}
			}
		}
	}
	if err := appendRecord(*results, &r); err != nil {
		return err
	}
	stored := "-"
	if r.StoredBytes != nil {
		stored = fmtMiB(*r.StoredBytes)
	}
	fmt.Fprintf(os.Stderr, "  %-34s %-6s %8.2fs (synced %6.2fs)  read %10s  stored %10s  rss %7.1f MiB\n",
		r.Name, r.Status, r.WallS, r.WallSyncedS, fmtMiB(r.Rchar), stored, float64(r.MaxRSSKB)/1024)
	if r.Status != "ok" {
		fmt.Fprintf(os.Stderr, "    -> %s (log: %s)\n", r.Note, *logPath)
		if r.ExitCode > 0 {
			return exitError(r.ExitCode)
		}
		return exitError(1)
	}
	return nil
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// lastLine returns the last non-empty line of a file, shortened.
func lastLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l != "" && !strings.HasPrefix(l, "Command exited with non-zero status") && !strings.HasPrefix(l, "Command terminated by signal") {
			if len(l) > 160 {
				l = l[:160] + "…"
			}
			return l
		}
	}
	return ""
}

func parseTimeV(path string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if ok && k == "Maximum resident set size (kbytes)" {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// apparentSize sums the sizes of the regular files under path (du --apparent-size -b for files).
func apparentSize(path string) (int64, error) {
	var total int64
	err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) && p == path {
				return filepath.SkipAll
			}
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				if os.IsNotExist(err) {
					return nil
				}
				return err
			}
			total += info.Size()
		}
		return nil
	})
	return total, err
}

func cmdDu(args []string) error {
	var total int64
	for _, p := range args {
		n, err := apparentSize(p)
		if err != nil {
			return err
		}
		total += n
	}
	fmt.Println(total)
	return nil
}

func fmtMiB(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

func loadavg1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
