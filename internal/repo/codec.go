package repo

import (
	"bytes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Stored object layout (every object but config and keys):
//
//	encrypted:   "RK1E" | nonce(12) | AES-256-GCM(container, aad)
//	unencrypted: "RK1P" | container | SHA-256(aad | container)
//	container:   flag(1: 0 raw, 1 zstd, 2 sparse) | payload
//	sparse:      uvarint(plain length) | zero map | flag(1: 0 raw, 1 zstd) | payload
//
// The aad binds an object to its logical identity (a chunk to its id, a page
// to its manifest and number), so a swapped or truncated object fails to open.
//
// A sparse container (chunks with at least sparseMinZeroBlocks all-zero 4 KiB
// blocks) stores only the non-zero blocks, in order, raw or as one zstd
// frame; its zero map has one bit per 4 KiB block of the plaintext (bit i of
// byte i/8 set: block i is all zeros). Disk images are full of such blocks,
// and while zstd stores zero runs compactly, it decodes them a byte at a
// time (a match at distance 1); the map makes a restore's decoding and hole
// detection proportional to the data.
const (
	magicEncrypted = "RK1E"
	magicPlain     = "RK1P"
	flagRaw        = 0
	flagZstd       = 1
	flagSparse     = 2
)

// zeroBlock is the granularity of a sparse container's zero map.
const zeroBlock = 4096

// sparseMinZeroBlocks is how many all-zero blocks a chunk needs before it is
// stored as a sparse container (fewer: zstd's own handling is fine).
const sparseMinZeroBlocks = 16

// ErrCorrupt is wrapped by every error about an object whose bytes are damaged.
var ErrCorrupt = errors.New("corrupt object")

type codec struct {
	// encrypted: objects get the encrypted layout; aead is set once the
	// master key is known (newRepository), before any object is sealed or
	// opened. Compression (prepareChunk) needs no key.
	encrypted bool
	aead      cipher.AEAD
	compress  bool
	enc       frameEncoder
	dec       *zstd.Decoder
	maxPlain  int
	gather    sync.Pool // *[]byte: sealChunk's non-zero blocks
}

// newCodec returns a codec whose compressions run on up to encoders
// goroutines at once (newEncoder: the C library's level 1 in builds with cgo,
// klauspost's SpeedFastest without).
//
// The zstd frames carry no content checksum, and the checksums of frames
// that have one (objects written before) are not checked: every container
// is authenticated as a whole before it is decoded (AES-GCM, or SHA-256 in
// an unencrypted repository), so zstd's xxhash would only spend CPU time
// (about 2 % of a backup's, 4 % of a restore's) on bytes already verified.
func newCodec(encrypted, compress bool, maxPlain, encoders int) (*codec, error) {
	enc, err := newEncoder(encoders)
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(uint64(maxPlain)), zstd.WithDecoderLowmem(true), zstd.IgnoreChecksum(true))
	if err != nil {
		return nil, err
	}
	c := &codec{encrypted: encrypted, compress: compress, enc: enc, dec: dec, maxPlain: maxPlain}
	c.gather.New = func() any { b := []byte(nil); return &b }
	return c, nil
}

// seal encodes plain for storage. buf is scratch space that may be reused for
// the result; the result may alias buf.
func (c *codec) seal(plain, aad, buf []byte) []byte {
	container := c.header(buf)
	hdr := len(container)
	container = c.appendPayload(container, plain)
	return c.finish(container, hdr, aad)
}

// appendPayload appends flag and payload for plain: zstd, or raw when
// compression is off or does not pay.
func (c *codec) appendPayload(container, plain []byte) []byte {
	if c.compress && !c.incompressible(plain) {
		return c.appendCompressed(container, plain)
	}
	container = append(container, flagRaw)
	return append(container, plain...)
}

// appendCompressed appends flag and payload for plain: zstd, or raw when
// that is not smaller.
func (c *codec) appendCompressed(container, plain []byte) []byte {
	start := len(container)
	container = append(container, flagZstd)
	container, ok := c.enc.appendFrame(container, plain)
	if ok && len(container)-start-1 < len(plain) {
		return container
	}
	container = append(container[:start], flagRaw)
	return append(container, plain...)
}

