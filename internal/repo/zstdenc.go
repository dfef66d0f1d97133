package repo

import "github.com/klauspost/compress/zstd"

// frameEncoder appends one zstd frame holding src to dst. Every
// implementation writes standard frames with the content size in the frame
// header and no content checksum, which the codec's klauspost/compress
// decoder reads; ok is false (and dst unchanged) when it could not encode,
// and the caller then stores src raw. Safe for concurrent use.
type frameEncoder interface {
	appendFrame(dst, src []byte) (out []byte, ok bool)
}

// goEncoder is klauspost/compress's pure-Go encoder at SpeedFastest: the
// encoder of builds without cgo, and the reference the cgo one is tested
// against.
type goEncoder struct{ enc *zstd.Encoder }

// newGoEncoder returns a goEncoder whose calls run on up to n goroutines at
// once (each keeps its own window; fewer make the backup workers take
// turns).
func newGoEncoder(n int) (goEncoder, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(max(n, 1)), zstd.WithEncoderCRC(false))
	if err != nil {
		return goEncoder{}, err
	}
	return goEncoder{enc: enc}, nil
}

func (e goEncoder) appendFrame(dst, src []byte) ([]byte, bool) {
	return e.enc.EncodeAll(src, dst), true
}
