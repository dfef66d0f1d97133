package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"time"
	"unsafe"
)

// floorResult is what `benchtool diskfloor` prints: how long this machine's
// disk takes to take a number of bytes with O_DIRECT writes and to make them
// durable, with nothing else to do. No tool can restore those bytes faster.
type floorResult struct {
	Bytes  int64   `json:"bytes"`
	WriteS float64 `json:"write_s"`
	FlushS float64 `json:"flush_s"`
	TotalS float64 `json:"total_s"`
}

// cmdDiskFloor writes -bytes bytes of incompressible data to a new FILE in
// 4 MiB O_DIRECT writes, one at a time (as dd oflag=direct bs=4M does), then
// fdatasyncs it, prints a floorResult and removes FILE.
func cmdDiskFloor(args []string) error {
	fs := flag.NewFlagSet("diskfloor", flag.ExitOnError)
	size := fs.String("bytes", "1G", "how much to write")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: benchtool diskfloor -bytes N FILE")
	}
	n, err := parseSize(*size)
	if err != nil || n <= 0 {
		return fmt.Errorf("-bytes %q: want a positive size", *size)
	}
	r, err := diskFloor(fs.Arg(0), n)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// diskFloor writes n bytes to a new file at path as cmdDiskFloor says,
// removes it and returns the times.
func diskFloor(path string, n int64) (floorResult, error) {
	const block = 4 << 20
	buf := alignedBlock(block, 4096)
	rng := rand.NewChaCha8([32]byte{'f', 'l', 'o', 'o', 'r'})
	_, _ = rng.Read(buf)
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_TRUNC|syscall.O_DIRECT|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return floorResult{}, fmt.Errorf("open %s with O_DIRECT: %w", path, err)
	}
	defer os.Remove(path)
	defer syscall.Close(fd)
	start := time.Now()
	for pos := int64(0); pos < n; pos += block {
		// A new pattern per block, so that nothing below can deduplicate.
		buf[0], buf[1], buf[2], buf[3] = byte(pos>>22), byte(pos>>30), byte(pos>>38), 0xfe
		w := min(int64(block), (n-pos+4095)&^4095)
		if _, err := syscall.Pwrite(fd, buf[:w], pos); err != nil {
			return floorResult{}, fmt.Errorf("write %s at %d: %w", path, pos, err)
		}
	}
	wrote := time.Since(start)
	if err := syscall.Fdatasync(fd); err != nil {
		return floorResult{}, fmt.Errorf("fdatasync %s: %w", path, err)
	}
	total := time.Since(start)
	return floorResult{Bytes: n, WriteS: wrote.Seconds(), FlushS: (total - wrote).Seconds(), TotalS: total.Seconds()}, nil
}

// cmdStartTime runs CMD -n times with its output discarded and prints the
// median and the minimum wall time in seconds (JSON): what a command costs
// before it does anything, when CMD is one that does nothing (--help).
func cmdStartTime(args []string) error {
	fs := flag.NewFlagSet("starttime", flag.ExitOnError)
	runs := fs.Int("n", 15, "runs")
	_ = fs.Parse(args)
	if fs.NArg() == 0 || *runs < 1 {
		return fmt.Errorf("usage: benchtool starttime [-n N] -- CMD")
	}
	var ts []float64
	for range *runs {
		c := exec.Command(fs.Arg(0), fs.Args()[1:]...)
		start := time.Now()
		if err := c.Run(); err != nil {
			return fmt.Errorf("%v: %w", fs.Args(), err)
		}
		ts = append(ts, time.Since(start).Seconds())
	}
	slices.Sort(ts)
	return json.NewEncoder(os.Stdout).Encode(map[string]float64{"median_s": ts[len(ts)/2], "min_s": ts[0]})
}

// alignedBlock returns n bytes whose start is aligned to align (a power of
// two), as O_DIRECT and huge pages need.
func alignedBlock(n, align int) []byte {
	raw := make([]byte, n+align)
	off := (align - int(uintptr(unsafe.Pointer(&raw[0]))%uintptr(align))) % align
	return raw[off : off+n]
}
