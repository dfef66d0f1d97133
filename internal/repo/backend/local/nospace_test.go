package local

import (
	"io/fs"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

// TestSaveNoSpaceIsPermanent: a save that meets a full file system returns a
// permanent error (the retry wrapper does not retry it for seconds) that says
// no space is left and names the repository's directory and the file.
func TestSaveNoSpaceIsPermanent(t *testing.T) {
	b, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, errno := range []unix.Errno{unix.ENOSPC, unix.EDQUOT} {
		err := b.saveErr("chunks/ab/abcd", &fs.PathError{Op: "write", Path: b.root + "/chunks/ab/.tmp-1", Err: errno})
		if !backend.IsPermanent(err) || !strings.Contains(err.Error(), "no space left for the repository "+b.root) ||
			!strings.Contains(err.Error(), ".tmp-1") {
			t.Errorf("%v: %v (permanent %v)", errno, err, backend.IsPermanent(err))
		}
	}
}
