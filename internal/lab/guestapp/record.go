// Package guestapp is the lab guests' tiny application: a writer that appends
// checksummed, sequence-numbered, timestamped records to a file on every
// mounted data disk, continuously and fsync'd, and a checker that reads such
// files and reports the last good record and any torn or missing ones.
//
// It is the test of application consistency: a backup taken inside a freeze
// window must restore to a disk whose record files check clean, and the
// records' timestamps show when the guest's writes stalled (a freeze).
//
// The guest runs the writer as `guestapp write` from the initramfs's /init
// (scripts/build-guest.sh builds the command in cmd/guestapp into it); the
// checker runs in the guest (`guestapp check`, through guest-exec) or on the
// host on a restored disk image (CheckImage, Check, CheckDir).
//
// # File layout
//
// Every writer run creates a new file <disk>/raksha-writer/<run>.rec (run is
// the run ID in 16 hex digits) and only ever appends to it, so files left by
// earlier runs (a restored disk booted in a fresh guest) stay untouched for
// checking. A file is a sequence of RecordSize-byte records, little-endian:
//
//	offset size field
//	0      4    magic "RKR1"
//	4      8    run ID (random, the same for every record of a file)
//	12     8    sequence number, 1 for the first record, +1 for each next
//	20     8    wall-clock time, Unix nanoseconds (CLOCK_REALTIME)
//	28     8    boot-clock time, nanoseconds since boot (CLOCK_BOOTTIME)
//	36     24   the disk's label, NUL-padded
//	60     4    CRC-32C (Castagnoli) of bytes 0..59
package guestapp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// RecordSize is the size in bytes of one record.
const RecordSize = 64

// Magic opens every record.
const Magic = "RKR1"

// DirName is the directory the writer creates on every data disk.
const DirName = "raksha-writer"

// FileSuffix ends every record file's name.
const FileSuffix = ".rec"

// maxLabel is the room for the disk label in a record.
const maxLabel = 24

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record is one decoded record.
type Record struct {
	// RunID identifies the writer run that wrote the record.
	RunID uint64
	// Seq is the record's sequence number within its run, from 1.
	Seq uint64
	// Wall is the guest's wall-clock time when the record was made (before
	// it was written: a write that blocked on a frozen filesystem carries the
	// time it was attempted).
	Wall time.Time
	// Boot is the guest's CLOCK_BOOTTIME when the record was made; unlike
	// Wall it never jumps, so gaps are measured on it.
	Boot time.Duration
	// Label is the label of the disk the record was written to.
	Label string
}

// ErrBadRecord is wrapped by Decode's errors: the bytes are not a whole,
// intact record.
var ErrBadRecord = errors.New("bad record")

// Encode returns the record's RecordSize bytes. A label longer than 24 bytes
// is cut.
func (r Record) Encode() []byte {
	b := make([]byte, RecordSize)
	copy(b[0:4], Magic)
	binary.LittleEndian.PutUint64(b[4:12], r.RunID)
	binary.LittleEndian.PutUint64(b[12:20], r.Seq)
	binary.LittleEndian.PutUint64(b[20:28], uint64(r.Wall.UnixNano()))
	binary.LittleEndian.PutUint64(b[28:36], uint64(r.Boot))
	copy(b[36:36+maxLabel], r.Label)
	binary.LittleEndian.PutUint32(b[60:64], crc32.Checksum(b[:60], castagnoli))
	return b
}

// Decode parses one record. It fails, wrapping ErrBadRecord and saying why,
// when b is not RecordSize bytes, is all zeros, lacks the magic or fails its
// checksum.
func Decode(b []byte) (Record, error) {
	if len(b) != RecordSize {
		return Record{}, fmt.Errorf("%w: %d bytes, want %d", ErrBadRecord, len(b), RecordSize)
	}
	if isZero(b) {
		return Record{}, fmt.Errorf("%w: all zeros", ErrBadRecord)
	}
	if string(b[0:4]) != Magic {
		return Record{}, fmt.Errorf("%w: magic %q, want %q", ErrBadRecord, b[0:4], Magic)
	}
	if got, want := crc32.Checksum(b[:60], castagnoli), binary.LittleEndian.Uint32(b[60:64]); got != want {
		return Record{}, fmt.Errorf("%w: checksum %08x, stored %08x", ErrBadRecord, got, want)
	}
	return Record{
		RunID: binary.LittleEndian.Uint64(b[4:12]),
		Seq:   binary.LittleEndian.Uint64(b[12:20]),
		Wall:  time.Unix(0, int64(binary.LittleEndian.Uint64(b[20:28]))),
		Boot:  time.Duration(binary.LittleEndian.Uint64(b[28:36])),
		Label: string(bytes.TrimRight(b[36:36+maxLabel], "\x00")),
	}, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
