package repo

import (
	"bytes"
	"crypto/rand"
	"testing"
)

func TestSealSkipsCompressingRandomData(t *testing.T) {
	c, err := newCodec(nil, true, 8<<20)
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
