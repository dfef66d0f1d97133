package filerestore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strings"
	"unicode/utf16"
)

// This file reads GPT and MBR partition tables (with MBR logical partitions
// in an extended partition) so that a file system inside a partition can be
// opened. Partitions are numbered as Linux numbers them: GPT entry k is
// partition k+1; MBR primaries are 1-4, logical partitions 5 on.

// ErrPartitionTable marks a partition table that makes no sense.
var ErrPartitionTable = errors.New("corrupt partition table")

// ErrNoPartition is returned for a partition number the disk does not have
// (or any number, for a disk without a partition table).
var ErrNoPartition = errors.New("no such partition")

// ErrChoosePartition is returned when no partition number was given and
// the disk does not have exactly one Linux file-system partition.
var ErrChoosePartition = errors.New("choose a partition")

// Partition is one entry of a partition table.
type Partition struct {
	// Number is the 1-based partition number, as Linux numbers it.
	Number int `json:"number"`
	// Start and Size are in bytes.
	Start int64 `json:"start"`
	Size  int64 `json:"size"`
	// Type names the partition type; TypeID is the GPT type GUID or the
	// MBR type byte (e.g. "0x83").
	Type   string `json:"type"`
	TypeID string `json:"type_id"`
	// Name is the GPT partition name.
	Name string `json:"name,omitempty"`
	// Linux says the type is one for Linux file systems (GPT Linux
	// filesystem data or a discoverable root, /usr, home, srv or var
	// type; MBR 0x83).
	Linux bool `json:"linux"`
	// Content names what the partition holds when it was looked at (only
	// for error messages): "ext4", "XFS", "" when unknown.
	Content string `json:"content,omitempty"`
}

// Table is a disk's partition table.
type Table struct {
	// Kind is "gpt" or "mbr".
	Kind string `json:"kind"`
	// SectorSize is the logical sector size the table was found with.
	SectorSize int64 `json:"sector_size"`
	// Partitions lists the used entries by number.
	Partitions []Partition `json:"partitions"`
}

// Volume is the part of a disk that holds a file system: the whole disk,
// or one partition.
type Volume struct {
	io.ReaderAt
	Size int64
	// Table is nil for a disk without a partition table.
	Table *Table
	// Partition is the partition chosen, nil for the whole disk.
	Partition *Partition
}

// PartitionError explains why no partition could be opened; it lists the
// disk's partitions. It wraps ErrNoPartition or ErrChoosePartition.
type PartitionError struct {
	Err error
	// Asked is the partition number asked for, 0 for an automatic choice.
	Asked  int
	Reason string
	Table  *Table
}

func (e *PartitionError) Error() string {
	if e.Table == nil {
		return fmt.Sprintf("%v: %s", e.Err, e.Reason)
	}
	return fmt.Sprintf("%v: %s; %s", e.Err, e.Reason, e.Table)
}

func (e *PartitionError) Unwrap() error { return e.Err }

// String lists the partitions, e.g. `GPT partitions: 1 (EFI System, 100 MiB
// at 1 MiB), 2 (Linux filesystem "root", 900 MiB at 101 MiB, ext4)`.
func (t *Table) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s partitions:", strings.ToUpper(t.Kind))
	if len(t.Partitions) == 0 {
		b.WriteString(" none")
	}
	for k, p := range t.Partitions {
		if k > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %d (%s", p.Number, p.Type)
		if p.Name != "" {
			fmt.Fprintf(&b, " %q", p.Name)
		}
		fmt.Fprintf(&b, ", %s at %s", sizeString(p.Size), sizeString(p.Start))
		if p.Content != "" {
			fmt.Fprintf(&b, ", %s", p.Content)
		}
		b.WriteByte(')')
	}
	return b.String()
}

