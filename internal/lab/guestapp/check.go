package guestapp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// CheckOptions tunes Check.
type CheckOptions struct {
	// GapThreshold, when positive, makes Check list in Report.Gaps every
	// pair of consecutive good records whose boot-clock times lie further
	// apart than this (a stall of the writer, e.g. a freeze).
	GapThreshold time.Duration
}

// Torn is a record that is not intact.
type Torn struct {
	// Index is the record's position in the file (0 for the first).
	Index int64 `json:"index"`
	// Offset is the record's byte offset in the file.
	Offset int64 `json:"offset"`
	// Reason says what is wrong with it.
	Reason string `json:"reason"`
}

// SeqRange is an inclusive range of sequence numbers.
type SeqRange struct {
	From uint64 `json:"from"`
	To   uint64 `json:"to"`
}

// Gap is a stall between two consecutive good records.
type Gap struct {
	// AfterSeq is the sequence number of the record before the gap.
	AfterSeq uint64 `json:"after_seq"`
	// Duration is the boot-clock time between the two records.
	Duration time.Duration `json:"duration_ns"`
	// From and To are the wall-clock times of the two records.
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
}

// Report is what Check found in one record file.
type Report struct {
	// File names the checked file (as given to CheckFile; empty for Check).
	File string `json:"file,omitempty"`
	// Label is the disk label stored in the first good record.
	Label string `json:"label,omitempty"`
	// RunID is the run ID of the first good record.
	RunID uint64 `json:"run_id"`
	// Records counts the whole records read (good and torn).
	Records int64 `json:"records"`
	// Good counts the intact records.
	Good int64 `json:"good"`
	// FirstSeq is the sequence number of the first good record (0: none).
	FirstSeq uint64 `json:"first_seq"`
	// LastGoodSeq is the sequence number of the last good record (0: none).
	LastGoodSeq uint64 `json:"last_good_seq"`
	// FirstTime and LastGoodTime are the wall-clock times of those records.
	FirstTime    time.Time `json:"first_time"`
	LastGoodTime time.Time `json:"last_good_time"`
	// Torn lists the records that are not intact: bad magic or checksum,
	// zero-filled, a foreign run ID, or a sequence number that goes back.
	Torn []Torn `json:"torn,omitempty"`
	// TornTail is true when the only torn records are the last ones of the
	// file (what a crash-consistent copy taken mid-write may show).
	TornTail bool `json:"torn_tail,omitempty"`
	// Missing lists the sequence numbers absent between good records and
	// not accounted for by torn records in between.
	Missing []SeqRange `json:"missing,omitempty"`
	// TrailingBytes counts the bytes after the last whole record (a partial
	// record; it is also reported in Torn).
	TrailingBytes int `json:"trailing_bytes,omitempty"`
	// MaxGap is the longest boot-clock time between consecutive good records.
	MaxGap time.Duration `json:"max_gap_ns"`
	// Gaps lists the gaps longer than CheckOptions.GapThreshold.
	Gaps []Gap `json:"gaps,omitempty"`
}

// OK reports whether the file holds only intact records with no sequence
// number missing.
func (r *Report) OK() bool { return len(r.Torn) == 0 && len(r.Missing) == 0 }

// String summarises the report in one line.
func (r *Report) String() string {
	s := fmt.Sprintf("%s: %d records, %d good, seq %d..%d, max gap %v, %d torn, %d missing ranges",
		r.File, r.Records, r.Good, r.FirstSeq, r.LastGoodSeq, r.MaxGap.Round(time.Millisecond), len(r.Torn), len(r.Missing))
	if r.TornTail {
		s += " (torn tail only)"
	}
	return s
}

