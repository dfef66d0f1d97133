package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"
)

// cmdReport turns results.jsonl into the markdown report (tables, machine,
// targets), prints it and writes it to -md.
func cmdReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	results := fs.String("results", "", "results.jsonl")
	md := fs.String("md", "", "write the markdown report here")
	workdir := fs.String("workdir", ".", "directory whose file system's free space is reported")
	strip := fs.String("strip", "", "remove this path prefix (the checkout's root + /) wherever it appears, so no absolute paths land in the report")
	var metas multiFlag
	fs.Var(&metas, "meta", "KEY=VALUE shown in the setup section; repeatable (key 'problem' adds to the problems list)")
	fs.Parse(args)
	recs, err := readRecords(*results)
	if err != nil {
		return err
	}
	var b strings.Builder
	writeReport(&b, recs, metas, *workdir)
	text := b.String()
	if *strip != "" {
		text = strings.ReplaceAll(text, *strip, "")
	}
	fmt.Print(text)
	if *md != "" {
		return os.WriteFile(*md, []byte(text), 0o644)
	}
	return nil
}

func mbps(r *Record) string {
	if r.OkRounds == 0 || r.WallS <= 0 || r.SizeBytes <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", float64(r.SizeBytes)/1e6/r.WallS)
}

func mib(n int64) string { return fmt.Sprintf("%.1f", float64(n)/(1<<20)) }

func mibp(p *int64) string {
	if p == nil {
		return "–"
	}
	return mib(*p)
}

func caseName(r *Record) string {
	switch r.Op {
	case "full":
		return "full backup"
	case "incr":
		return "incremental, " + r.Pattern
	case "restore":
		return "restore"
	}
	return r.Op
}

func toolName(r *Record) string {
	n := r.Tool
	switch r.Variant {
	case "extents":
		n += " --changed-extents"
	case "no-extents":
		n += " (no extents)"
	case "":
	default:
		n += " (" + r.Variant + ")"
	}
	return n
}

func status(r *Record) string {
	s := r.Status
	if r.Verified != "" {
		s += ", restore " + r.Verified
	}
	return s
}

func notes(r *Record) string {
	n := r.Note
	return strings.ReplaceAll(n, "|", "/")
}

func wall(r *Record) string {
	if r.Status == "skipped" || (r.Rounds > 0 && r.OkRounds == 0) {
		return "–"
	}
	if r.OkRounds > 1 {
		return fmt.Sprintf("%.2f (%.2f–%.2f)", r.WallS, r.WallMin, r.WallMax)
	}
	return fmt.Sprintf("%.2f", r.WallS)
}

// wallSynced is the wall + sync cell: median (min–max), or – when the
// records have no synced figure.
func wallSynced(r *Record) string {
	if r.OkRounds == 0 || r.WallSyncedS <= 0 {
		return "–"
	}
	if r.OkRounds > 1 {
		return fmt.Sprintf("%.2f (%.2f–%.2f)", r.WallSyncedS, r.SyncedMin, r.SyncedMax)
	}
	return fmt.Sprintf("%.2f", r.WallSyncedS)
}

func rchar(r *Record) string {
	if r.Status == "skipped" || (!r.ExitSeen && r.Rchar == 0) {
		return "–"
	}
	return mib(r.Rchar)
}

func rss(r *Record) string {
	if r.Status == "skipped" || r.MaxRSSKB == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", float64(r.MaxRSSKB)/1024)
}

func row(b *strings.Builder, cells ...string) {
	b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
}