func sizeString(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	if n%div == 0 {
		return fmt.Sprintf("%d %ciB", n/div, "KMGTPE"[exp])
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTPE"[exp])
}

// OpenVolume finds the file system on a disk of size bytes: partition n
// (1-based) of its partition table, or with n == 0 the whole disk when it
// has no partition table, or else its only Linux file-system partition.
// Errors are *PartitionError (wrapping ErrNoPartition or ErrChoosePartition)
// listing the partitions, or wrap ErrPartitionTable.
func OpenVolume(r io.ReaderAt, size int64, n int) (*Volume, error) {
	if n < 0 {
		return nil, &PartitionError{Err: ErrNoPartition, Asked: n, Reason: fmt.Sprintf("partition numbers start at 1, not %d", n)}
	}
	t, err := ReadTable(r, size)
	if err != nil {
		return nil, err
	}
	if t == nil {
		if n != 0 {
			return nil, &PartitionError{Err: ErrNoPartition, Asked: n,
				Reason: fmt.Sprintf("partition %d asked for, but the disk has no partition table (its file system fills the disk)", n)}
		}
		return &Volume{ReaderAt: r, Size: size}, nil
	}
	var pick *Partition
	if n != 0 {
		for k := range t.Partitions {
			if t.Partitions[k].Number == n {
				pick = &t.Partitions[k]
			}
		}
		if pick == nil {
			t.sniff(r)
			return nil, &PartitionError{Err: ErrNoPartition, Asked: n, Table: t,
				Reason: fmt.Sprintf("the disk has no partition %d", n)}
		}
	} else {
		var linux []*Partition
		for k := range t.Partitions {
			if t.Partitions[k].Linux {
				linux = append(linux, &t.Partitions[k])
			}
		}
		if len(linux) != 1 {
			t.sniff(r)
			why := "no Linux file-system partition"
			if len(linux) > 1 {
				why = fmt.Sprintf("%d Linux file-system partitions", len(linux))
			}
			return nil, &PartitionError{Err: ErrChoosePartition, Table: t,
				Reason: fmt.Sprintf("the disk has a %s partition table with %s", strings.ToUpper(t.Kind), why)}
		}
		pick = linux[0]
	}
	if pick.Start+pick.Size > size {
		return nil, fmt.Errorf("partition %d: %w: bytes %d-%d beyond the %d-byte disk", pick.Number, ErrPartitionTable, pick.Start, pick.Start+pick.Size, size)
	}
	return &Volume{ReaderAt: io.NewSectionReader(r, pick.Start, pick.Size), Size: pick.Size, Table: t, Partition: pick}, nil
}

// sniff fills in what each partition holds (for error messages: it reads
// the first 2 KiB of every partition).
func (t *Table) sniff(r io.ReaderAt) {
	for k := range t.Partitions {
		p := &t.Partitions[k]
		if p.Size < 2048 {
			continue
		}
		b := make([]byte, 2048)
		if _, err := r.ReadAt(b, p.Start); err != nil {
			continue
		}
		le := binary.LittleEndian
		switch {
		case le.Uint16(b[1024+0x38:]) == 0xEF53:
			p.Content = "ext2/3/4"
			if le.Uint32(b[1024+0x60:])&incompatExtents != 0 {
				p.Content = "ext4"
			}
		case string(b[:4]) == "XFSB":
			p.Content = "XFS"
		case string(b[0x3F6:0x400]) == "SWAPSPACE2":
			p.Content = "swap"
		case string(b[:4]) == "LUKS":
			p.Content = "LUKS"
		case string(b[512+24:512+32]) == "LVM2 001":
			p.Content = "LVM"
		case string(b[0x52:0x5A]) == "FAT32   " || string(b[0x36:0x3E]) == "FAT16   " || string(b[0x36:0x3E]) == "FAT12   ":
			p.Content = "FAT"
		case string(b[3:11]) == "NTFS    ":
			p.Content = "NTFS"
		}
	}
}

// ReadTable reads the GPT or MBR partition table of a disk; it returns nil
// when the disk has none (a file system or anything else fills it).
func ReadTable(r io.ReaderAt, size int64) (*Table, error) {
	head := make([]byte, 4096+512)
	n, err := r.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read partition table: %w", err)
	}
	head = head[:n]
	for _, ss := range []int64{512, 4096} {
		if int64(len(head)) >= ss+92 && string(head[ss:ss+8]) == "EFI PART" {
			return readGPT(r, size, ss)
		}
	}
	// an ext file system filling the disk (its first KiB is unused and
	// may hold stale boot code)
	if len(head) >= 1082 && binary.LittleEndian.Uint16(head[1080:]) == 0xEF53 {
		return nil, nil
	}
	if len(head) < 512 || head[510] != 0x55 || head[511] != 0xAA {
		return nil, nil
	}
	return readMBR(r, size, head[:512])
}

// gptTypes names common GPT partition types; linuxFS marks the types of
// Linux file systems.
var gptTypes = map[string]struct {
	name    string
	linuxFS bool
}{
	"0FC63DAF-8483-4772-8E79-3D69D8477DE4": {"Linux filesystem", true},
	"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": {"Linux root (x86-64)", true},
	"44479540-F297-41B2-9AF7-D131D5F0458A": {"Linux root (x86)", true},
	"B921B045-1DF0-41C3-AF44-4C6F280D3FAE": {"Linux root (ARM-64)", true},
	"69DAD710-2CE4-4E3C-B16C-21A1D49ABED3": {"Linux root (ARM)", true},
	"933AC7E1-2EB4-4F13-B844-0E14E2AEF915": {"Linux home", true},
	"3B8F8425-20E0-4F3B-907F-1A25A76F98E8": {"Linux server data", true},
	"4D21B016-B534-45C2-A9FB-5C16E091FD2D": {"Linux variable data", true},
	"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": {"Linux swap", false},
	"E6D6D379-F507-44C2-A23C-238F2A3DF928": {"Linux LVM", false},
	"A19D880F-05FC-4D3B-A006-743F0F84911E": {"Linux RAID", false},
	"8484680C-9521-48C6-9C11-B0720656F69E": {"Linux /usr (x86-64)", true},
	"BC13C2FF-59E6-4262-A352-B275FD6F7172": {"Linux extended boot", false},
	"C12A7328-F81F-11D2-BA4B-00A0C93EC93B": {"EFI System", false},
	"21686148-6449-6E6F-744E-656564454649": {"BIOS boot", false},
	"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": {"Microsoft basic data", false},
	"E3C9E316-0B5C-4DB8-817D-F92DF00215AE": {"Microsoft reserved", false},
}

