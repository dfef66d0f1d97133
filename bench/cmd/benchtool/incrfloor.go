package main

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/argon2"
)

// floorChunk is Raksha's default chunk size, the unit the floor reads and
// hashes.
const floorChunk = 4 << 20

// floorPlan is the work of one change: how many chunks of 4 MiB it touches
// (each is read and keyed-hashed whole) and how many changed bytes must be
// stored (random, incompressible: sealed and written as they are).
type floorPlan struct {
	Chunks  int64
	Changed int64
}

// defaultFloorPlan is the bench's clustered change on its 4 GiB image: 10 runs
// of 4 MiB at unaligned offsets, so 20 chunks touched and 40 MiB changed.
var defaultFloorPlan = floorPlan{Chunks: 20, Changed: 40 << 20}

// planFor returns the floor's plan for a change given as extents (the JSON
// that benchtool mutate writes and Raksha's --changed-extents reads).
func planFor(ext []Extent) (floorPlan, error) {
	touched := map[int64]bool{}
	var p floorPlan
	for _, e := range ext {
		if e.Offset < 0 || e.Length <= 0 || e.Offset > math.MaxInt64-e.Length {
			return floorPlan{}, fmt.Errorf("extent {offset %d, length %d}: want offset >= 0 and length > 0", e.Offset, e.Length)
		}
		for c := e.Offset / floorChunk; c <= (e.Offset+e.Length-1)/floorChunk; c++ {
			touched[c] = true
		}
		p.Changed += e.Length
	}
	p.Chunks = int64(len(touched))
	if p.Chunks == 0 {
		return floorPlan{}, fmt.Errorf("no extents: nothing changed")
	}
	return p, nil
}

// floorSourceChunks is how many chunks `benchtool incrfloor-source` writes; a
// plan with more chunks reads them again from the start (they are in the
// page cache either way).
const floorSourceChunks = 20

// incrFloorRun is one run of the incremental floor: its wall time and its
// wall time up to the end of a `sync` after it, seen from outside as the
// bench sees a backup tool, and the process's own phases (from its first
// line of main).
type incrFloorRun struct {
	WallS   float64 `json:"wall_s"`
	SyncedS float64 `json:"synced_s"`
	KDFS    float64 `json:"kdf_s"`
	StoreS  float64 `json:"store_s"`
	FlushS  float64 `json:"flush_s"`
}

// incrFloorResult is what `benchtool incrfloor` prints: the median, fastest
// and slowest synced time of its runs, and the runs.
type incrFloorResult struct {
	MedianS float64        `json:"median_s"`
	MinS    float64        `json:"min_s"`
	MaxS    float64        `json:"max_s"`
	Runs    []incrFloorRun `json:"runs"`
}

