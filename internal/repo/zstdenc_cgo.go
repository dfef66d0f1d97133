//go:build cgo

package repo

import (
	"slices"
	"sync"

	"github.com/DataDog/zstd"
)

// cLevel is the reference C library's level 1, its fastest positive level.
// On the bench image's chunks it costs 2.5x less CPU than klauspost's
// SpeedFastest (416 vs 160 MB/s per core) for 2 % more stored bytes
// (bench/PROFILE.md); the negative levels save little more CPU and store
// 12 % and more.
const cLevel = 1

// cEncoder is the reference zstd library (through cgo) at cLevel: the
// encoder of builds with cgo, which are all the project's builds. Only
// encoding runs in C, on bytes Raksha read itself; decoding, which sees the
// repository's bytes, stays in Go.
type cEncoder struct {
	ctxs sync.Pool // zstd.Ctx: a compression context per concurrent call
}

// newEncoder returns the build's frame encoder; n is how many calls may run
// at once (the pool grows as needed, so it is only a hint here).
func newEncoder(int) (frameEncoder, error) {
	e := &cEncoder{}
	e.ctxs.New = func() any { return zstd.NewCtx() }
	return e, nil
}

func (e *cEncoder) appendFrame(dst, src []byte) ([]byte, bool) {
	bound := zstd.CompressBound(len(src))
	grown := slices.Grow(dst, bound)
	room := grown[len(dst) : len(dst)+bound]
	ctx := e.ctxs.Get().(zstd.Ctx)
	out, err := ctx.CompressLevel(room, src, cLevel)
	e.ctxs.Put(ctx)
	if err != nil || len(out) == 0 || &out[0] != &room[0] {
		return dst, false
	}
	return grown[:len(dst)+len(out)], true
}