// guid formats a GPT GUID (its first three fields are little-endian).
func guid(b []byte) string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X", le.Uint32(b[0:]), le.Uint16(b[4:]), le.Uint16(b[6:]), b[8:10], b[10:16])
}

// maxGPTEntries bounds the entry array read (the usual table has 128).
const maxGPTEntries = 4096

func readGPT(r io.ReaderAt, size, ss int64) (*Table, error) {
	t, perr := readGPTHeader(r, size, ss, 1)
	if perr == nil {
		return t, nil
	}
	// the backup header in the disk's last sector
	if last := size/ss - 1; last > 1 {
		if t, err := readGPTHeader(r, size, ss, last); err == nil {
			return t, nil
		}
	}
	return nil, perr
}

func readGPTHeader(r io.ReaderAt, size, ss, lba int64) (*Table, error) {
	le := binary.LittleEndian
	h := make([]byte, ss)
	if _, err := r.ReadAt(h, lba*ss); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read GPT header at sector %d: %w", lba, err)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: GPT header at sector %d: %s", ErrPartitionTable, lba, fmt.Sprintf(format, args...))
	}
	if string(h[:8]) != "EFI PART" {
		return nil, bad("no signature")
	}
	hsize := int64(le.Uint32(h[12:]))
	if hsize < 92 || hsize > ss {
		return nil, bad("header size %d", hsize)
	}
	want := le.Uint32(h[16:])
	hc := bytes.Clone(h[:hsize])
	clear(hc[16:20])
	if got := crc32.ChecksumIEEE(hc); got != want {
		return nil, bad("checksum %08x, want %08x", got, want)
	}
	entLBA := int64(le.Uint64(h[72:]))
	count := int64(le.Uint32(h[80:]))
	esize := int64(le.Uint32(h[84:]))
	if esize < 128 || esize%8 != 0 || esize > 4096 || count > maxGPTEntries {
		return nil, bad("%d entries of %d bytes", count, esize)
	}
	sectors := size / ss
	if entLBA < 2 && lba == 1 || entLBA >= sectors || entLBA*ss+count*esize > size {
		return nil, bad("entry array at sector %d outside the disk", entLBA)
	}
	ents := make([]byte, count*esize)
	if _, err := r.ReadAt(ents, entLBA*ss); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read GPT entries at sector %d: %w", entLBA, err)
	}
	if got, want := crc32.ChecksumIEEE(ents), le.Uint32(h[88:]); got != want {
		return nil, bad("entry array checksum %08x, want %08x", got, want)
	}
	t := &Table{Kind: "gpt", SectorSize: ss}
	for k := range count {
		e := ents[k*esize : (k+1)*esize]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue
		}
		first, last := int64(le.Uint64(e[32:])), int64(le.Uint64(e[40:]))
		if first < 1 || last < first || last >= sectors {
			return nil, bad("partition %d spans sectors %d-%d of %d", k+1, first, last, sectors)
		}
		id := guid(e[:16])
		p := Partition{Number: int(k) + 1, Start: first * ss, Size: (last - first + 1) * ss, TypeID: id, Type: "type " + id}
		if ty, ok := gptTypes[id]; ok {
			p.Type, p.Linux = ty.name, ty.linuxFS
		}
		var name []uint16
		for j := 56; j+1 < min(56+72, len(e)); j += 2 {
			c := le.Uint16(e[j:])
			if c == 0 {
				break
			}
			name = append(name, c)
		}
		p.Name = string(utf16.Decode(name))
		t.Partitions = append(t.Partitions, p)
	}
	return t, nil
}

var mbrTypes = map[byte]string{
	0x01: "FAT12", 0x04: "FAT16", 0x06: "FAT16", 0x07: "NTFS/exFAT", 0x0B: "FAT32", 0x0C: "FAT32 (LBA)",
	0x0E: "FAT16 (LBA)", 0x82: "Linux swap", 0x83: "Linux", 0x8E: "Linux LVM", 0xA5: "FreeBSD",
	0xEF: "EFI System", 0xFD: "Linux RAID",
}

