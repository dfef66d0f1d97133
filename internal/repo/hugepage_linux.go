package repo

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// hugePage is the size of an x86-64 (and arm64 4K-granule) transparent huge
// page.
const hugePage = 2 << 20

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
