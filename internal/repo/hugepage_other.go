//go:build !linux

package repo

// adviseHugePages does nothing where transparent huge pages cannot be asked
// for.
func adviseHugePages([]byte) {}
