package guestapp

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultInterval is the writer's default pause between two records.
const DefaultInterval = 50 * time.Millisecond

// WriterOptions configures RunWriter.
type WriterOptions struct {
	// Dirs are the data disks' mount points; each gets its own record file
	// and its own writing goroutine. The label stored in the records is the
	// directory's base name (the lab mounts a disk at /data/<label>).
	Dirs []string
	// Interval is the pause after each record (DefaultInterval when zero).
	Interval time.Duration
	// Count, when positive, stops each disk's writer after that many records.
	Count uint64
	// Logger receives start, error and stop messages (slog.Default when nil).
	Logger *slog.Logger
	// Ready, when set, is called once every disk's first record is durable.
	Ready func()
}

// RunWriter appends records to a new file <dir>/raksha-writer/<run>.rec on
// every directory of opts.Dirs, each record written with one write(2) and
// made durable with fdatasync(2) before the next is made, until ctx is done
// (or Count records are written). A failing write is logged and retried after
// a second with the same sequence number, so the file never skips one. It
// returns nil when stopped by ctx or Count, and an error when a record file
// cannot be created.
func RunWriter(ctx context.Context, opts WriterOptions) error {
	if len(opts.Dirs) == 0 {
		return errors.New("record writer: no data directory")
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	files := make([]*os.File, len(opts.Dirs))
	runIDs := make([]uint64, len(opts.Dirs))
	for i, dir := range opts.Dirs {
		var err error
		runIDs[i], err = newRunID()
		if err != nil {
			return err
		}
		files[i], err = createRecordFile(dir, runIDs[i])
		if err != nil {
			for _, f := range files[:i] {
				f.Close()
			}
			return err
		}
		log.Info("record writer started", "dir", dir, "file", files[i].Name(), "run", fmt.Sprintf("%016x", runIDs[i]), "interval", opts.Interval)
	}
	var wg, first sync.WaitGroup
	first.Add(len(opts.Dirs))
	for i := range opts.Dirs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer files[i].Close()
			writeLoop(ctx, files[i], runIDs[i], filepath.Base(opts.Dirs[i]), opts, log, sync.OnceFunc(first.Done))
		}()
	}
	if opts.Ready != nil {
		go func() {
			first.Wait()
			opts.Ready()
		}()
	}
	wg.Wait()
	return nil
}

func writeLoop(ctx context.Context, f *os.File, runID uint64, label string, opts WriterOptions, log *slog.Logger, written func()) {
	defer written() // also when stopped before the first record
	for seq := uint64(1); opts.Count == 0 || seq <= opts.Count; {
		if ctx.Err() != nil {
			return
		}
		rec := Record{RunID: runID, Seq: seq, Wall: time.Now(), Boot: BootTime(), Label: label}
		if err := writeRecord(f, rec.Encode()); err != nil {
			log.Error("record writer: write failed, retrying in 1s", "file", f.Name(), "seq", seq, "err", err)
			sleep(ctx, time.Second)
			continue
		}
		written()
		seq++
		sleep(ctx, opts.Interval)
	}
}

// writeRecord appends one record and makes it durable. The file is opened
// with O_APPEND; a short write leaves a partial record behind, which the
// retry would misalign, so the file is cut back to a whole record first.
func writeRecord(f *os.File, b []byte) error {
	n, err := f.Write(b)
	if err != nil || n != len(b) {
		if fi, serr := f.Stat(); serr == nil && fi.Size()%RecordSize != 0 {
			_ = f.Truncate(fi.Size() - fi.Size()%RecordSize)
		}
		if err == nil {
			err = fmt.Errorf("short write: %d of %d bytes", n, len(b))
		}
		return fmt.Errorf("write record: %w", err)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("fdatasync record file: %w", err)
	}
	return nil
}

func createRecordFile(dir string, runID uint64) (*os.File, error) {
	wdir := filepath.Join(dir, DirName)
	if err := os.MkdirAll(wdir, 0o755); err != nil {
		return nil, fmt.Errorf("record writer: %w", err)
	}
	path := filepath.Join(wdir, fmt.Sprintf("%016x%s", runID, FileSuffix))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("record writer: %w", err)
	}
	// Make the new name durable too, so a snapshot that has records has the file.
	for _, d := range []string{wdir, dir} {
		if df, err := os.Open(d); err == nil {
			_ = df.Sync()
			df.Close()
		}
	}
	return f, nil
}

func newRunID() (uint64, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("record writer: run ID: %w", err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// BootTime returns CLOCK_BOOTTIME, the time since boot including suspend
// (0 if the clock cannot be read).
func BootTime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// MountedDirs returns the mount points directly below root (e.g. every
// /data/<label>) listed in mountsFile (normally /proc/self/mounts), sorted.
func MountedDirs(mountsFile, root string) ([]string, error) {
	f, err := os.Open(mountsFile)
	if err != nil {
		return nil, fmt.Errorf("list data mounts: %w", err)
	}
	defer f.Close()
	root = filepath.Clean(root)
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		mp := filepath.Clean(unescapeMount(fields[1]))
		if filepath.Dir(mp) == root && mp != root {
			seen[mp] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("list data mounts: read %s: %w", mountsFile, err)
	}
	dirs := make([]string, 0, len(seen))
	for d := range seen {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	return dirs, nil
}

// unescapeMount undoes the octal escapes (\040 for a space) of /proc/mounts.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