// aggregate folds the rounds of each row (same name) into one record: median
// wall, CPU, bytes read and stored; min and max wall; the largest peak RSS.
// Failed or skipped rounds are counted and their notes kept.
func aggregate(recs []*Record) []*Record {
	var order []string
	by := map[string][]*Record{}
	for _, r := range recs {
		if _, seen := by[r.Name]; !seen {
			order = append(order, r.Name)
		}
		by[r.Name] = append(by[r.Name], r)
	}
	var out []*Record
	for _, name := range order {
		rs := by[name]
		var ok []*Record
		notes := map[string]bool{}
		var noteList []string
		verified := map[string]bool{}
		var maxRSS, maxRSSw int64
		for _, r := range rs {
			if r.Status == "ok" {
				ok = append(ok, r)
			}
			if r.Note != "" && !notes[r.Note] {
				notes[r.Note] = true
				noteList = append(noteList, r.Note)
			}
			if r.Verified != "" {
				verified[r.Verified] = true
			}
			maxRSS = max(maxRSS, r.MaxRSSKB)
			maxRSSw = max(maxRSSw, r.MaxRSSKBWait4)
		}
		base := rs[0]
		if len(ok) > 0 {
			base = ok[0]
		}
		a := *base
		a.Rounds, a.OkRounds = len(rs), len(ok)
		a.Note = strings.Join(noteList, "; ")
		a.MaxRSSKB, a.MaxRSSKBWait4 = maxRSS, maxRSSw
		var vs []string
		for v := range verified {
			vs = append(vs, v)
		}
		sort.Strings(vs)
		a.Verified = strings.Join(vs, "/")
		switch {
		case len(ok) == len(rs):
			a.Status = "ok"
		case len(ok) == 0:
			a.Status = rs[len(rs)-1].Status
			for _, r := range rs {
				if r.Status == "failed" {
					a.Status = "failed"
				}
			}
		default:
			a.Status = fmt.Sprintf("ok in %d of %d rounds", len(ok), len(rs))
		}
		if len(ok) > 0 {
			walls := make([]float64, len(ok))
			for i, r := range ok {
				walls[i] = r.WallS
			}
			a.WallS = medianF(walls)
			sort.Float64s(walls)
			a.WallMin, a.WallMax = walls[0], walls[len(walls)-1]
			a.CPUS = medianF(pick(ok, func(r *Record) float64 { return r.CPUS }))
			a.WallSyncedS, a.SyncedMin, a.SyncedMax = 0, 0, 0
			synced := pick(ok, func(r *Record) float64 { return r.WallSyncedS })
			if slices.Min(synced) > 0 {
				a.WallSyncedS = medianF(synced)
				sort.Float64s(synced)
				a.SyncedMin, a.SyncedMax = synced[0], synced[len(synced)-1]
			}
			a.Rchar = int64(medianF(pick(ok, func(r *Record) float64 { return float64(r.Rchar) })))
			if ok[0].StoredBytes != nil {
				v := int64(medianF(pick(ok, func(r *Record) float64 {
					if r.StoredBytes == nil {
						return 0
					}
					return float64(*r.StoredBytes)
				})))
				a.StoredBytes = &v
			}
			if ok[0].ToolBytesRead != nil {
				v := int64(medianF(pick(ok, func(r *Record) float64 {
					if r.ToolBytesRead == nil {
						return 0
					}
					return float64(*r.ToolBytesRead)
				})))
				a.ToolBytesRead = &v
			}
		}
		out = append(out, &a)
	}
	return out
}

func pick(rs []*Record, f func(*Record) float64) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

func medianF(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	c := append([]float64(nil), v...)
	sort.Float64s(c)
	n := len(c)
	if n%2 == 1 {
		return c[n/2]
	}
	return (c[n/2-1] + c[n/2]) / 2
}

func cpu(r *Record) string {
	if r.Status == "skipped" || r.OkRounds == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", r.CPUS)
}

