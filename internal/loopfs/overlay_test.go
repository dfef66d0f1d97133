package loopfs

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// TestOverlay: random writes (unaligned, across block edges, at the end of
// a volume whose size is no multiple of the block) read back as on a
// reference copy; the base is never written.
func TestOverlay(t *testing.T) {
	const size = 1<<20 + 1234
	rng := rand.New(rand.NewPCG(1, 2))
	base := make([]byte, size)
	for i := range base {
		base[i] = byte(rng.Uint32())
	}
	orig := bytes.Clone(base)
	ref := bytes.Clone(base)
	o, err := newOverlay(bytes.NewReader(base), size, t.TempDir())
	must(t, err)
	defer o.Close()
	for i := 0; i < 300; i++ {
		n := 1 + rng.IntN(3*overlayBlock)
		off := rng.Int64N(size - int64(n) + 1)
		if i%50 == 0 {
			off = size - int64(n) // the last, partial block
		}
		p := make([]byte, n)
		for k := range p {
			p[k] = byte(rng.Uint32())
		}
		w, err := o.WriteAt(p, off)
		must(t, err)
		if w != n {
			t.Fatalf("wrote %d of %d", w, n)
		}
		copy(ref[off:], p)
		// a random read
		rn := 1 + rng.IntN(5*overlayBlock)
		roff := rng.Int64N(size)
		got := make([]byte, rn)
		r, err := o.ReadAt(got, roff)
		want := ref[roff:min(roff+int64(rn), size)]
		if r != len(want) || !bytes.Equal(got[:r], want) {
			t.Fatalf("read %d at %d: %d bytes, equal %v", rn, roff, r, bytes.Equal(got[:r], want))
		}
		if roff+int64(rn) > size && !errors.Is(err, io.EOF) {
			t.Fatalf("read past the end: %v", err)
		}
	}
	all := make([]byte, size)
	_, err = o.ReadAt(all, 0)
	must(t, err)
	if !bytes.Equal(all, ref) || !bytes.Equal(base, orig) {
		t.Fatal("overlay differs from the reference, or the base was written")
	}
	if _, err := o.WriteAt([]byte{1}, size); err == nil {
		t.Fatal("write past the end accepted")
	}
	t.Logf("overlay holds %d KiB", o.Bytes()>>10)
}
