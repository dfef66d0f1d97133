package repo

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// threadCPU reports the benchmark goroutine's own CPU time per op as
// "cpu-ns/op" (getrusage RUSAGE_THREAD, the goroutine locked to its
// thread): unlike ns/op it does not grow when other work on the machine
// takes the cores away. Call the returned function after the loop.
func threadCPU(b *testing.B) func(ops int) {
	runtime.LockOSThread()
	start := threadTime()
	return func(ops int) {
		if ops > 0 {
			b.ReportMetric(float64((threadTime()-start).Nanoseconds())/float64(ops), "cpu-ns/op")
		}
		runtime.UnlockOSThread()
	}
}

func threadTime() time.Duration {
	var ru syscall.Rusage
	const rusageThread = 1 // RUSAGE_THREAD
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// sealBenchChunks returns the chunks the seal benchmarks work on: with
// RAKSHA_BENCH_IMAGE=FILE (e.g. the bench's ext4 image), up to 16 of its
// non-hole 4 MiB chunks spread evenly over it (real files: text, binaries,
// compressed data, zero blocks); otherwise a synthetic mix.
func sealBenchChunks(b *testing.B) [][]byte {
	const cs = 4 << 20
	if path := os.Getenv("RAKSHA_BENCH_IMAGE"); path != "" {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			b.Fatal(err)
		}
		n := st.Size() / cs
		var out [][]byte
		for i := int64(0); i < n && len(out) < 16; i++ {
			buf := make([]byte, cs)
			// every 7th chunk (coprime to the usual layouts), wrapping
			if _, err := f.ReadAt(buf, (i*7%n)*cs); err != nil {
				b.Fatal(err)
			}
			if !isZero(buf) {
				out = append(out, buf)
			}
		}
		if len(out) == 0 {
			b.Fatal("no data in", path)
		}
		return out
	}
	im := &image{rng: newImage(&testing.T{}, 3).rng}
	text := []byte("the quick brown fox jumps over the lazy dog, again and again; ")
	var out [][]byte
	for k := range 8 {
		buf := make([]byte, cs)
		switch k % 4 {
		case 0: // random
			copy(buf, im.random(cs))
		case 1: // text
			for i := 0; i < cs; i += len(text) {
				copy(buf[i:], text)
			}
		case 2: // random with zero blocks (sparse)
			copy(buf[:cs/2], im.random(cs/2))
		case 3: // text and random halves
			copy(buf, im.random(cs/2))
			for i := cs / 2; i < cs; i += len(text) {
				copy(buf[i:], text)
			}
		}
		out = append(out, buf)
	}
	return out
}

// BenchmarkSealChunk measures sealChunk (zero map, compression decision,
// zstd, AES-GCM) on 4 MiB chunks; BenchmarkHashChunk the chunk id. One op
// is one pass over all the chunks.
func BenchmarkSealChunk(b *testing.B) {
	chunks := sealBenchChunks(b)
	c, err := newCodec(true, true, 64<<20, 1)
	if err != nil {
		b.Fatal(err)
	}
	c.aead, err = newGCM(make([]byte, 32))
	if err != nil {
		b.Fatal(err)
	}
	var total, stored int64
	for _, ch := range chunks {
		total += int64(len(ch))
	}
	b.SetBytes(total)
	buf := make([]byte, 0, sealedCap(4<<20))
	i := 0
	done := threadCPU(b)
	defer func() { done(i) }()
	for b.Loop() {
		stored = 0
		for _, ch := range chunks {
			stored += int64(len(c.sealChunk(ch, chunkAAD(ChunkID{}), buf)))
		}
		i++
	}
	b.ReportMetric(float64(stored)/float64(total), "ratio")
}

func BenchmarkHashChunk(b *testing.B) {
	chunks := sealBenchChunks(b)
	h := newHasher(make([]byte, 32))
	var total int64
	for _, ch := range chunks {
		total += int64(len(ch))
	}
	b.SetBytes(total)
	i := 0
	done := threadCPU(b)
	defer func() { done(i) }()
	for b.Loop() {
		for _, ch := range chunks {
			h.sum(ch)
		}
		i++
	}
}

// BenchmarkOpenChunk measures openInto (AES-GCM, zstd decoding, sparse
// spreading) of the chunks BenchmarkSealChunk seals: a restore's CPU work
// per chunk. The sub-benchmarks decode into a buffer of exactly the chunk
// size (what restores used before decodeSlack) and one with decodeSlack.
func BenchmarkOpenChunk(b *testing.B) {
	chunks := sealBenchChunks(b)
	c, err := newCodec(true, true, 64<<20, 1)
	if err != nil {
		b.Fatal(err)
	}
	c.aead, err = newGCM(make([]byte, 32))
	if err != nil {
		b.Fatal(err)
	}
	sealed := make([][]byte, len(chunks))
	var total int64
	for k, ch := range chunks {
		sealed[k] = c.sealChunk(ch, chunkAAD(ChunkID{}), nil)
		total += int64(len(ch))
	}
	for _, slack := range []int{0, decodeSlack} {
		b.Run(fmt.Sprintf("slack=%d", slack), func(b *testing.B) {
			b.SetBytes(total)
			data := make([]byte, 0, sealedCap(4<<20))
			dst := alignedBuffer(4<<20 + slack)
			i := 0
			done := threadCPU(b)
			defer func() { done(i) }()
			for b.Loop() {
				for k := range sealed {
					data = append(data[:0], sealed[k]...) // openInto decrypts in place
					plain, _, err := c.openInto(data, chunkAAD(ChunkID{}), dst)
					if err != nil || !bytes.Equal(plain, chunks[k]) {
						b.Fatal("open:", err)
					}
				}
				i++
			}
		})
	}
}

// BenchmarkFrameEncoder compares the build's zstd encoder (the C library at
// level 1 with cgo) with klauspost's pure-Go SpeedFastest on the same chunks:
// cpu-ns/op and the stored fraction ("stored-%").
func BenchmarkFrameEncoder(b *testing.B) {
	chunks := sealBenchChunks(b)
	build, err := newEncoder(1)
	if err != nil {
		b.Fatal(err)
	}
	goEnc, err := newGoEncoder(1)
	if err != nil {
		b.Fatal(err)
	}
	var total int
	for _, c := range chunks {
		total += len(c)
	}
	for _, tc := range []struct {
		name string
		enc  frameEncoder
	}{{"build", build}, {"go", goEnc}} {
		b.Run(tc.name, func(b *testing.B) {
			out := make([]byte, 0, 5<<20)
			b.SetBytes(int64(total))
			done := threadCPU(b)
			var stored int
			for b.Loop() {
				stored = 0
				for _, c := range chunks {
					o, _ := tc.enc.appendFrame(out[:0], c)
					stored += len(o)
				}
			}
			done(b.N)
			b.ReportMetric(100*float64(stored)/float64(total), "stored-%")
		})
	}
}
