//go:build !linux

package repo

// adviseHugePages does nothing where transparent huge pages cannot be asked
// for.
func adviseHugePages([]byte) {}

// bigBuffer returns a zeroed n-byte buffer.
func bigBuffer(n int) []byte { return make([]byte, n) }
