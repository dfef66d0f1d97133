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
func minorFaults(t testing.TB) int {
	st, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: minflt is the 10th field overall.
	f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+2:]))
	n, err := strconv.Atoi(f[7])
	if err != nil {
		t.Fatalf("minflt in /proc/self/stat: %v", err)
	}
	return n
}

// TestKDFFaultsChild is run by TestPrefaultSavesKDFPageFaults in a fresh
// process: it derives one key and prints the page faults that took.
func TestKDFFaultsChild(t *testing.T) {
	mode := os.Getenv("RAKSHA_KDF_FAULTS_CHILD")
	if mode == "" {
		t.Skip("run by TestPrefaultSavesKDFPageFaults")
	}
	before := minorFaults(t)
	if mode == "argon2" {
		argon2.IDKey([]byte("pw"), []byte("0123456789abcdef"), defaultKDF.Time, defaultKDF.Memory, defaultKDF.Threads, 32)
	} else {
		deriveKEK("pw", []byte("0123456789abcdef"), defaultKDF)
	}
	fmt.Printf("faults=%d\n", minorFaults(t)-before)
}

// TestPrefaultSavesKDFPageFaults checks, in fresh processes, what deriveKEK's
// doc comment promises: argon2 alone faults about twice per page of its
// memory, deriveKEK about once.
func TestPrefaultSavesKDFPageFaults(t *testing.T) {
	pages := int(defaultKDF.Memory) * 1024 / os.Getpagesize()
	run := func(mode string) int {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKDFFaultsChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), "RAKSHA_KDF_FAULTS_CHILD="+mode)
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
	if plain < pages*3/2 {
		t.Skipf("argon2 alone faulted only %d times for %d pages: this kernel maps its memory without a fault per page and read (transparent huge pages?), so there is nothing for the prefault to save", plain, pages)
	}
	if derive > pages*5/4 {
		t.Errorf("deriveKEK took %d page faults for %d pages of KDF memory, want about one per page: argon2 did not get the prefaulted memory", derive, pages)
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
