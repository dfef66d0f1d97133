package vm_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/lab/vm"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
)

// TestBuildImageSlowWriters builds (or finds in the cache) the lab guest
// with apt-cache replaced by a wrapper that writes the real apt-cache's
// output one line at a time with pauses and dies of SIGPIPE when its reader
// has gone, as apt-cache does when its output is split into several writes.
// A pipeline whose reader stops at the first match (awk '...exit', head,
// grep -q) then fails the script under pipefail with exit status 141; the
// build must not depend on how its writers split their output. mawk (awk on
// a default Debian) fills its whole input buffer before it looks at a line,
// which hides the race, so the test runs mawk line by line (-W interactive),
// as gawk and busybox awk read.
func TestBuildImageSlowWriters(t *testing.T) {
	vmtest.Require(t)
	real, err := exec.LookPath("apt-cache")
	if err != nil {
		msg := "no apt-cache here (not a Debian host): the guest build reads the kernel package from it"
		if ci := os.Getenv("CI"); ci != "" && ci != "0" && ci != "false" {
			t.Fatal("CI: " + msg)
		}
		t.Skip("SKIP: " + msg)
	}
	bin := t.TempDir()
	calls := filepath.Join(t.TempDir(), "calls")
	wrapper := `#!/bin/bash
# One line at a time, 30 ms apart; a write to a closed pipe kills this
# script by SIGPIPE (exit status 141), as it would kill apt-cache.
echo "$*" >>` + shellQuote(calls) + `
` + shellQuote(real) + ` "$@" | while IFS= read -r line; do printf '%s\n' "$line"; sleep 0.03; done
`
	if err := os.WriteFile(filepath.Join(bin, "apt-cache"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	if awk, err := exec.LookPath("awk"); err == nil {
		if real, err := filepath.EvalSymlinks(awk); err == nil && filepath.Base(real) == "mawk" {
			w := "#!/bin/sh\nexec " + shellQuote(real) + " -W interactive \"$@\"\n"
			if err := os.WriteFile(filepath.Join(bin, "awk"), []byte(w), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := vm.BuildImage(ctx, vm.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(calls)
	if err != nil {
		t.Fatalf("the apt-cache wrapper was never called: %v", err)
	}
	if !strings.Contains(string(got), "policy ") {
		t.Fatalf("apt-cache policy was not read through the wrapper; calls:\n%s", got)
	}
	for _, p := range []string{img.Kernel, img.Initrd, img.Root} {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Fatalf("built image file %s: %v", p, err)
		}
	}
	t.Logf("guest image %s in %v; apt-cache calls:\n%s", img.Key, img.BuildDuration.Round(time.Millisecond), got)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