// sealChunk is seal for disk chunks: a chunk with enough all-zero blocks is
// stored as a sparse container.
func (c *codec) sealChunk(plain, aad, buf []byte) []byte {
	container, hdr := c.prepareChunk(plain, buf)
	return c.finish(container, hdr, aad)
}

// prepareChunk is the part of sealChunk that needs no key: header room,
// flag and (compressed) payload, in buf's storage. finish completes it.
//
// A sparse chunk's payload is its non-zero blocks back to back. When they
// will be stored raw (compression off, or a sample says they would not
// shrink) they are copied straight into the container; only data to be
// compressed is gathered into a scratch buffer first.
func (c *codec) prepareChunk(plain, buf []byte) (container []byte, hdr int) {
	container = c.header(buf)
	hdr = len(container)
	if len(plain) < sparseMinZeroBlocks*zeroBlock {
		return c.appendPayload(container, plain), hdr
	}
	zmap, nblocks, zeros := zeroMap(plain)
	if zeros < sparseMinZeroBlocks || zeros == nblocks {
		return c.appendPayload(container, plain), hdr
	}
	container = append(container, flagSparse)
	container = binary.AppendUvarint(container, uint64(len(plain)))
	container = append(container, zmap...)
	if c.compress && !c.sparseIncompressible(plain, zmap, nblocks) {
		gp := c.gather.Get().(*[]byte)
		defer c.gather.Put(gp)
		if cap(*gp) < len(plain) {
			*gp = make([]byte, 0, len(plain))
		}
		*gp = appendNonZero((*gp)[:0], plain, zmap, nblocks)
		return c.appendCompressed(container, *gp), hdr
	}
	container = append(container, flagRaw)
	return appendNonZero(container, plain, zmap, nblocks), hdr
}

// zeroMap marks plain's all-zero blocks of zeroBlock bytes (the last one may
// be shorter): bit b%8 of zmap[b/8] is block b. It counts blocks and zeros.
func zeroMap(plain []byte) (zmap []byte, nblocks, zeros int) {
	nblocks = (len(plain) + zeroBlock - 1) / zeroBlock
	zmap = make([]byte, (nblocks+7)/8)
	for b := range nblocks {
		if isZero(plain[b*zeroBlock : min((b+1)*zeroBlock, len(plain))]) {
			zmap[b/8] |= 1 << (b % 8)
			zeros++
		}
	}
	return zmap, nblocks, zeros
}

// nonZeroRuns calls fn for each run [from, to) of plain's blocks that the
// zero map does not mark, in order.
func nonZeroRuns(plain, zmap []byte, nblocks int, fn func(from, to int)) {
	for b := 0; b < nblocks; {
		if zmap[b/8]&(1<<(b%8)) != 0 {
			b++
			continue
		}
		e := b
		for e < nblocks && zmap[e/8]&(1<<(e%8)) == 0 {
			e++
		}
		fn(b*zeroBlock, min(e*zeroBlock, len(plain)))
		b = e
	}
}

// nonZeroLen is how many bytes of a size-byte chunk with nblocks blocks the
// zero map does not mark: the length of its packed non-zero blocks.
func nonZeroLen(zmap []byte, nblocks, size int) int {
	n := size
	for b := range nblocks {
		if zmap[b/8]&(1<<(b%8)) != 0 {
			n -= min(zeroBlock, size-b*zeroBlock)
		}
	}
	return n
}

// appendNonZero appends plain's non-zero blocks to dst, back to back.
func appendNonZero(dst, plain, zmap []byte, nblocks int) []byte {
	nonZeroRuns(plain, zmap, nblocks, func(from, to int) { dst = append(dst, plain[from:to]...) })
	return dst
}

// sparseIncompressible is incompressible for the non-zero blocks of plain,
// without gathering them.
func (c *codec) sparseIncompressible(plain, zmap []byte, nblocks int) bool {
	sample := sparseSample(plain, zmap, nblocks)
	if sample == nil {
		return false // small payloads: just try
	}
	return c.sampleIncompressible(sample)
}

