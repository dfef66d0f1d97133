package repo

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"sync"
)

// ChunkID names a chunk by its content: HMAC-SHA256 of the plaintext under the
// repository's id key when encrypted (so stored names reveal nothing), plain
// SHA-256 otherwise. The zero ChunkID marks a hole.
type ChunkID [32]byte

// String returns the id in lower-case hex.
func (id ChunkID) String() string { return hex.EncodeToString(id[:]) }

// IsHole reports whether id is the zero id that marks an all-zero chunk.
func (id ChunkID) IsHole() bool { return id == ChunkID{} }

// ParseChunkID parses a hex chunk id.
func ParseChunkID(s string) (ChunkID, error) {
	var id ChunkID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("invalid chunk id %q", s)
	}
	copy(id[:], b)
	return id, nil
}

// ErrWrongPassword means no key of the repository opens with the password.
var ErrWrongPassword = errors.New("wrong password: no key in the repository opens with it")

// masterKey holds the secrets that a password unwraps. Never logged, never
// leaves the process.
type masterKey struct {
	Encrypt []byte `json:"encrypt"` // AES-256 key
	ID      []byte `json:"id"`      // HMAC-SHA256 key for chunk ids
}

// KDFParams are the argon2id parameters of a key file.
type KDFParams struct {
	Time    uint32 `json:"time"`
	Memory  uint32 `json:"memory_kib"`
	Threads uint8  `json:"threads"`
}

// defaultKDF is used for new keys: OWASP's argon2id memory and pass count
// (46 MiB, one pass) with four lanes, the lane count of both of RFC 9106's
// recommended settings. Lanes do not change the work or memory an attacker
// spends per guessed password; they let the unlock use up to four cores
// (about 15 ms on two cores of the benchmark machine, 25 ms with one lane).
// Key files record their parameters, so older keys (one lane) still open.
var defaultKDF = KDFParams{Time: 1, Memory: 46 * 1024, Threads: 4}

// The most argon2id cost a key file may ask for: whoever can write the
// bucket can write a key file, and an unlock must not exhaust the worker's
// memory or time (the default asks for 46 MiB and 1 pass).
const (
	MaxKDFTime    = 10
	MaxKDFMemory  = 1 << 20 // KiB: 1 GiB
	MaxKDFThreads = 16
)

type keyFile struct {
	Schema int       `json:"schema"`
	KDF    string    `json:"kdf"`
	Params KDFParams `json:"params"`
	Salt   []byte    `json:"salt"`
	// Data is nonce || AES-256-GCM(master key JSON) under the derived key.
	Data []byte `json:"data"`
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err)) // cannot happen on Linux
	}
	return b
}

func newMasterKey() *masterKey {
	return &masterKey{Encrypt: randomBytes(32), ID: randomBytes(32)}
}

func wrapKey(mk *masterKey, password string, p KDFParams) ([]byte, error) {
	salt := randomBytes(16)
	kek := deriveKEK(password, salt, p)
	plain, err := json.Marshal(mk)
	if err != nil {
		return nil, err
	}
	aead, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	nonce := randomBytes(aead.NonceSize())
	kf := keyFile{Schema: 1, KDF: "argon2id", Params: p, Salt: salt,
		Data: aead.Seal(nonce, nonce, plain, []byte("raksha key"))}
	return json.MarshalIndent(kf, "", "  ")
}

func unwrapKey(data []byte, password string) (*masterKey, error) {
	var kf keyFile
	if err := json.Unmarshal(data, &kf); err != nil {
		return nil, fmt.Errorf("key file is not valid JSON: %w", err)
	}
	if kf.KDF != "argon2id" || kf.Params.Time == 0 || kf.Params.Memory == 0 || kf.Params.Threads == 0 || len(kf.Salt) < 8 {
		return nil, fmt.Errorf("key file has unsupported or missing KDF parameters (kdf %q)", kf.KDF)
	}
	if kf.Params.Memory > MaxKDFMemory || kf.Params.Time > MaxKDFTime || kf.Params.Threads > MaxKDFThreads {
		return nil, fmt.Errorf("key file asks for more KDF cost than Raksha allows (time %d, memory %d KiB, threads %d; at most %d, %d KiB, %d): refused, a key file of the bucket's must not exhaust the worker",
			kf.Params.Time, kf.Params.Memory, kf.Params.Threads, MaxKDFTime, MaxKDFMemory, MaxKDFThreads)
	}
	kek := deriveKEK(password, kf.Salt, kf.Params)
	aead, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	if len(kf.Data) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("key file data is truncated")
	}
	plain, err := aead.Open(nil, kf.Data[:aead.NonceSize()], kf.Data[aead.NonceSize():], []byte("raksha key"))
	if err != nil {
		return nil, ErrWrongPassword
	}
	var mk masterKey
	if err := json.Unmarshal(plain, &mk); err != nil || len(mk.Encrypt) != 32 || len(mk.ID) != 32 {
		return nil, fmt.Errorf("key file holds a malformed master key")
	}
	return &mk, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// hasher computes chunk ids; safe for concurrent use.
type hasher struct {
	pool sync.Pool
}

func newHasher(idKey []byte) *hasher {
	h := &hasher{}
	if idKey == nil {
		h.pool.New = func() any { return sha256.New() }
	} else {
		k := append([]byte(nil), idKey...)
		h.pool.New = func() any { return hmac.New(sha256.New, k) }
	}
	return h
}

func (h *hasher) sum(data []byte) ChunkID {
	hh := h.pool.Get().(hash.Hash)
	hh.Reset()
	hh.Write(data)
	var id ChunkID
	hh.Sum(id[:0])
	h.pool.Put(hh)
	return id
}