func writeReport(b *strings.Builder, raw []*Record, metas []string, workdir string) {
	recs := aggregate(raw)
	meta := map[string]string{}
	var problems []string
	var metaOrder []string
	for _, kv := range metas {
		k, v, _ := strings.Cut(kv, "=")
		if k == "problem" {
			problems = append(problems, v)
			continue
		}
		if _, seen := meta[k]; !seen {
			metaOrder = append(metaOrder, k)
		}
		meta[k] = v
	}

	fmt.Fprintf(b, "# Raksha benchmark results\n\n")
	fmt.Fprintf(b, "Generated by `bench/run.sh` (`make bench`) on %s.\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))

	b.WriteString("## Machine\n\n")
	for _, k := range metaOrder {
		if m, ok := strings.CutPrefix(k, "machine:"); ok {
			fmt.Fprintf(b, "- %s: %s\n", m, meta[k])
		}
	}
	for _, l := range machineLines(workdir) {
		fmt.Fprintf(b, "- %s\n", l)
	}
	b.WriteString("\n## Setup\n\n")
	for _, k := range metaOrder {
		if !strings.HasPrefix(k, "machine:") {
			fmt.Fprintf(b, "- %s: %s\n", k, meta[k])
		}
	}

	b.WriteString("\n## Main comparison\n\n")
	b.WriteString("Wall = start to exit of the process (median over the rounds, min–max in brackets); " +
		"wall + sync = the same up to the end of a `sync` run right after the process exited (its writes, and whatever else was dirty, on the disk); MB/s = image size (10^6 bytes) / median wall; " +
		"CPU = user + system time of the process; " +
		"read = bytes the process read per the kernel (`rchar` of /proc/PID/io at its exit); " +
		"Raksha's own count is its JSON `stats.bytes_read`; stored = growth of the repository directory " +
		"(apparent bytes); RSS = peak resident set size from `/usr/bin/time -v`. Sizes in MiB.")
	if find(recs, "floor", "incr", "clustered", "", "main") != nil {
		b.WriteString(" The row `floor` is not a tool: it is the clustered incremental's floor on this machine, measured in each " +
			"round as the tools are (`benchtool incrfloor-run`, bench/cmd/benchtool/incrfloor.go): a lean process that does only what " +
			"any tool keeping Raksha's repository format and durability must do for that change (argon2id at Raksha's default cost, " +
			"reading and HMAC-SHA-256 of every chunk of 4 MiB the change touches, AES-256-GCM and O_DIRECT writes of the changed bytes " +
			"into one file, one fdatasync), with no compression, no metadata and no CLI.")
	}
	b.WriteString("\n\n")
	row(b, "case", "tool", "status", "wall s", "wall + sync s", "MB/s", "CPU s", "read (kernel) MiB", "read (Raksha JSON) MiB", "stored MiB", "peak RSS MiB", "notes")
	row(b, "---", "---", "---", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "---")
	for _, r := range recs {
		if r.Image != "main" {
			continue
		}
		row(b, caseName(r), toolName(r), status(r), wall(r), wallSynced(r), mbps(r), cpu(r), rchar(r), mibp(r.ToolBytesRead), mibp(r.StoredBytes), rss(r), notes(r))
	}

	// Chunk-size series.
	var chunkRecs []*Record
	chunks := map[string]bool{}
	for _, r := range recs {
		if r.Tool == "raksha" && r.Chunk != "" && (r.Image == "main" || r.Image == "chunks") &&
			(r.Variant == "" || r.Variant == "extents") && r.Op != "restore" {
			chunkRecs = append(chunkRecs, r)
			chunks[r.Chunk] = true
		}
	}
	if len(chunks) > 0 {
		var order []string
		for c := range chunks {
			order = append(order, c)
		}
		sort.Slice(order, func(i, j int) bool {
			a, _ := parseSize(order[i])
			c, _ := parseSize(order[j])
			return a > c
		})
		b.WriteString("\n## Raksha chunk size vs. the change patterns (with --changed-extents)\n\n")
		b.WriteString("Each chunk size has its own repository: full backup, then the clustered change, then the scattered one " +
			"(the same changes as in the main comparison).\n\n")
		row(b, "chunk size", "full: wall s", "full: stored MiB", "clustered: wall s", "clustered: stored MiB", "scattered: wall s", "scattered: read MiB", "scattered: stored MiB", "peak RSS MiB", "status")
		row(b, "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "---")
		for _, c := range order {
			var full, clu, sca *Record
			var maxRSS int64
			var bad []string
			for _, r := range chunkRecs {
				if r.Chunk != c {
					continue
				}
				switch {
				case r.Op == "full":
					full = r
				case r.Op == "incr" && r.Pattern == "clustered":
					clu = r
				case r.Op == "incr" && r.Pattern == "scattered":
					sca = r
				}
				maxRSS = max(maxRSS, r.MaxRSSKB)
				if r.Status != "ok" {
					bad = append(bad, caseName(r)+": "+r.Status)
				}
			}
			st := "ok"
			if len(bad) > 0 {
				st = strings.Join(bad, "; ")
			}
			get := func(r *Record, f func(*Record) string) string {
				if r == nil {
					return "not run"
				}
				if r.OkRounds == 0 {
					return r.Status
				}
				return f(r)
			}
			row(b, c,
				get(full, wall), get(full, func(r *Record) string { return mibp(r.StoredBytes) }),
				get(clu, wall), get(clu, func(r *Record) string { return mibp(r.StoredBytes) }),
				get(sca, wall), get(sca, rchar), get(sca, func(r *Record) string { return mibp(r.StoredBytes) }),
				rssCell(maxRSS), st)
		}
	}

	// Big sparse image.
	var big []*Record
	for _, r := range recs {
		if r.Image == "big" {
			big = append(big, r)
		}
	}
	if len(big) > 0 {
		b.WriteString("\n## Large sparse image (peak RSS at size)\n\n")
		if d := meta["big image"]; d != "" {
			b.WriteString(d + "\n\n")
		}
		row(b, "case", "tool", "status", "wall s", "wall + sync s", "MB/s", "CPU s", "read (kernel) MiB", "read (Raksha JSON) MiB", "stored MiB", "peak RSS MiB", "notes")
		row(b, "---", "---", "---", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "---")
		for _, r := range big {
			row(b, caseName(r), toolName(r), status(r), wall(r), wallSynced(r), mbps(r), cpu(r), rchar(r), mibp(r.ToolBytesRead), mibp(r.StoredBytes), rss(r), notes(r))
		}
	}

	writeTargets(b, recs)

	b.WriteString("\n## Cross-checks of the measurements\n\n")
	b.WriteString("Bytes read were taken two ways: at the child's exit stop (ptrace PTRACE_O_TRACEEXIT, reading /proc/PID/io) " +
		"and from the growth of the wrapper's own /proc/self/io when it reaps the child (the kernel adds a reaped child's " +
		"counters to its parent). Peak RSS was taken from `/usr/bin/time -v` and from the wrapper's wait4 rusage.\n\n")
	var worstIO, worstRSS float64
	loadMin, loadMax := -1.0, 0.0
	for _, r := range raw {
		if r.Status != "skipped" && r.WallS > 0 {
			if loadMin < 0 || r.Load1 < loadMin {
				loadMin = r.Load1
			}
			loadMax = max(loadMax, r.Load1)
		}
	}
	for _, r := range raw {
		if r.Status == "skipped" || r.Rchar == 0 {
			continue
		}
		d := float64(r.RcharReaped-r.Rchar) / float64(r.Rchar)
		if d < 0 {
			d = -d
		}
		worstIO = max(worstIO, d)
		if r.MaxRSSKB > 0 && r.MaxRSSKBWait4 > 0 {
			e := float64(r.MaxRSSKB-r.MaxRSSKBWait4) / float64(r.MaxRSSKB)
			if e < 0 {
				e = -e
			}
			worstRSS = max(worstRSS, e)
		}
	}
	fmt.Fprintf(b, "- largest relative difference between the two bytes-read figures: %.4f%%\n", worstIO*100)
	fmt.Fprintf(b, "- largest relative difference between the two peak-RSS figures: %.2f%% (time -v also counts the small wrapper process)\n", worstRSS*100)
	if loadMin >= 0 {
		fmt.Fprintf(b, "- 1-minute load average when the measured commands started: %.2f to %.2f on %d cores (it includes the bench's own previous commands, up to about the core count; more means other work competed)\n", loadMin, loadMax, runtime.NumCPU())
	}

	if len(problems) > 0 {
		b.WriteString("\n## Problems\n\n")
		for _, p := range problems {
			fmt.Fprintf(b, "- %s\n", p)
		}
	}
	var failed []string
	skipped := map[string][]string{}
	var skipOrder []string
	for _, r := range recs {
		switch r.Status {
		case "ok":
		case "skipped":
			if _, seen := skipped[r.Note]; !seen {
				skipOrder = append(skipOrder, r.Note)
			}
			skipped[r.Note] = append(skipped[r.Note], r.Name)
		default:
			failed = append(failed, fmt.Sprintf("%s (%s): %s — %s", r.Name, toolName(r), r.Status, r.Note))
		}
	}
	for _, why := range skipOrder {
		failed = append(failed, fmt.Sprintf("skipped, %s: %s", why, strings.Join(skipped[why], ", ")))
	}
	if len(failed) > 0 {
		if len(problems) == 0 {
			b.WriteString("\n## Problems\n\n")
		}
		for _, f := range failed {
			fmt.Fprintf(b, "- %s\n", f)
		}
	}
}

func find(recs []*Record, tool, op, pattern, variant, image string) *Record {
	var found *Record
	for _, r := range recs {
		if r.Tool == tool && r.Op == op && r.Pattern == pattern && r.Variant == variant && r.Image == image {
			found = r
		}
	}
	return found
}

func okRec(r *Record) bool { return r != nil && r.OkRounds > 0 && r.WallS > 0 }

func writeTargets(b *strings.Builder, recs []*Record) {
	b.WriteString("\n## Targets of the issue\n\n")
	b.WriteString("Speed ratios compare median times on the same image and change (peer / Raksha); " +
		"the verdict is on the medians up to a final `sync` (wall + sync: every tool's writes on the disk) " +
		"when both rows have them, else on the wall times. Beside it: the ratio of the wall times without the sync, " +
		"of the fastest rounds, and of the CPU times (user + system), which suffer less from other work on the machine.\n\n")
	row(b, "target", "measured", "verdict")
	row(b, "---", "---", "---")
	speed := func(label string, rak *Record, peers []*Record, want float64) {
		synced := okRec(rak) && rak.WallSyncedS > 0
		for _, p := range peers {
			if okRec(p) && p.WallSyncedS <= 0 {
				synced = false
			}
		}
		t := func(r *Record) float64 {
			if synced {
				return r.WallSyncedS
			}
			return r.WallS
		}
		var best *Record
		for _, p := range peers {
			if okRec(p) && (best == nil || t(p) < t(best)) {
				best = p
			}
		}
		switch {
		case !okRec(rak):
			row(b, label, "Raksha not measured (see table)", "**not met** (no data)")
		case best == nil:
			row(b, label, "no peer measured (see table)", "cannot judge")
		default:
			ratio := t(best) / t(rak)
			v := "**not met**"
			if ratio >= want {
				v = "met"
			}
			what := "wall"
			if synced {
				what = "wall + sync"
			}
			m := fmt.Sprintf("%.2f× %s (Raksha %.2f s vs %s %.2f s)", ratio, what, t(rak), best.Tool, t(best))
			if synced {
				m += fmt.Sprintf("; without the sync %.2f×", best.WallS/rak.WallS)
			}
			if rak.OkRounds > 1 && best.OkRounds > 1 {
				// Noise on a shared machine only adds time: the fastest round
				// of each is the other usual estimate.
				if synced {
					m += fmt.Sprintf("; fastest rounds %.2f×", best.SyncedMin/rak.SyncedMin)
				} else {
					m += fmt.Sprintf("; fastest rounds %.2f×", best.WallMin/rak.WallMin)
				}
			}
			if rak.CPUS > 0 && best.CPUS > 0 {
				m += fmt.Sprintf("; CPU time %.2f×", best.CPUS/rak.CPUS)
			}
			if rak.OkRounds < rak.Rounds || best.OkRounds < best.Rounds {
				m += "; some rounds failed"
			}
			row(b, label, m, v)
		}
	}
	m := "main"
	speed("full backup ≥ 3× the faster peer", find(recs, "raksha", "full", "", "", m),
		[]*Record{find(recs, "restic", "full", "", "", m), find(recs, "kopia", "full", "", "", m)}, 3)
	speed("clustered incremental with extents ≥ 25× restic", find(recs, "raksha", "incr", "clustered", "extents", m),
		[]*Record{find(recs, "restic", "incr", "clustered", "", m)}, 25)
	if fl, rs := find(recs, "floor", "incr", "clustered", "", m), find(recs, "restic", "incr", "clustered", "", m); okRec(fl) && okRec(rs) && fl.WallSyncedS > 0 && rs.WallSyncedS > 0 {
		what := fmt.Sprintf("the floor %.3f s (fastest round %.3f s) = %.2f× restic (fastest rounds %.2f×)",
			fl.WallSyncedS, fl.SyncedMin, rs.WallSyncedS/fl.WallSyncedS, rs.SyncedMin/fl.SyncedMin)
		if rak := find(recs, "raksha", "incr", "clustered", "extents", m); okRec(rak) && rak.WallSyncedS > 0 {
			what += fmt.Sprintf("; Raksha takes %.2f× the floor's time", rak.WallSyncedS/fl.WallSyncedS)
		}
		row(b, "(for reference) the clustered incremental's floor on this machine, wall + sync (the row `floor` above)", what, "–")
	}
	speed("scattered incremental with extents ≥ 2× restic", find(recs, "raksha", "incr", "scattered", "extents", m),
		[]*Record{find(recs, "restic", "incr", "scattered", "", m)}, 2)
	speed("clustered incremental without extents ≥ 1.5× restic", find(recs, "raksha", "incr", "clustered", "no-extents", m),
		[]*Record{find(recs, "restic", "incr", "clustered", "", m)}, 1.5)
	speed("scattered incremental without extents ≥ 1.5× restic", find(recs, "raksha", "incr", "scattered", "no-extents", m),
		[]*Record{find(recs, "restic", "incr", "scattered", "", m)}, 1.5)
	speed("restore ≥ 3× restic", find(recs, "raksha", "restore", "", "", m),
		[]*Record{find(recs, "restic", "restore", "", "", m)}, 3)

	var maxRSS int64
	var where string
	n := 0
	for _, r := range recs {
		if r.Tool == "raksha" && r.Status != "skipped" && r.MaxRSSKB > 0 {
			n++
			if r.MaxRSSKB > maxRSS {
				maxRSS, where = r.MaxRSSKB, r.Name
			}
		}
	}
	if n == 0 {
		row(b, "peak RSS ≤ 256 MiB at any image size", "Raksha not measured", "**not met** (no data)")
	} else {
		v := "**not met**"
		if maxRSS <= 256*1024 {
			v = "met"
		}
		row(b, "peak RSS ≤ 256 MiB at any image size", fmt.Sprintf("max %.1f MiB over %d Raksha rows, all rounds (%s)", float64(maxRSS)/1024, n, where), v)
	}
}

func machineLines(workdir string) []string {
	var out []string
	out = append(out, fmt.Sprintf("nproc: %d", runtime.NumCPU()))
	model := ""
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	out = append(out, "CPU: "+model)
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if ok && k == "MemTotal" {
				var kb int64
				fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
				out = append(out, fmt.Sprintf("memory: %.1f GiB", float64(kb)/(1<<20)))
				break
			}
		}
		f.Close()
	}
	if k, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		out = append(out, "kernel: Linux "+strings.TrimSpace(string(k)))
	}
	var st syscall.Statfs_t
	if syscall.Statfs(workdir, &st) == nil {
		out = append(out, fmt.Sprintf("disk free (bench work dir, at report time): %.1f GiB of %.1f GiB",
			float64(st.Bavail*uint64(st.Bsize))/(1<<30), float64(st.Blocks*uint64(st.Bsize))/(1<<30)))
	}
	return out
}

func rssCell(kb int64) string {
	if kb == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", float64(kb)/1024)
}
