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
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/crypto/argon2"
)

// The clustered incremental's shape in the bench (bench/run.sh): 10 runs of
// 4 MiB changed at unaligned offsets, so 20 chunks of 4 MiB are read and
// hashed and at least the 40 MiB of changed (random, incompressible) bytes
// are stored.
const (
	floorChunk      = 4 << 20
	floorReadChunks = 20
	floorNewChunks  = 10
)

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

// writeFloorSource writes the chunks the floor reads (random bytes), makes
// them durable and reads them back, so that they are in the page cache as
// the bench's image is after `benchtool warm`.
func writeFloorSource(path string) error {
	buf := make([]byte, floorChunk)
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("incrfloor: %w", err)
	}
	defer f.Close()
	for i := range floorReadChunks {
		_, _ = rand.Read(buf)
		if _, err := f.WriteAt(buf, int64(i)*floorChunk); err != nil {
			return fmt.Errorf("incrfloor: write %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("incrfloor: fsync %s: %w", path, err)
	}
	for i := range floorReadChunks {
		if _, err := f.ReadAt(buf, int64(i)*floorChunk); err != nil {
			return fmt.Errorf("incrfloor: read %s: %w", path, err)
		}
	}
	return nil
}

// cmdIncrFloorRun is one run of the floor (see cmdIncrFloor): SRC holds the
// 20 chunks, OUT is created. It prints an incrFloorRun with its phases.
func cmdIncrFloorRun(args []string) error {
	start := time.Now()
	if len(args) != 2 {
		return fmt.Errorf("usage: benchtool incrfloor-run SRC OUT")
	}
	r, err := incrFloorOnce(start, args[0], args[1])
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// sealedChunkLen is the length of one sealed chunk in the floor's output:
// nonce, ciphertext and tag, rounded up to O_DIRECT's 4 KiB.
const sealedChunkLen = (floorChunk + 12 + 16 + 4095) &^ 4095

// incrFloorOnce does the floor's work (see cmdIncrFloor) on the chunks in
// srcPath, writing the sealed ones to a new file outPath, and returns its
// phases measured from start.
func incrFloorOnce(start time.Time, srcPath, outPath string) (incrFloorRun, error) {
	src, err := os.Open(srcPath)
	if err != nil {
		return incrFloorRun{}, err
	}
	defer src.Close()

	// The unlock: argon2id at Raksha's default cost, on memory prefaulted
	// on huge pages from several goroutines (internal/repo/kdf.go).
	const kdfMemory = 46 << 10 // KiB
	pre := alignedBlock(kdfMemory<<10, 2<<20)
	_ = syscall.Madvise(pre, 14) // MADV_HUGEPAGE
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
	// hash it, and seal and write it if it is one of the changed ones.
	sealedLen := sealedChunkLen
	var next, pos atomic.Int64
	errs := make([]error, 2)
	for w := range 2 {
		wg.Go(func() {
			in := make([]byte, floorChunk)
			sealed := alignedBlock(sealedLen, 4096)
			mac := hmac.New(sha256.New, key[32:])
			var sum [sha256.Size]byte
			for {
				i := next.Add(1) - 1
				if i >= floorReadChunks {
					return
				}
				if _, err := src.ReadAt(in, i*floorChunk); err != nil {
					errs[w] = err
					return
				}
				mac.Reset()
				mac.Write(in)
				mac.Sum(sum[:0])
				if i%2 == 1 { // 10 of the 20 chunks hold changed bytes
					continue
				}
				nonce := sealed[:gcm.NonceSize()]
				copy(nonce, sum[:])
				gcm.Seal(sealed[len(nonce):len(nonce)], nonce, in, nil)
				at := pos.Add(int64(sealedLen)) - int64(sealedLen)
				if _, err := syscall.Pwrite(fd, sealed, at); err != nil {
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

// alignedBlock returns n bytes whose start is aligned to align (a power of
// two), as O_DIRECT and huge pages need.
func alignedBlock(n, align int) []byte {
	raw := make([]byte, n+align)
	off := (align - int(uintptr(unsafe.Pointer(&raw[0]))%uintptr(align))) % align
	return raw[off : off+n]
}