// cmdIncrFloor measures the floor of the bench's clustered incremental on
// this machine: what any tool that keeps Raksha's repository format and
// durability must at least do for that change, done by a lean Go process
// with nothing else in it (no CLI, no repository, no metadata). Each run is a
// new process (`benchtool incrfloor-run`) that derives a key with argon2id at
// Raksha's default cost (46 MiB, 1 pass, 4 lanes; its 46 MiB prefaulted on
// huge pages as Raksha does), then on two workers reads the 20 chunks of
// 4 MiB from a file in the page cache, keyed-hashes each (HMAC-SHA-256),
// seals the 10 changed ones (AES-256-GCM) into one file with O_DIRECT writes
// and fdatasyncs it. It does not compress, and writes 40 MiB where Raksha
// writes the changed bytes plus the compressed rest of their chunks (about
// 45 MB). The parent times each run and the `sync` after it, as the bench
// times a backup, with a pause between runs as long as free page reporting's
// delay, so that each run starts on cold memory as the bench's do.
func cmdIncrFloor(args []string) error {
	fs := flag.NewFlagSet("incrfloor", flag.ExitOnError)
	runs := fs.Int("n", 7, "runs")
	pause := fs.Duration("pause", 3*time.Second, "pause before each run")
	_ = fs.Parse(args)
	if fs.NArg() != 1 || *runs < 1 {
		return fmt.Errorf("usage: benchtool incrfloor [-n N] [-pause D] DIR")
	}
	r, err := incrFloor(fs.Arg(0), *runs, *pause)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// incrFloor runs the floor n times in dir (on the file system under test)
// and removes what it wrote there.
func incrFloor(dir string, n int, pause time.Duration) (incrFloorResult, error) {
	self, err := os.Executable()
	if err != nil {
		return incrFloorResult{}, fmt.Errorf("incrfloor: find this executable: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return incrFloorResult{}, fmt.Errorf("incrfloor: %w", err)
	}
	src := filepath.Join(dir, "incrfloor.src")
	out := filepath.Join(dir, "incrfloor.out")
	defer os.Remove(src)
	defer os.Remove(out)
	if err := writeFloorSource(src); err != nil {
		return incrFloorResult{}, err
	}
	var res incrFloorResult
	for range n {
		time.Sleep(pause)
		c := exec.Command(self, "incrfloor-run", src, out)
		c.Stderr = os.Stderr
		start := time.Now()
		b, err := c.Output()
		wall := time.Since(start)
		if err != nil {
			return res, fmt.Errorf("incrfloor-run: %w", err)
		}
		if err := exec.Command("sync").Run(); err != nil {
			return res, fmt.Errorf("incrfloor: sync: %w", err)
		}
		synced := time.Since(start)
		var run incrFloorRun
		if err := json.Unmarshal(b, &run); err != nil {
			return res, fmt.Errorf("incrfloor-run printed %q: %w", b, err)
		}
		run.WallS, run.SyncedS = wall.Seconds(), synced.Seconds()
		res.Runs = append(res.Runs, run)
		if err := os.Remove(out); err != nil {
			return res, fmt.Errorf("incrfloor: %w", err)
		}
	}
	ts := make([]float64, len(res.Runs))
	for i, r := range res.Runs {
		ts[i] = r.SyncedS
	}
	slices.Sort(ts)
	res.MedianS, res.MinS, res.MaxS = ts[len(ts)/2], ts[0], ts[len(ts)-1]
	return res, nil
}

// writeFloorSource writes the chunks the floor reads (random bytes) through
// the page cache, which keeps them as the bench's image is kept after
// `benchtool warm`, and makes them durable.
func writeFloorSource(path string) error {
	buf := make([]byte, floorChunk)
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("incrfloor: %w", err)
	}
	defer f.Close()
	for i := range floorSourceChunks {
		_, _ = rand.Read(buf)
		if _, err := f.WriteAt(buf, int64(i)*floorChunk); err != nil {
			return fmt.Errorf("incrfloor: write %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("incrfloor: fsync %s: %w", path, err)
	}
	return nil
}

// cmdIncrFloorSource is `benchtool incrfloor-source FILE`.
func cmdIncrFloorSource(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: benchtool incrfloor-source FILE")
	}
	return writeFloorSource(args[0])
}

// cmdIncrFloorRun is one run of the floor (see cmdIncrFloor): SRC is what
// `benchtool incrfloor-source` wrote, OUT is created. With -extents the
// change is the one in that file (bench/run.sh passes the round's clustered
// change), else the bench's clustered change on its 4 GiB image. It prints
// an incrFloorRun with its phases.
func cmdIncrFloorRun(args []string) error {
	start := time.Now()
	fs := flag.NewFlagSet("incrfloor-run", flag.ExitOnError)
	extents := fs.String("extents", "", "the change, as JSON extents")
	_ = fs.Parse(args)
	if fs.NArg() != 2 {
		return fmt.Errorf("usage: benchtool incrfloor-run [-extents FILE] SRC OUT")
	}
	plan := defaultFloorPlan
	if *extents != "" {
		data, err := os.ReadFile(*extents)
		if err != nil {
			return err
		}
		var ext []Extent
		if err := json.Unmarshal(data, &ext); err != nil {
			return fmt.Errorf("%s: %w", *extents, err)
		}
		if plan, err = planFor(ext); err != nil {
			return fmt.Errorf("%s: %w", *extents, err)
		}
	}
	r, err := incrFloorOnce(start, fs.Arg(0), fs.Arg(1), plan)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// sealedLen is the length of n plain bytes sealed in the floor's output:
// nonce, ciphertext and tag, rounded up to O_DIRECT's 4 KiB.
func sealedLen(n int64) int64 { return (n + 12 + 16 + 4095) &^ 4095 }

// storedLen is the length of the floor's output for a plan: the changed
// bytes sealed in pieces of up to a chunk.
func storedLen(p floorPlan) int64 {
	full := p.Changed / floorChunk
	n := full * sealedLen(floorChunk)
	if rest := p.Changed % floorChunk; rest > 0 {
		n += sealedLen(rest)
	}
	return n
}

// incrFloorOnce does the floor's work (see cmdIncrFloor) for plan, reading
// the chunks from srcPath and writing the sealed changed bytes to a new file
// outPath, and returns its phases measured from start.
func incrFloorOnce(start time.Time, srcPath, outPath string, plan floorPlan) (incrFloorRun, error) {
	src, err := os.Open(srcPath)
	if err != nil {
		return incrFloorRun{}, err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return incrFloorRun{}, err
	}
	srcChunks := st.Size() / floorChunk
	if srcChunks == 0 || plan.Chunks <= 0 || plan.Changed <= 0 || plan.Changed > plan.Chunks*floorChunk {
		return incrFloorRun{}, fmt.Errorf("incrfloor: source %s has %d chunks; plan %+v", srcPath, srcChunks, plan)
	}

	// The unlock: argon2id at Raksha's default cost, on memory prefaulted
	// on huge pages from several goroutines (internal/repo/kdf.go).
	const kdfMemory = 46 << 10 // KiB
	pre := alignedBlock(kdfMemory<<10, 2<<20)
	_ = syscall.Madvise(pre, syscall.MADV_HUGEPAGE)
	var wg sync.WaitGroup
	for k := range 4 {
		part := pre[k*len(pre)/4 : (k+1)*len(pre)/4]
		wg.Go(func() {
			for i := 0; i < len(part); i += 4096 {
				part[i] = 1
			}
		})
	}
	wg.Wait()
	pre = nil
	runtime.GC()
	salt := make([]byte, 16)
	key := argon2.IDKey([]byte("incremental floor"), salt, 1, kdfMemory, 4, 64)
	runtime.GC() // the chunk buffers reuse the KDF's pages, as in Raksha
	kdf := time.Since(start)

	block, err := aes.NewCipher(key[:32])
	if err != nil {
		return incrFloorRun{}, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return incrFloorRun{}, err
	}
	fd, err := syscall.Open(outPath, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_TRUNC|syscall.O_DIRECT|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return incrFloorRun{}, fmt.Errorf("open %s with O_DIRECT: %w", outPath, err)
	}
	defer syscall.Close(fd)

	// Two workers, each with one read and one sealed buffer: read a chunk,
	// hash it, and seal and write the next piece of the changed bytes (up to
	// a chunk) while any is left.
	var next, pos atomic.Int64
	errs := make([]error, 2)
	for w := range 2 {
		wg.Go(func() {
			in := make([]byte, floorChunk)
			sealed := alignedBlock(int(sealedLen(floorChunk)), 4096)
			mac := hmac.New(sha256.New, key[32:])
			var sum [sha256.Size]byte
			for {
				i := next.Add(1) - 1
				if i >= plan.Chunks {
					return
				}
				if _, err := src.ReadAt(in, i%srcChunks*floorChunk); err != nil {
					errs[w] = err
					return
				}
				mac.Reset()
				mac.Write(in)
				mac.Sum(sum[:0])
				piece := min(plan.Changed-i*floorChunk, floorChunk)
				if piece <= 0 {
					continue
				}
				nonce := sealed[:gcm.NonceSize()]
				copy(nonce, sum[:])
				gcm.Seal(sealed[len(nonce):len(nonce)], nonce, in[:piece], nil)
				n := sealedLen(piece)
				at := pos.Add(n) - n
				if _, err := syscall.Pwrite(fd, sealed[:n], at); err != nil {
					errs[w] = fmt.Errorf("write %s: %w", outPath, err)
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return incrFloorRun{}, err
		}
	}
	stored := time.Since(start)
	if err := syscall.Fdatasync(fd); err != nil {
		return incrFloorRun{}, fmt.Errorf("fdatasync %s: %w", outPath, err)
	}
	flushed := time.Since(start)
	return incrFloorRun{KDFS: kdf.Seconds(), StoreS: (stored - kdf).Seconds(), FlushS: (flushed - stored).Seconds()}, nil
}