// sparseSample returns the sample incompressible would take from plain's
// non-zero blocks put back to back (the sampleSize bytes from their middle),
// or nil when they are too short to sample.
func sparseSample(plain, zmap []byte, nblocks int) []byte {
	total := nonZeroLen(zmap, nblocks, len(plain))
	if total < 4*sampleSize {
		return nil
	}
	lo, hi := total/2, total/2+sampleSize
	sample := make([]byte, 0, sampleSize)
	pos := 0 // offset of the current run in the gathered payload
	nonZeroRuns(plain, zmap, nblocks, func(from, to int) {
		n := to - from
		if a, b := max(lo, pos), min(hi, pos+n); a < b {
			sample = append(sample, plain[from+a-pos:from+b-pos]...)
		}
		pos += n
	})
	return sample
}

// gcmNonceSize is the nonce size of AES-256-GCM as used here.
const gcmNonceSize = 12

// header starts an object in buf: magic, and room for the nonce.
func (c *codec) header(buf []byte) []byte {
	container := buf[:0]
	if c.encrypted {
		return append(container, make([]byte, len(magicEncrypted)+gcmNonceSize)...)
	}
	return append(container, magicPlain...)
}

// finish seals container[hdr:] (flag and payload) behind the header.
func (c *codec) finish(container []byte, hdr int, aad []byte) []byte {
	if !c.encrypted {
		h := sha256.New()
		h.Write(aad)
		h.Write(container[hdr:])
		return h.Sum(container)
	}
	copy(container, magicEncrypted)
	nonce := container[len(magicEncrypted):hdr]
	copy(nonce, randomBytes(len(nonce)))
	// Seal in place: the ciphertext overwrites the container.
	out := c.aead.Seal(container[:hdr], nonce, container[hdr:], aad)
	return out
}

// sampleSize is how much of a large object incompressible looks at.
const sampleSize = 64 << 10

// incompressible guesses from a sample whether plain would not shrink by at
// least 3 %: random or already compressed data, which is stored raw without
// spending a full compression on it.
func (c *codec) incompressible(plain []byte) bool {
	if len(plain) < 4*sampleSize {
		return false // small objects: just try
	}
	return c.sampleIncompressible(plain[len(plain)/2 : len(plain)/2+sampleSize])
}

// sampleIncompressible reports whether sample shrinks by less than 3 %.
func (c *codec) sampleIncompressible(sample []byte) bool {
	out, ok := c.enc.appendFrame(make([]byte, 0, len(sample)+1024), sample)
	return !ok || len(out) > len(sample)*97/100
}

// open decodes a stored object. It decrypts in place: data is overwritten
// and the result may alias it, so callers pass a buffer they own.
func (c *codec) open(data, aad []byte) ([]byte, error) {
	plain, _, err := c.openInto(data, aad, nil)
	return plain, err
}

// decodeSlack is the capacity a buffer that zstd decodes into should have
// beyond the plaintext's length. With less than 16 bytes to spare after a
// frame's content size, klauspost/compress decodes sequences with its
// "safe" loop, which copies matches without over-writing and took about
// twice the CPU time of the usual loop on the bench image's chunks.
const decodeSlack = 64

// openInto is open decompressing into dst's storage when it is large enough
// (give it decodeSlack bytes of capacity beyond the plaintext for the
// faster decoding loop).
// decoded says whether plain is decompressed output (not part of data).
func (c *codec) openInto(data, aad, dst []byte) (plain []byte, decoded bool, err error) {
	if len(data) < 4 {
		return nil, false, fmt.Errorf("%w: %d bytes, too short for a header", ErrCorrupt, len(data))
	}
	var container []byte
	switch string(data[:4]) {
	case magicEncrypted:
		if !c.encrypted {
			return nil, false, fmt.Errorf("%w: object is encrypted but the repository is not", ErrCorrupt)
		}
		ns := c.aead.NonceSize()
		if len(data) < 4+ns+c.aead.Overhead()+1 {
			return nil, false, fmt.Errorf("%w: encrypted object truncated (%d bytes)", ErrCorrupt, len(data))
		}
		var err error
		container, err = c.aead.Open(data[4+ns:4+ns], data[4:4+ns], data[4+ns:], aad)
		if err != nil {
			return nil, false, fmt.Errorf("%w: authentication failed (damaged, truncated or not this object)", ErrCorrupt)
		}
	case magicPlain:
		if c.encrypted {
			return nil, false, fmt.Errorf("%w: object is not encrypted but the repository is", ErrCorrupt)
		}
		if len(data) < 4+1+sha256.Size {
			return nil, false, fmt.Errorf("%w: object truncated (%d bytes)", ErrCorrupt, len(data))
		}
		container = data[4 : len(data)-sha256.Size]
		h := sha256.New()
		h.Write(aad)
		h.Write(container)
		if !bytes.Equal(h.Sum(nil), data[len(data)-sha256.Size:]) {
			return nil, false, fmt.Errorf("%w: checksum mismatch (damaged, truncated or not this object)", ErrCorrupt)
		}
	default:
		return nil, false, fmt.Errorf("%w: unknown header %q", ErrCorrupt, data[:4])
	}
	if container[0] == flagSparse {
		plain, err := c.openSparse(container[1:], dst)
		return plain, true, err
	}
	return c.decodePayload(container, dst)
}

