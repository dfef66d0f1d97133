package repo

import (
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func TestSealSkipsCompressingRandomData(t *testing.T) {
	c, err := newCodec(false, true, 8<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	random := make([]byte, 1<<20)
	rand.Read(random)
	text := bytes.Repeat([]byte("compressible text, again and again. "), 1<<20/36)
	for _, tc := range []struct {
		name string
		data []byte
		flag byte
	}{{"random", random, flagRaw}, {"text", text, flagZstd}, {"small random", random[:1000], flagRaw}} {
		obj := c.seal(tc.data, []byte("aad"), nil)
		if obj[4] != tc.flag {
			t.Errorf("%s: stored with flag %d, want %d", tc.name, obj[4], tc.flag)
		}
		back, err := c.open(obj, []byte("aad"))
		if err != nil || !bytes.Equal(back, tc.data) {
			t.Errorf("%s: round trip failed: %v", tc.name, err)
		}
	}
}

func TestSparseChunkRoundTrip(t *testing.T) {
	random := make([]byte, 1<<20)
	rand.Read(random)
	text := bytes.Repeat([]byte("compressible text, again and again. "), 1<<20/36)
	mk := func(size int, fill func(b []byte)) []byte { b := make([]byte, size); fill(b); return b }
	cases := []struct {
		name   string
		data   []byte
		sparse bool
	}{
		{"scattered random blocks", mk(4<<20, func(b []byte) {
			for i := 0; i < len(b); i += 409600 {
				copy(b[i:i+4096], random[i%len(random):])
			}
		}), true},
		{"text then zeros", mk(1<<20, func(b []byte) { copy(b, text[:300000]) }), true},
		{"zeros then random, odd size", mk(1<<20+123, func(b []byte) { copy(b[700000:], random) }), true},
		{"random tail block partial", mk(200000, func(b []byte) { copy(b[196608:], random) }), true},
		{"few zero blocks", mk(1<<20, func(b []byte) { copy(b, random); clear(b[4096 : 4096*10]) }), false},
		{"no zero block", random, false},
		{"small", mk(8192, func(b []byte) { b[5] = 1 }), false},
	}
	for _, enc := range []bool{false, true} {
		var aead cipher.AEAD
		if enc {
			var err error
			if aead, err = newGCM(randomBytes(32)); err != nil {
				t.Fatal(err)
			}
		}
		for _, compress := range []bool{false, true} {
			c, err := newCodec(enc, compress, 8<<20, 2)
			if err != nil {
				t.Fatal(err)
			}
			c.aead = aead
			for _, tc := range cases {
				obj := c.sealChunk(tc.data, []byte("aad"), nil)
				flag := obj[4]
				if enc {
					// decrypt to look at the flag
					plainObj := append([]byte(nil), obj...)
					ct, err := aead.Open(nil, plainObj[4:16], plainObj[16:], []byte("aad"))
					if err != nil {
						t.Fatal(err)
					}
					flag = ct[0]
				}
				if got := flag == flagSparse; got != tc.sparse {
					t.Errorf("enc %v compress %v %s: sparse %v, want %v", enc, compress, tc.name, got, tc.sparse)
				}
				for _, dst := range [][]byte{nil, make([]byte, 0, 8<<20), make([]byte, 0, 100)} {
					back, _, err := c.openInto(append([]byte(nil), obj...), []byte("aad"), dst)
					if err != nil || !bytes.Equal(back, tc.data) {
						t.Errorf("enc %v compress %v %s: round trip failed: %v", enc, compress, tc.name, err)
					}
				}
				if _, err := c.open(append([]byte(nil), obj...), []byte("other")); !errors.Is(err, ErrCorrupt) {
					t.Errorf("%s: wrong aad opened: %v", tc.name, err)
				}
			}
		}
	}
}

func TestSparseContainerRejectsDamage(t *testing.T) {
	c, err := newCodec(false, false, 8<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	// A well-formed sparse container for 5 blocks (20000 bytes), blocks
	// 1 and 3 zero: 3 data blocks, the last one partial (20000-16384 = 3616).
	build := func(size uint64, zmap []byte, flag byte, data []byte) []byte {
		container := []byte{flagSparse}
		container = binary.AppendUvarint(container, size)
		container = append(container, zmap...)
		container = append(container, flag)
		container = append(container, data...)
		return container
	}
	good := build(20000, []byte{0b01010}, flagRaw, bytes.Repeat([]byte{7}, 2*4096+3616))
	out, err := c.openSparse(good[1:], nil)
	if err != nil || len(out) != 20000 || out[0] != 7 || out[4096] != 0 || out[8192] != 7 || out[12288] != 0 || out[19999] != 7 {
		t.Fatalf("good container: %v", err)
	}
	for name, bad := range map[string][]byte{
		"bits past the end":  build(20000, []byte{0b101010}, flagRaw, bytes.Repeat([]byte{7}, 2*4096+3616)),
		"too little data":    build(20000, []byte{0b01010}, flagRaw, bytes.Repeat([]byte{7}, 2*4096)),
		"too much data":      build(20000, []byte{0b01010}, flagRaw, bytes.Repeat([]byte{7}, 3*4096+3616)),
		"unknown inner flag": build(20000, []byte{0b01010}, 9, bytes.Repeat([]byte{7}, 2*4096+3616)),
		"no map":             build(20000, nil, flagRaw, nil)[:4],
		"zero length":        build(0, nil, flagRaw, nil),
		"too long":           build(1<<40, []byte{0}, flagRaw, nil),
		"bad zstd":           build(20000, []byte{0b01010}, flagZstd, []byte("not zstd")),
	} {
		if _, err := c.openSparse(bad[1:], nil); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %v, want ErrCorrupt", name, err)
		}
	}
}

func TestSparseSampleIsTheMiddleOfTheGatheredBlocks(t *testing.T) {
	random := make([]byte, 1<<20)
	rand.Read(random)
	// Non-zero runs of 1, 3 and 40 blocks, a partial last block, zeros between.
	plain := make([]byte, 2<<20+777)
	for _, r := range [][2]int{{2, 3}, {10, 13}, {100, 140}, {300, 301}, {400, 470}} {
		copy(plain[r[0]*zeroBlock:r[1]*zeroBlock], random)
	}
	copy(plain[len(plain)-500:], random)
	zmap, nblocks, zeros := zeroMap(plain)
	if zeros < sparseMinZeroBlocks {
		t.Fatalf("test data has only %d zero blocks", zeros)
	}
	gathered := appendNonZero(nil, plain, zmap, nblocks)
	if want := (1+3+40+1+70)*zeroBlock + 777; len(gathered) != want {
		t.Fatalf("gathered %d bytes, want %d", len(gathered), want)
	}
	got := sparseSample(plain, zmap, nblocks)
	want := gathered[len(gathered)/2 : len(gathered)/2+sampleSize]
	if !bytes.Equal(got, want) {
		t.Fatalf("sample of %d bytes is not the middle %d bytes of the gathered blocks", len(got), len(want))
	}
	small := make([]byte, 1<<20)
	copy(small[8192:], random[:3*sampleSize])
	zmap, nblocks, _ = zeroMap(small)
	if s := sparseSample(small, zmap, nblocks); s != nil {
		t.Fatalf("%d non-zero bytes gave a sample of %d bytes, want none", 3*sampleSize, len(s))
	}
}

func TestSparsePayloadFlag(t *testing.T) {
	random := make([]byte, 1<<20)
	rand.Read(random)
	text := bytes.Repeat([]byte("compressible text, again and again. "), 1<<20/36)
	c, err := newCodec(false, true, 8<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		fill []byte
		flag byte
	}{{"random", random[:700000], flagRaw}, {"text", text[:700000], flagZstd}, {"short random, tried and stored raw", random[:12*zeroBlock], flagRaw}} {
		plain := make([]byte, 4<<20)
		copy(plain[1<<20:], tc.fill)
		obj := c.sealChunk(plain, nil, nil)
		container := obj[4 : len(obj)-32]
		if container[0] != flagSparse {
			t.Fatalf("%s: flag %d, want sparse", tc.name, container[0])
		}
		n, k := binary.Uvarint(container[1:])
		if n != uint64(len(plain)) || k <= 0 {
			t.Fatalf("%s: sparse length %d", tc.name, n)
		}
		if got := container[1+k+(len(plain)/zeroBlock+7)/8]; got != tc.flag {
			t.Errorf("%s: payload flag %d, want %d", tc.name, got, tc.flag)
		}
		back, err := c.open(obj, nil)
		if err != nil || !bytes.Equal(back, plain) {
			t.Errorf("%s: round trip failed: %v", tc.name, err)
		}
	}
}

// TestOpenZstdWithChecksum: objects written before the codec dropped zstd's
// content checksum (frames with an xxhash trailer) still open.
func TestOpenZstdWithChecksum(t *testing.T) {
	aead, err := newGCM(randomBytes(32))
	if err != nil {
		t.Fatal(err)
	}
	c, err := newCodec(true, true, 8<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	c.aead = aead
	old, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(true))
	if err != nil {
		t.Fatal(err)
	}
	plain := bytes.Repeat([]byte("older objects carry a checksum; "), 1<<14)
	container := append([]byte{flagZstd}, old.EncodeAll(plain, nil)...)
	hdr := len(c.header(nil))
	obj := c.finish(append(c.header(nil), container...), hdr, []byte("aad"))
	got, err := c.open(obj, []byte("aad"))
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open of a frame with a checksum: %v", err)
	}
	// (new frames have none: TestFrameEncodersRoundTrip)
}
