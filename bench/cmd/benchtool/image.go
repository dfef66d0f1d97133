package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"syscall"
)

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
	blk      = 4096
)

// cmdStage copies regular files from the source trees (walked in lexical
// order, so the selection is the same on every run of one machine) into
// DEST/<source path>, until BUDGET bytes are staged. Unreadable files,
// symlinks and special files are skipped.
func cmdStage(args []string) error {
	fs_ := flag.NewFlagSet("stage", flag.ExitOnError)
	budgetS := fs_.String("budget", "1500M", "bytes of file data to stage")
	dest := fs_.String("dest", "", "staging directory (created)")
	fs_.Parse(args)
	budget, err := parseSize(*budgetS)
	if err != nil {
		return err
	}
	if *dest == "" || fs_.NArg() == 0 {
		return fmt.Errorf("usage: benchtool stage -budget N -dest DIR SRC [SRC]")
	}
	var total, files int64
	buf := make([]byte, 1<<20)
	errDone := errors.New("done")
	for _, src := range fs_.Args() {
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if d != nil && d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if total >= budget {
				return errDone
			}
			if !d.Type().IsRegular() {
				return nil
			}
			out := filepath.Join(*dest, p)
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return err
			}
			n, err := copyFile(p, out, buf)
			if err != nil {
				os.Remove(out)
				return nil // unreadable: skip
			}
			total += n
			files++
			return nil
		})
		if err == errDone {
			break
		}
		if err != nil {
			return err
		}
	}
	fmt.Printf("staged %d files, %d bytes\n", files, total)
	if total < budget {
		fmt.Fprintf(os.Stderr, "stage: warning: only %d of %d bytes found in the sources\n", total, budget)
	}
	return nil
}

func copyFile(src, dst string, buf []byte) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return 0, err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, st.Mode().Perm()|0o200)
	if err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{in}, buf)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// Extent is one changed byte range, as Raksha's --changed-extents expects.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

func seedFor(seed uint64, what string) (uint64, [32]byte) {
	h := seed
	for _, c := range []byte(what) {
		h = h*1099511628211 + uint64(c) // FNV-style mix, stable across Go versions
	}
	var key [32]byte
	for i := 0; i < 4; i++ {
		binary.LittleEndian.PutUint64(key[i*8:], h+uint64(i)*0x9e3779b97f4a7c15)
	}
	return h, key
}

