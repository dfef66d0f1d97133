package repo

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// hugePage is the size of an x86-64 (and arm64 4K-granule) transparent huge
// page.
const hugePage = 2 << 20

// bigBuffer returns a zeroed n-byte buffer whose 2 MiB-aligned part the
// kernel is asked to back with transparent huge pages: for the chunk-sized
// buffers a backup or restore keeps for its whole run, whose first writes
// would otherwise fault every 4 KiB page (bench/PROFILE.md: about 14 us a
// fault on a freshly booted VM of the bench's kind).
func bigBuffer(n int) []byte {
	b := make([]byte, n)
	adviseHugePages(b)
	return b
}

// adviseHugePages asks the kernel to back buf's 2 MiB-aligned part with
// transparent huge pages (MADV_HUGEPAGE). It is advice: when the kernel
// refuses or has THP off, nothing changes.
func adviseHugePages(buf []byte) {
	if len(buf) < 2*hugePage {
		return
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
	start := (p + hugePage - 1) &^ (hugePage - 1)
	end := (p + uintptr(len(buf))) &^ (hugePage - 1)
	if end <= start {
		return
	}
	_ = unix.Madvise(buf[start-p:end-p], unix.MADV_HUGEPAGE)
}
