package repo

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// Both encoders write frames the codec's decoder reads back exactly, with
// the content size in the header (klauspost leaves it out of tiny frames)
// and no checksum, appended after whatever
// dst held, whether or not dst has room.
func TestFrameEncodersRoundTrip(t *testing.T) {
	build, err := newEncoder(2)
	if err != nil {
		t.Fatal(err)
	}
	goEnc, err := newGoEncoder(2)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.IgnoreChecksum(true))
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	random := make([]byte, 4<<20)
	rand.Read(random)
	text := bytes.Repeat([]byte("compressible text, again and again. "), 4<<20/36)
	mixed := append(append([]byte(nil), text[:2<<20]...), random[:2<<20]...)
	inputs := map[string][]byte{
		"empty": {}, "one byte": {7}, "4 KiB text": text[:4096], "4 MiB text": text,
		"4 MiB random": random, "4 MiB half text half random": mixed, "zeros": make([]byte, 1<<20),
	}
	for encName, enc := range map[string]frameEncoder{"build": build, "go": goEnc} {
		for name, in := range inputs {
			for _, room := range []int{0, len(in) + len(in)/64 + 1024} {
				t.Run(fmt.Sprintf("%s/%s/room=%d", encName, name, room), func(t *testing.T) {
					prefix := []byte("hdr")
					dst := append(make([]byte, 0, len(prefix)+room), prefix...)
					out, ok := enc.appendFrame(dst, in)
					if !ok {
						t.Fatal("appendFrame failed")
					}
					if !bytes.Equal(out[:len(prefix)], prefix) {
						t.Fatalf("dst's bytes changed: %q", out[:len(prefix)])
					}
					frame := out[len(prefix):]
					var h zstd.Header
					if err := h.Decode(frame); err != nil {
						t.Fatalf("frame header: %v", err)
					}
					if len(in) >= 4096 && (!h.HasFCS || h.FrameContentSize != uint64(len(in))) {
						t.Errorf("content size in header: %v %d, want %d", h.HasFCS, h.FrameContentSize, len(in))
					}
					if h.HasCheckSum {
						t.Error("frame has a content checksum")
					}
					back, err := dec.DecodeAll(frame, nil)
					if err != nil {
						t.Fatalf("decode: %v", err)
					}
					if !bytes.Equal(back, in) {
						t.Fatalf("decoded %d bytes, not the %d encoded", len(back), len(in))
					}
					if name == "4 MiB text" && len(frame) > len(in)/20 {
						t.Errorf("text compressed to %d of %d bytes", len(frame), len(in))
					}
				})
			}
		}
	}
}