// cmdMutate overwrites parts of IMAGE with random (incompressible) bytes and
// writes the changed ranges as JSON extents:
//
//	clustered: RUNS runs of one length, 4 KiB-aligned, at random non-overlapping
//	           offsets; the run length is 4 MiB per 4 GiB of image (so 10 runs
//	           of 4 MiB = ~1% of a 4 GiB image) unless -run-len is given.
//	scattered: PERCENT % of the image's 4 KiB blocks, chosen at random.
//
// The seed makes the offsets and the data the same on every run.
func cmdMutate(args []string) error {
	fs_ := flag.NewFlagSet("mutate", flag.ExitOnError)
	pattern := fs_.String("pattern", "", "clustered or scattered")
	seed := fs_.Uint64("seed", 1, "random seed")
	runs := fs_.Int("runs", 10, "clustered: number of runs")
	runLenS := fs_.String("run-len", "", "clustered: run length (default 4 MiB per 4 GiB of image)")
	percent := fs_.Float64("percent", 1, "scattered: percent of 4 KiB blocks")
	extentsOut := fs_.String("extents", "", "write the changed extents JSON here")
	fs_.Parse(args)
	if fs_.NArg() != 1 || *extentsOut == "" {
		return fmt.Errorf("usage: benchtool mutate -pattern P -seed N -extents FILE IMAGE")
	}
	f, err := os.OpenFile(fs_.Arg(0), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size() / blk * blk
	s, key := seedFor(*seed, *pattern)
	rng := rand.New(rand.NewPCG(s, s^0x5851f42d4c957f2d))
	data := rand.NewChaCha8(key)

	var ext []Extent
	switch *pattern {
	case "clustered":
		runLen := size / 1024 / blk * blk // 4 MiB per 4 GiB
		if *runLenS != "" {
			if runLen, err = parseSize(*runLenS); err != nil {
				return err
			}
		}
		if runLen < blk {
			runLen = blk
		}
		if int64(*runs)*runLen > size/2 {
			return fmt.Errorf("image too small for %d runs of %d bytes", *runs, runLen)
		}
		for tries := 0; len(ext) < *runs; tries++ {
			if tries > 100000 {
				return fmt.Errorf("could not place %d runs", *runs)
			}
			off := rng.Int64N((size-runLen)/blk+1) * blk
			overlap := false
			for _, e := range ext {
				if off < e.Offset+e.Length && e.Offset < off+runLen {
					overlap = true
					break
				}
			}
			if !overlap {
				ext = append(ext, Extent{off, runLen})
			}
		}
	case "scattered":
		nblk := size / blk
		k := int64(float64(nblk)*(*percent)/100 + 0.5)
		if k < 1 {
			k = 1
		}
		chosen := make(map[int64]bool, k)
		for int64(len(chosen)) < k {
			chosen[rng.Int64N(nblk)] = true
		}
		for b := range chosen {
			ext = append(ext, Extent{b * blk, blk})
		}
	default:
		return fmt.Errorf("unknown pattern %q (clustered|scattered)", *pattern)
	}
	sort.Slice(ext, func(i, j int) bool { return ext[i].Offset < ext[j].Offset })
	var changed int64
	buf := make([]byte, 0)
	for _, e := range ext {
		if int64(cap(buf)) < e.Length {
			buf = make([]byte, e.Length)
		}
		b := buf[:e.Length]
		data.Read(b)
		if _, err := f.WriteAt(b, e.Offset); err != nil {
			return err
		}
		changed += e.Length
	}
	if err := f.Sync(); err != nil {
		return err
	}
	merged := mergeExtents(ext)
	j, _ := json.Marshal(merged)
	if err := os.WriteFile(*extentsOut, append(j, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("%s: changed %d bytes (%.2f%% of %d) in %d extents (%d after merging adjacent)\n",
		*pattern, changed, 100*float64(changed)/float64(size), size, len(ext), len(merged))
	return nil
}

func mergeExtents(ext []Extent) []Extent {
	var out []Extent
	for _, e := range ext {
		if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length >= e.Offset {
			end := max(out[n-1].Offset+out[n-1].Length, e.Offset+e.Length)
			out[n-1].Length = end - out[n-1].Offset
			continue
		}
		out = append(out, e)
	}
	return out
}

// nextData returns the offset of the next data at or after off, or size when
// only a hole remains.
func nextData(f *os.File, off, size int64) int64 {
	n, err := syscall.Seek(int(f.Fd()), off, seekData)
	if err != nil {
		if errors.Is(err, syscall.ENXIO) {
			return size
		}
		return off // no SEEK_DATA support: treat everything as data
	}
	return n
}

func nextHole(f *os.File, off, size int64) int64 {
	n, err := syscall.Seek(int(f.Fd()), off, seekHole)
	if err != nil {
		return size
	}
	return n
}

// cmdMkbig makes a sparse image of SIZE with TOTAL bytes of real data (taken
// from the data parts of -from, e.g. the ext4 base image) written in PIECES
// pieces at offsets spread over the whole image.
func cmdMkbig(args []string) error {
	fs_ := flag.NewFlagSet("mkbig", flag.ExitOnError)
	sizeS := fs_.String("size", "64G", "image size")
	totalS := fs_.String("total", "320M", "bytes of real data")
	pieces := fs_.Int("pieces", 10, "number of pieces")
	from := fs_.String("from", "", "file to take the data from (its non-hole parts)")
	seed := fs_.Uint64("seed", 1, "random seed (jitter of the offsets)")
	fs_.Parse(args)
	if fs_.NArg() != 1 || *from == "" {
		return fmt.Errorf("usage: benchtool mkbig -size S -total T -pieces N -from SRC IMAGE")
	}
	size, err := parseSize(*sizeS)
	if err != nil {
		return err
	}
	total, err := parseSize(*totalS)
	if err != nil {
		return err
	}
	src, err := os.Open(*from)
	if err != nil {
		return err
	}
	defer src.Close()
	sst, _ := src.Stat()
	out, err := os.OpenFile(fs_.Arg(0), os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := out.Truncate(size); err != nil {
		return err
	}
	s, _ := seedFor(*seed, "mkbig")
	rng := rand.New(rand.NewPCG(s, s^0xda3e39cb94b95bdb))
	piece := total / int64(*pieces) / blk * blk
	slot := size / int64(*pieces) / blk * blk
	if piece <= 0 || piece > slot {
		return fmt.Errorf("bad piece size %d for slot %d", piece, slot)
	}
	// Stream the source's data segments.
	var spos int64
	buf := make([]byte, 1<<20)
	readData := func(p []byte) error {
		for len(p) > 0 {
			d := nextData(src, spos, sst.Size())
			if d >= sst.Size() {
				spos = 0 // wrap around
				continue
			}
			h := nextHole(src, d, sst.Size())
			n := min(int64(len(p)), h-d)
			if _, err := src.ReadAt(p[:n], d); err != nil {
				return err
			}
			p = p[n:]
			spos = d + n
		}
		return nil
	}
	var written int64
	for i := 0; i < *pieces; i++ {
		off := int64(i)*slot + rng.Int64N((slot-piece)/blk+1)*blk
		for w := int64(0); w < piece; {
			n := min(int64(len(buf)), piece-w)
			if err := readData(buf[:n]); err != nil {
				return err
			}
			if _, err := out.WriteAt(buf[:n], off+w); err != nil {
				return err
			}
			w += n
		}
		written += piece
	}
	if err := out.Sync(); err != nil {
		return err
	}
	fmt.Printf("made %d-byte sparse image with %d bytes of data in %d pieces\n", size, written, *pieces)
	return nil
}

// cmdWarm reads the data parts of files so that every tool starts from the
// same (warm) page cache.
func cmdWarm(args []string) error {
	buf := make([]byte, 4<<20)
	for _, p := range args {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		st, _ := f.Stat()
		size := st.Size()
		for off := int64(0); off < size; {
			d := nextData(f, off, size)
			if d >= size {
				break
			}
			h := nextHole(f, d, size)
			for d < h {
				n := min(int64(len(buf)), h-d)
				if _, err := f.ReadAt(buf[:n], d); err != nil && err != io.EOF {
					f.Close()
					return err
				}
				d += n
			}
			off = h
		}
		f.Close()
	}
	return nil
}

// cmdCmp compares two files byte for byte, skipping ranges that are holes in
// both. Exit status 0 if equal, 1 (with a message) if not.
func cmdCmp(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: benchtool cmp A B")
	}
	a, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := os.Open(args[1])
	if err != nil {
		return err
	}
	defer b.Close()
	sa, _ := a.Stat()
	sb, _ := b.Stat()
	if sa.Size() != sb.Size() {
		return fmt.Errorf("sizes differ: %d vs %d", sa.Size(), sb.Size())
	}
	size := sa.Size()
	const chunk = 4 << 20
	ba, bb := make([]byte, chunk), make([]byte, chunk)
	for pos := int64(0); pos < size; {
		n := min(nextData(a, pos, size), nextData(b, pos, size))
		if n > pos { // [pos, n) is a hole in both files
			pos = n
			continue
		}
		l := min(int64(chunk), size-pos)
		if _, err := a.ReadAt(ba[:l], pos); err != nil && err != io.EOF {
			return err
		}
		if _, err := b.ReadAt(bb[:l], pos); err != nil && err != io.EOF {
			return err
		}
		if !bytes.Equal(ba[:l], bb[:l]) {
			for i := int64(0); i < l; i++ {
				if ba[i] != bb[i] {
					return fmt.Errorf("files differ at byte %d", pos+i)
				}
			}
		}
		pos += l
	}
	return nil
}
