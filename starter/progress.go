package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/raksha-backup/raksha/internal/repo"
)

// progressReporter shows a copy's progress: a bar (bytes, rate, ETA) on a
// terminal, plain lines every few seconds otherwise, or nothing.
type progressReporter struct {
	mu    sync.Mutex
	bar   *progressbar.ProgressBar
	w     io.Writer
	label string
	start time.Time
	last  time.Time
	every time.Duration
	done  bool
}

func (a *app) newProgress(label string, total int64) *progressReporter {
	mode := a.progress
	if mode == "auto" {
		mode = "lines"
		if f, ok := a.stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			mode = "bar"
		}
	}
	now := time.Now()
	p := &progressReporter{w: a.stderr, label: label, start: now, last: now, every: 5 * time.Second}
	switch mode {
	case "bar":
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(a.stderr),
			progressbar.OptionSetDescription(label),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowTotalBytes(true),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionFullWidth(),
			progressbar.OptionClearOnFinish())
	case "lines":
	case "none":
		p.w = nil
	default:
		p.w = nil
		fmt.Fprintf(a.stderr, "unknown --progress %q, showing none\n", mode)
	}
	return p
}

// update is safe to call from any goroutine.
func (p *progressReporter) update(pr repo.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	if p.bar != nil {
		_ = p.bar.Set64(pr.Done)
		return
	}
	if p.w == nil || time.Since(p.last) < p.every {
		return
	}
	p.last = time.Now()
	el := time.Since(p.start).Seconds()
	rate := float64(pr.Done) / max(el, 1e-3)
	eta := "?"
	if rate > 0 && pr.Total >= pr.Done {
		eta = time.Duration(float64(pr.Total-pr.Done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	pct := 100.0
	if pr.Total > 0 {
		pct = 100 * float64(pr.Done) / float64(pr.Total)
	}
	line := fmt.Sprintf("%s: %5.1f%% %s of %s, %s/s, ETA %s", p.label, pct,
		humanBytes(pr.Done), humanBytes(pr.Total), humanBytes(int64(rate)), eta)
	if pr.BytesRead > 0 || pr.BytesNew > 0 {
		line += fmt.Sprintf(", read %s, new %s", humanBytes(pr.BytesRead), humanBytes(pr.BytesNew))
	}
	fmt.Fprintln(p.w, line)
}

func (p *progressReporter) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = true
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}
