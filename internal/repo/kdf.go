package repo

import (
	"runtime"
	"runtime/metrics"
	"sync"

	"golang.org/x/crypto/argon2"
)

// deriveKEK derives the key-encryption key of a key file with argon2id.
//
// It first makes sure the heap holds p.Memory of mapped memory for argon2's
// block array (prefaultHeap). x/crypto/argon2 XORs every new block into its
// freshly allocated array, so on memory fresh from the kernel each 4 KiB page
// costs two page faults: a read that maps the shared zero page, then
// copy-on-write. On a virtual machine those faults cost more than the hashing:
// with the default 46 MiB a fresh process spent about 60 ms in the KDF, of which
// about 25 ms was arithmetic. The result does not depend on any of this.
func deriveKEK(password string, salt []byte, p KDFParams) []byte {
	prefaultHeap(int(p.Memory) << 10)
	return argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, 32)
}

// prefaultMin is the KDF memory below which prefaultHeap does nothing.
const prefaultMin = 8 << 20

// prefaultHeap makes n bytes of mapped, free memory available to the next
// large allocation, unless the heap already has that much: it writes one byte
// per page of an n-byte buffer from several goroutines (one fault per page,
// spread over the CPUs, instead of two in a row on one), drops the buffer and
// collects it. Go's page allocator then serves an allocation of n bytes from
// those pages (zeroing them, which is cheap next to a fault). It is an
// optimisation only: if the memory is not reused, the cost is one wasted
// pass over n bytes and a garbage collection.
func prefaultHeap(n int) {
	if n < prefaultMin || heapFreeBytes() >= uint64(n) {
		return
	}
	touchPages(n)
	runtime.GC()
}

// touchPages allocates n bytes and writes one byte per page of them, from up
// to four goroutines. The buffer is garbage when it returns.
//
// Where the kernel offers transparent huge pages on request (Linux's
// "madvise" mode, this machine kind's default), the buffer's 2 MiB-aligned
// part is asked for them first, so the writes fault 23 huge pages instead of
// 11,800 small ones for the default 46 MiB. On a freshly booted VM of the
// bench's kind a small-page fault cost about 14 us, and the prefault took
// 160-300 ms with small pages against 20-40 ms with huge ones (the whole
// unlock 190-336 ms against 54-157 ms, 5 runs each; bench/PROFILE.md); on a
// long-running one the two were even.
func touchPages(n int) {
	buf := bigBuffer(n)
	parts := min(max(runtime.GOMAXPROCS(0), 1), 4)
	var wg sync.WaitGroup
	for k := range parts {
		part := buf[k*n/parts : (k+1)*n/parts]
		wg.Go(func() {
			for i := 0; i < len(part); i += 4096 {
				part[i] = 1
			}
		})
	}
	wg.Wait()
}

// heapFreeBytes is the Go heap's free memory that is still backed by
// physical memory (runtime/metrics "/memory/classes/heap/free:bytes").
func heapFreeBytes() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
