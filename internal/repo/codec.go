package repo

import (
	"bytes"
	"crypto/cipher"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Stored object layout (every object but config and keys):
//
//	encrypted:   "RK1E" | nonce(12) | AES-256-GCM(container, aad)
//	unencrypted: "RK1P" | container | SHA-256(aad | container)
//	container:   flag(1: 0 raw, 1 zstd) | payload
//
// The aad binds an object to its logical identity (a chunk to its id, a page
// to its manifest and number), so a swapped or truncated object fails to open.
const (
	magicEncrypted = "RK1E"
	magicPlain     = "RK1P"
	flagRaw        = 0
	flagZstd       = 1
)

// ErrCorrupt is wrapped by every error about an object whose bytes are damaged.
var ErrCorrupt = errors.New("corrupt object")

type codec struct {
	aead     cipher.AEAD // nil: no encryption
	compress bool
	enc      *zstd.Encoder
	dec      *zstd.Decoder
	maxPlain int
}

func newCodec(aead cipher.AEAD, compress bool, maxPlain int) (*codec, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(uint64(maxPlain)), zstd.WithDecoderLowmem(true))
	if err != nil {
		return nil, err
	}
	return &codec{aead: aead, compress: compress, enc: enc, dec: dec, maxPlain: maxPlain}, nil
}

// seal encodes plain for storage. buf is scratch space that may be reused for
// the result; the result may alias buf.
func (c *codec) seal(plain, aad, buf []byte) []byte {
	container := buf[:0]
	if c.aead != nil {
		// leave room for magic and nonce in front of the container
		container = append(container, make([]byte, len(magicEncrypted)+c.aead.NonceSize())...)
	} else {
		container = append(container, magicPlain...)
	}
	hdr := len(container)
	if c.compress && !c.incompressible(plain) {
		container = append(container, flagZstd)
		container = c.enc.EncodeAll(plain, container)
		if len(container)-hdr-1 >= len(plain) {
			container = append(container[:hdr], flagRaw)
			container = append(container, plain...)
		}
	} else {
		container = append(container, flagRaw)
		container = append(container, plain...)
	}
	if c.aead == nil {
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
	sample := plain[len(plain)/2 : len(plain)/2+sampleSize]
	out := c.enc.EncodeAll(sample, make([]byte, 0, sampleSize+1024))
	return len(out) > sampleSize*97/100
}

// open decodes a stored object. It decrypts in place: data is overwritten
// and the result may alias it, so callers pass a buffer they own.
func (c *codec) open(data, aad []byte) ([]byte, error) {
	plain, _, err := c.openInto(data, aad, nil)
	return plain, err
}

// openInto is open decompressing into dst's storage when it is large enough.
// decoded says whether plain is decompressed output (not part of data).
func (c *codec) openInto(data, aad, dst []byte) (plain []byte, decoded bool, err error) {
	if len(data) < 4 {
		return nil, false, fmt.Errorf("%w: %d bytes, too short for a header", ErrCorrupt, len(data))
	}
	var container []byte
	switch string(data[:4]) {
	case magicEncrypted:
		if c.aead == nil {
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
		if c.aead != nil {
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