func isExtended(ty byte) bool { return ty == 0x05 || ty == 0x0F || ty == 0x85 }

// maxLogical bounds the chain of extended boot records followed.
const maxLogical = 256

// readMBR reads an MBR partition table. Sector 0 ends in 55 AA also in
// boot sectors of file systems (FAT, NTFS): a sector whose entries make no
// sense is not taken for a partition table.
func readMBR(r io.ReaderAt, size int64, sec0 []byte) (*Table, error) {
	const ss = 512
	sectors := size / ss
	es, ok := parseMBR(sec0)
	if !ok {
		return nil, nil
	}
	t := &Table{Kind: "mbr", SectorSize: ss}
	add := func(num int, e mbrEntry, base int64) error {
		start := base + e.start
		if e.start == 0 || start+e.size > sectors {
			return fmt.Errorf("%w: MBR partition %d spans sectors %d-%d of %d", ErrPartitionTable, num, start, start+e.size-1, sectors)
		}
		p := Partition{Number: num, Start: start * ss, Size: e.size * ss, TypeID: fmt.Sprintf("0x%02x", e.ty), Linux: e.ty == 0x83}
		p.Type = mbrTypes[e.ty]
		if p.Type == "" {
			p.Type = "type " + p.TypeID
		}
		t.Partitions = append(t.Partitions, p)
		return nil
	}
	used := 0
	for k, e := range es {
		switch {
		case e.ty == 0 || e.size == 0:
			continue
		case e.ty == 0xEE:
			return nil, fmt.Errorf("%w: a protective MBR, but no valid GPT header", ErrPartitionTable)
		case isExtended(e.ty):
			used++
			if e.start == 0 || e.start+e.size > sectors {
				return nil, fmt.Errorf("%w: extended partition %d spans sectors %d-%d of %d", ErrPartitionTable, k+1, e.start, e.start+e.size-1, sectors)
			}
			if err := readLogical(r, e.start, e.size, add); err != nil {
				return nil, err
			}
		default:
			used++
			if err := add(k+1, e, 0); err != nil {
				return nil, err
			}
		}
	}
	if used == 0 {
		return nil, nil // a boot sector without partitions
	}
	slices.SortFunc(t.Partitions, func(a, b Partition) int { return a.Number - b.Number })
	return t, nil
}

// mbrEntry is one of the four entries of an MBR or extended boot record
// (start and size in 512-byte sectors).
type mbrEntry struct {
	status, ty  byte
	start, size int64
}

// parseMBR reads the four entries of a boot record; ok is false when a
// status byte is neither 0 nor 0x80 (not a partition table).
func parseMBR(b []byte) (es [4]mbrEntry, ok bool) {
	le := binary.LittleEndian
	for k := range 4 {
		e := b[446+16*k:]
		es[k] = mbrEntry{status: e[0], ty: e[4], start: int64(le.Uint32(e[8:])), size: int64(le.Uint32(e[12:]))}
		if es[k].status != 0 && es[k].status != 0x80 {
			return es, false
		}
	}
	return es, true
}

// readLogical follows the chain of extended boot records of the extended
// partition at sector ext (length n) and calls add for each logical
// partition, numbered from 5, with the sector its start is relative to.
func readLogical(r io.ReaderAt, ext, n int64, add func(int, mbrEntry, int64) error) error {
	ebr := ext
	seen := map[int64]bool{}
	num := 5
	for range maxLogical {
		if seen[ebr] || ebr < ext || ebr >= ext+n {
			return fmt.Errorf("%w: extended boot record at sector %d outside the extended partition or visited twice", ErrPartitionTable, ebr)
		}
		seen[ebr] = true
		b := make([]byte, 512)
		if _, err := r.ReadAt(b, ebr*512); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read extended boot record at sector %d: %w", ebr, err)
		}
		if b[510] != 0x55 || b[511] != 0xAA {
			return fmt.Errorf("%w: extended boot record at sector %d has no signature", ErrPartitionTable, ebr)
		}
		es, ok := parseMBR(b)
		if !ok {
			return fmt.Errorf("%w: extended boot record at sector %d has bad entries", ErrPartitionTable, ebr)
		}
		// entry 0: the logical partition (relative to this record);
		// entry 1: the next record (relative to the extended partition)
		if es[0].ty != 0 && es[0].size != 0 {
			if err := add(num, es[0], ebr); err != nil {
				return err
			}
			num++
		}
		if es[1].ty == 0 || es[1].start == 0 {
			return nil
		}
		ebr = ext + es[1].start
	}
	return fmt.Errorf("%w: more than %d logical partitions", ErrPartitionTable, maxLogical)
}
