package repo

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/argon2"
)

func TestDeriveKEKIsArgon2id(t *testing.T) {
	salt := []byte("0123456789abcdef")
	for _, p := range []KDFParams{cheapKDF, defaultKDF, {Time: 2, Memory: 16 << 10, Threads: 1}} {
		got := deriveKEK("pw", salt, p)
		want := argon2.IDKey([]byte("pw"), salt, p.Time, p.Memory, p.Threads, 32)
		if !bytes.Equal(got, want) {
			t.Errorf("%+v: derived key differs from argon2id's", p)
		}
	}
}

// minorFaults is this process's minor page fault count (/proc/self/stat).
func minorFaults() (int, error) {
	st, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses: minflt is the 10th field overall.
	f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+2:]))
	n, err := strconv.Atoi(f[7])
	if err != nil {
		return 0, fmt.Errorf("minflt in /proc/self/stat: %w", err)
	}
	return n, nil
}

// kdfFaultsChildEnv makes the test binary, from TestMain, derive one key
// and print the page faults that took, instead of running tests: "argon2"
// calls argon2 directly, anything else deriveKEK.
const kdfFaultsChildEnv = "RAKSHA_KDF_FAULTS_CHILD"

// kdfFaultsChild is the test binary as TestPrefaultSavesKDFPageFaults's
// fresh child process; it returns the exit code.
func kdfFaultsChild(mode string) int {
	before, err := minorFaults()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if mode == "argon2" {
		argon2.IDKey([]byte("pw"), []byte("0123456789abcdef"), defaultKDF.Time, defaultKDF.Memory, defaultKDF.Threads, 32)
	} else {
		deriveKEK("pw", []byte("0123456789abcdef"), defaultKDF)
	}
	after, err := minorFaults()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("faults=%d\n", after-before)
	return 0
}

// TestPrefaultSavesKDFPageFaults checks, in fresh processes, what deriveKEK's
// doc comment promises: where argon2 alone faults about twice per page of
// its memory (read, then copy-on-write), deriveKEK faults about once; and
// on any kernel deriveKEK takes no more faults than argon2 alone.
func TestPrefaultSavesKDFPageFaults(t *testing.T) {
	pages := int(defaultKDF.Memory) * 1024 / os.Getpagesize()
	run := func(mode string) int {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), kdfFaultsChildEnv+"="+mode)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child %s: %v\n%s", mode, err, out)
		}
		i := bytes.Index(out, []byte("faults="))
		if i < 0 {
			t.Fatalf("child %s printed no fault count:\n%s", mode, out)
		}
		var n int
		fmt.Sscanf(string(out[i:]), "faults=%d", &n)
		return n
	}
	plain, derive := run("argon2"), run("derive")
	t.Logf("%d pages of KDF memory: argon2 alone %d page faults, deriveKEK %d", pages, plain, derive)
	if plain >= pages*3/2 {
		if derive > pages*5/4 {
			t.Errorf("deriveKEK took %d page faults for %d pages of KDF memory, want about one per page: argon2 did not get the prefaulted memory", derive, pages)
		}
		return
	}
	// A kernel that maps this memory without a fault per page and read
	// (transparent huge pages?): nothing to save, but nothing to lose.
	if derive > plain*5/4 {
		t.Errorf("deriveKEK took %d page faults, argon2 alone %d: the prefault made it worse", derive, plain)
	}
}

func TestBufListKeepsBuffersAcrossCollections(t *testing.T) {
	made := 0
	l := newBufList(2, func() []byte { made++; return make([]byte, 10) })
	a, b, c := l.get(), l.get(), l.get()
	if made != 3 {
		t.Fatalf("%d buffers made for 3 gets on an empty list", made)
	}
	l.put(a)
	l.put(b)
	l.put(c) // beyond the list's capacity: dropped
	for range 2 {
		if got := l.get(); got != a && got != b {
			t.Fatal("get returned a buffer that was not put")
		}
	}
	if l.get(); made != 4 {
		t.Fatalf("%d buffers made, want 4: the list kept more than its capacity", made)
	}
}