// Check reads a record file from rd to its end and reports on it. It fails
// only when reading fails; damage is reported in the Report.
func Check(rd io.Reader, opts CheckOptions) (*Report, error) {
	br := bufio.NewReaderSize(rd, 64*1024)
	rep := &Report{}
	buf := make([]byte, RecordSize)
	var (
		last       Record
		haveLast   bool
		tornSince  uint64 // torn records since the last good one
		lastGoodIx int64  = -1
	)
	for idx := int64(0); ; idx++ {
		n, err := io.ReadFull(br, buf)
		if errors.Is(err, io.EOF) {
			break
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			rep.TrailingBytes = n
			rep.Torn = append(rep.Torn, Torn{Index: idx, Offset: idx * RecordSize,
				Reason: fmt.Sprintf("partial record: %d of %d bytes", n, RecordSize)})
			break
		}
		if err != nil {
			return nil, fmt.Errorf("check records: read record %d: %w", idx, err)
		}
		rep.Records++
		rec, derr := Decode(buf)
		if derr == nil && haveLast && rec.RunID != last.RunID {
			derr = fmt.Errorf("run ID %016x, want %016x", rec.RunID, last.RunID)
		}
		if derr == nil && haveLast && rec.Seq <= last.Seq {
			derr = fmt.Errorf("sequence %d after %d", rec.Seq, last.Seq)
		}
		if derr != nil {
			rep.Torn = append(rep.Torn, Torn{Index: idx, Offset: idx * RecordSize, Reason: derr.Error()})
			tornSince++
			continue
		}
		rep.Good++
		lastGoodIx = idx
		if !haveLast {
			rep.Label, rep.RunID, rep.FirstSeq, rep.FirstTime = rec.Label, rec.RunID, rec.Seq, rec.Wall
		} else {
			if want := last.Seq + 1 + tornSince; rec.Seq > want {
				rep.Missing = append(rep.Missing, SeqRange{From: want, To: rec.Seq - 1})
			}
			gap := rec.Boot - last.Boot
			if gap > rep.MaxGap {
				rep.MaxGap = gap
			}
			if opts.GapThreshold > 0 && gap > opts.GapThreshold {
				rep.Gaps = append(rep.Gaps, Gap{AfterSeq: last.Seq, Duration: gap, From: last.Wall, To: rec.Wall})
			}
		}
		rep.LastGoodSeq, rep.LastGoodTime = rec.Seq, rec.Wall
		last, haveLast, tornSince = rec, true, 0
	}
	if len(rep.Torn) > 0 && rep.Torn[0].Index > lastGoodIx {
		rep.TornTail = true
	}
	return rep, nil
}

// CheckFile checks one record file.
func CheckFile(path string, opts CheckOptions) (*Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("check record file: %w", err)
	}
	defer f.Close()
	rep, err := Check(f, opts)
	if err != nil {
		return nil, fmt.Errorf("check record file %s: %w", path, err)
	}
	rep.File = path
	return rep, nil
}

// RecordFiles returns the record files under dir, sorted by name: the files
// named *.rec in dir itself and in its raksha-writer subdirectory (so dir may
// be a disk's mount point or its raksha-writer directory).
func RecordFiles(dir string) ([]string, error) {
	var files []string
	for _, d := range []string{dir, filepath.Join(dir, DirName)} {
		ents, err := os.ReadDir(d)
		if errors.Is(err, os.ErrNotExist) && d != dir {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list record files: %w", err)
		}
		for _, e := range ents {
			if e.Type().IsRegular() && strings.HasSuffix(e.Name(), FileSuffix) {
				files = append(files, filepath.Join(d, e.Name()))
			}
		}
	}
	sort.Strings(files)
	return files, nil
}

// CheckDir checks every record file RecordFiles finds under dir. It fails
// when there is none.
func CheckDir(dir string, opts CheckOptions) ([]*Report, error) {
	files, err := RecordFiles(dir)
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("check records in %s: no *%s file there or in %s/", dir, FileSuffix, DirName)
	}
	reps := make([]*Report, 0, len(files))
	for _, f := range files {
		rep, err := CheckFile(f, opts)
		if err != nil {
			return nil, err
		}
		reps = append(reps, rep)
	}
	return reps, nil
}