// decodePayload decodes flag and payload (raw or zstd).
func (c *codec) decodePayload(container, dst []byte) (plain []byte, decoded bool, err error) {
	switch container[0] {
	case flagRaw:
		return container[1:], false, nil
	case flagZstd:
		out, err := c.dec.DecodeAll(container[1:], dst[:0])
		if err != nil {
			return nil, false, fmt.Errorf("%w: decompress: %v", ErrCorrupt, err)
		}
		return out, true, nil
	default:
		return nil, false, fmt.Errorf("%w: unknown compression flag %d", ErrCorrupt, container[0])
	}
}

// openSparse decodes a sparse container (after its flag) into dst's storage
// when it is large enough.
func (c *codec) openSparse(p, dst []byte) ([]byte, error) {
	size, n := binary.Uvarint(p)
	if n <= 0 || size == 0 || size > uint64(c.maxPlain) {
		return nil, fmt.Errorf("%w: sparse object with a bad length", ErrCorrupt)
	}
	p = p[n:]
	nblocks := (int(size) + zeroBlock - 1) / zeroBlock
	mapLen := (nblocks + 7) / 8
	if len(p) < mapLen+1 {
		return nil, fmt.Errorf("%w: sparse object truncated", ErrCorrupt)
	}
	zmap, inner := p[:mapLen], p[mapLen:]
	if nblocks%8 != 0 && zmap[mapLen-1]>>(nblocks%8) != 0 {
		return nil, fmt.Errorf("%w: sparse object's zero map has bits past its end", ErrCorrupt)
	}
	isZero := func(b int) bool { return zmap[b/8]&(1<<(b%8)) != 0 }
	want := nonZeroLen(zmap, nblocks, int(size))
	if inner[0] != flagRaw && inner[0] != flagZstd {
		return nil, fmt.Errorf("%w: unknown compression flag %d in a sparse object", ErrCorrupt, inner[0])
	}
	var out []byte
	if cap(dst) >= int(size) {
		out = dst[:size]
	} else {
		out = make([]byte, size)
	}
	// The non-zero blocks, packed at the front of out (or still in inner
	// when stored raw).
	var packed []byte
	if inner[0] == flagRaw {
		packed = inner[1:]
	} else {
		var err error
		packed, err = c.dec.DecodeAll(inner[1:], out[:0])
		if err != nil {
			return nil, fmt.Errorf("%w: decompress: %v", ErrCorrupt, err)
		}
		// packed is normally out's own storage (then the spreading below
		// works in place); if DecodeAll had to grow it, it is a buffer of
		// its own, which works as well.
	}
	if len(packed) != want {
		return nil, fmt.Errorf("%w: sparse object holds %d bytes of data, its zero map says %d", ErrCorrupt, len(packed), want)
	}
	// Spread the packed blocks to their places, last first: a block never
	// moves to a lower position, so nothing is overwritten before it moved.
	pos := want
	for e := nblocks; e > 0; {
		b := e - 1
		zero := isZero(b)
		for b > 0 && isZero(b-1) == zero {
			b--
		}
		lo, hi := b*zeroBlock, min(e*zeroBlock, int(size))
		if zero {
			clear(out[lo:hi])
		} else {
			pos -= hi - lo
			copy(out[lo:hi], packed[pos:pos+hi-lo])
		}
		e = b
	}
	return out, nil
}
