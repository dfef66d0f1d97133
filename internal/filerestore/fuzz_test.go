package filerestore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The fuzz targets of this file read disk images a tenant controls. An
// image is fuzzed in a sparse form (sparseImage) so that a disk of a few
// MiB, mostly zeros, is an input of a few KiB the engine can mutate.

// maxFuzzImage bounds the size of a fuzzed disk.
const maxFuzzImage = 8 << 20

// sparseImage is a disk of size bytes that reads as zeros but for its
// patches. It fails the test on a read at a negative offset or one that
// starts past the disk's end (a read straddling the end is how the readers
// probe a small disk: it returns io.EOF), and counts the bytes read.
type sparseImage struct {
	t       *testing.T
	size    int64
	patches []patch
	read    int64
	calls   int
	// maxRead bounds the bytes read: a multiple of the disk, not of what
	// its structures claim.
	maxRead int64
}

// maxFuzzReads bounds the reads of one fuzzed disk.
const maxFuzzReads = 200000

type patch struct {
	off  int64
	data []byte
}

// decodeSparse reads the fuzz form of a disk: a 4-byte little-endian size,
// then records of a 4-byte offset, a 2-byte length and that many bytes
// (a record past the size is cut; a short last record is dropped).
func decodeSparse(t *testing.T, b []byte) (*sparseImage, bool) {
	if len(b) < 4 {
		return nil, false
	}
	le := binary.LittleEndian
	img := &sparseImage{t: t, size: int64(le.Uint32(b))}
	if img.size > maxFuzzImage {
		return nil, false
	}
	img.maxRead = 64*img.size + 64<<20
	for b = b[4:]; len(b) >= 6; {
		off, n := int64(le.Uint32(b)), int(le.Uint16(b[4:]))
		b = b[6:]
		n = min(n, len(b))
		if off < img.size {
			img.patches = append(img.patches, patch{off: off, data: b[:min(int64(n), img.size-off)]})
		}
		b = b[n:]
	}
	return img, true
}

// encodeSparse is the fuzz form of a disk image: its non-zero 512-byte
// sectors, adjacent ones merged.
func encodeSparse(img []byte) []byte {
	le := binary.LittleEndian
	out := le.AppendUint32(nil, uint32(len(img)))
	const sec = 512
	zero := make([]byte, sec)
	for off := 0; off < len(img); {
		end := min(off+sec, len(img))
		if bytes.Equal(img[off:end], zero[:end-off]) {
			off = end
			continue
		}
		run := off
		for run < len(img) && run-off < 0xFFFF-sec {
			e := min(run+sec, len(img))
			if bytes.Equal(img[run:e], zero[:e-run]) {
				break
			}
			run = e
		}
		out = le.AppendUint32(out, uint32(off))
		out = le.AppendUint16(out, uint16(run-off))
		out = append(out, img[off:run]...)
		off = run
	}
	return out
}

func (s *sparseImage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > s.size {
		s.t.Fatalf("read of %d bytes at offset %d: outside the %d-byte image", len(p), off, s.size)
	}
	n := int(min(int64(len(p)), s.size-off))
	q := p[:n]
	clear(q)
	for _, pt := range s.patches {
		if pt.off < off+int64(n) && pt.off+int64(len(pt.data)) > off {
			s0 := max(pt.off, off)
			e := min(pt.off+int64(len(pt.data)), off+int64(n))
			copy(q[s0-off:e-off], pt.data[s0-pt.off:e-pt.off])
		}
	}
	s.read += int64(n)
	s.calls++
	if s.read > s.maxRead || s.calls > maxFuzzReads {
		s.t.Fatalf("%d reads, %d bytes read of a %d-byte disk: work not bounded by the disk", s.calls, s.read, s.size)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// fuzzImage makes a small file system with mkfs (args before the image
// and its size) from a staged tree and returns its fuzz form; patch, if
// not nil, edits the image first. Seeds are skipped without e2fsprogs.
func fuzzImage(f *testing.F, staging, size string, patch func([]byte), args ...string) []byte {
	f.Helper()
	img := filepath.Join(f.TempDir(), "fs.img")
	cmd := exec.Command("mkfs.ext4", append(append([]string{"-q", "-F"}, args...), "-d", staging, img, size)...)
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1700000000")
	if out, err := cmd.CombinedOutput(); err != nil {
		f.Fatalf("mkfs.ext4 %v: %v\n%s", args, err, out)
	}
	b, err := os.ReadFile(img)
	if err != nil {
		f.Fatal(err)
	}
	if patch != nil {
		patch(b)
	}
	return encodeSparse(b)
}

// fuzzStage builds the tree of the seed images: files small and with
// holes or several extents, a directory big enough to be indexed, symlinks
// fast and slow, special files.
func fuzzStage(f *testing.F) string {
	f.Helper()
	dir := filepath.Join(f.TempDir(), "staging")
	mk := func(rel string, data []byte) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			f.Fatal(err)
		}
	}
	mk("a.txt", []byte("hello\n"))
	mk("d/e/deep", []byte("deep\n"))
	// more than 12 blocks of 1 KiB (an indirect block in ext2), with one
	// byte in each sector (the fuzz form keeps non-zero sectors)
	mk("d/indirect", bytes.Repeat(append([]byte{'x'}, make([]byte, 511)...), 26))
	for i := range 24 {
		mk(fmt.Sprintf("many/name-%02d-with-a-much-longer-name-to-fill-a-block", i), nil)
	}
	// a file of 6 extents (more than the inode's 4: an extent tree)
	fl, err := os.Create(filepath.Join(dir, "frag"))
	if err != nil {
		f.Fatal(err)
	}
	for k := range 6 {
		if _, err := fl.WriteAt([]byte{byte(k + 1)}, int64(k)*4096); err != nil {
			f.Fatal(err)
		}
	}
	fl.Close()
	for _, l := range [][2]string{{"a.txt", "link"}, {strings.Repeat("long/", 16), "slowlink"}} {
		if err := os.Symlink(l[0], filepath.Join(dir, l[1])); err != nil {
			f.Fatal(err)
		}
	}
	return dir
}

// fsSeeds adds seed images of several kinds: ext4 with extents, 64-bit
// and checksums; ext2 block maps; large inodes; an indexed directory.
func fsSeeds(f *testing.F) {
	f.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		f.Log("SKIPPED seed images: mkfs.ext4 (e2fsprogs) not installed")
		return
	}
	st := fuzzStage(f)
	small := []string{"-b", "1024", "-N", "48", "-m", "0"}
	f.Add(fuzzImage(f, st, "512k", nil, append(small, "-t", "ext4", "-I", "128", "-O", "^has_journal,^resize_inode")...))
	f.Add(fuzzImage(f, st, "512k", nil, append(small, "-t", "ext4", "-I", "256", "-O", "^has_journal,^resize_inode,64bit,metadata_csum")...))
	f.Add(fuzzImage(f, st, "512k", nil, append(small, "-t", "ext2", "-I", "128", "-O", "^resize_inode")...))
	f.Add(fuzzImage(f, st, "512k", nil, append(small, "-t", "ext3", "-I", "128", "-O", "^has_journal,^resize_inode,^filetype")...))
	// an ext4 of 4 KiB blocks, the common case
	f.Add(fuzzImage(f, st, "1M", nil, "-t", "ext4", "-N", "48", "-O", "^has_journal,^resize_inode"))
}

// FuzzExt4 opens a fuzzed disk as an ext2/3/4 file system and walks it:
// every directory listed, every name looked up, every file's attributes,
// link target and data read. It must never panic, never read outside the
// disk, read each byte a bounded number of times, return errors that say
// what is wrong, and what it lists must be consistent (a name listed is
// found by Lookup; a file reads exactly its size).
func FuzzExt4(f *testing.F) {
	fsSeeds(f)
	f.Add([]byte("\x00\x10\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, ok := decodeSparse(t, data)
		if !ok {
			return
		}
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		x, err := Open(img, img.size)
		if err != nil {
			checkErr(t, err, ErrNotExt4, ErrUnsupported, ErrCorruptFS)
			return
		}
		_ = x.Statfs()
		if w := x.Journal().Warning(); x.Journal().NeedsRecovery && w == "" {
			t.Fatal("a journal needing recovery without a warning")
		}
		walkFS(t, x)
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 256<<20 {
			t.Fatalf("allocated %d bytes for a %d-byte disk", alloc, img.size)
		}
	})
}

// checkErr fails unless err is one of the package's errors (a message
// saying what is wrong and where), or a read error of the disk.
func checkErr(t *testing.T, err error, want ...error) {
	t.Helper()
	if err.Error() == "" {
		t.Fatal("an empty error message")
	}
	for _, w := range want {
		if errors.Is(err, w) {
			return
		}
	}
	t.Fatalf("error %q wraps none of %v", err, want)
}

// fsErrs are the errors browsing a file system may return.
var fsErrs = []error{ErrCorruptFS, ErrUnsupported, ErrNotDir, ErrNotFound, io.EOF}

// walkFS visits at most maxVisit inodes of x from the root.
func walkFS(t *testing.T, x *FS) {
	const maxVisit = 256
	seen := map[uint32]bool{RootIno: true}
	queue := []uint32{RootIno}
	for len(queue) > 0 && len(seen) <= maxVisit {
		ino := queue[0]
		queue = queue[1:]
		a, err := x.Attr(ino)
		if err != nil {
			checkErr(t, err, fsErrs...)
			continue
		}
		switch a.Mode & ModeType {
		case ModeDir:
			ents, err := x.ReadDir(ino)
			if err != nil {
				checkErr(t, err, fsErrs...)
				continue
			}
			for _, e := range ents {
				if e.Name == "" || e.Ino == 0 {
					t.Fatalf("directory %d lists %q at inode %d", ino, e.Name, e.Ino)
				}
				got, err := x.Lookup(ino, e.Name)
				if err != nil {
					t.Fatalf("directory %d lists %q but Lookup fails: %v", ino, e.Name, err)
				}
				if !seen[got] && len(seen) <= maxVisit {
					seen[got] = true
					queue = append(queue, got)
				}
			}
		case ModeLink:
			if _, err := x.ReadLink(ino); err != nil {
				checkErr(t, err, fsErrs...)
			}
		case ModeReg:
			readFile(t, x, ino, a.Size)
		}
	}
}

// readFile reads the start and the end of a file (at most 256 KiB) and
// checks ReadAt's contract at the end.
func readFile(t *testing.T, x *FS, ino uint32, size int64) {
	fl, err := x.OpenFile(ino)
	if err != nil {
		checkErr(t, err, fsErrs...)
		return
	}
	if fl.Size() != size {
		t.Fatalf("inode %d: Attr size %d, file size %d", ino, size, fl.Size())
	}
	buf := make([]byte, 128<<10)
	for _, off := range []int64{0, max(0, size-int64(len(buf)))} {
		n, err := fl.ReadAt(buf, off)
		want := min(int64(len(buf)), size-off)
		if err != nil && err != io.EOF {
			checkErr(t, err, fsErrs...)
			return
		}
		if int64(n) != max(want, 0) || (err == io.EOF) != (want < int64(len(buf))) {
			t.Fatalf("inode %d: ReadAt at %d of a %d-byte file: %d bytes, %v", ino, off, size, n, err)
		}
	}
}

// journalSeeds adds images whose journal is clean, needs recovery, or is
// external.
func journalSeeds(f *testing.F) {
	f.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		f.Log("SKIPPED seed images: mkfs.ext4 (e2fsprogs) not installed")
		return
	}
	st := filepath.Join(f.TempDir(), "staging")
	if err := os.MkdirAll(filepath.Join(st, "etc"), 0o755); err != nil {
		f.Fatal(err)
	}
	le := binary.LittleEndian
	recover := func(b []byte) {
		sb := b[1024:]
		le.PutUint32(sb[0x60:], le.Uint32(sb[0x60:])|incompatRecover)
		for off := 4096; off+64 <= len(b); off += 1024 { // s_start of the journal
			if binary.BigEndian.Uint32(b[off:]) == jbd2Magic && binary.BigEndian.Uint32(b[off+4:]) >= 3 {
				binary.BigEndian.PutUint32(b[off+0x1C:], 1)
				return
			}
		}
	}
	external := func(b []byte) {
		sb := b[1024:]
		le.PutUint32(sb[0x60:], le.Uint32(sb[0x60:])|incompatRecover)
		le.PutUint32(sb[sbJournalInum:], 0)
		le.PutUint32(sb[sbJournalDev:], 0x0811)
		copy(sb[sbJournalUUID:], "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10")
	}
	args := []string{"-t", "ext4", "-b", "1024", "-N", "16", "-m", "0", "-J", "size=1", "-O", "^resize_inode"}
	f.Add(fuzzImage(f, st, "4M", nil, args...))
	f.Add(fuzzImage(f, st, "4M", recover, args...))
	f.Add(fuzzImage(f, st, "4M", external, args...))
	f.Add(fuzzImage(f, st, "4M", recover, "-t", "ext3", "-b", "1024", "-N", "16", "-m", "0", "-J", "size=1", "-O", "^resize_inode"))
}

// FuzzReadJournal reads what a fuzzed disk's superblock and journal
// superblock say of the journal (this package does not replay journals:
// it reports one that needs recovery). It must never panic or read outside
// the disk; what it returns must be consistent and survive its JSON form.
func FuzzReadJournal(f *testing.F) {
	journalSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		img, ok := decodeSparse(t, data)
		if !ok {
			return
		}
		j, err := ReadJournal(img, img.size)
		if err != nil {
			checkErr(t, err, ErrNotExt4, ErrUnsupported, ErrCorruptFS)
			return
		}
		switch {
		case j.Kind != "" && j.Kind != "internal" && j.Kind != "external":
			t.Fatalf("journal kind %q", j.Kind)
		case j.NeedsRecovery && !j.RecoverFlag:
			t.Fatalf("needs recovery without the superblock's flag: %+v", j)
		case j.NeedsRecovery != (j.Warning() != ""):
			t.Fatalf("needs recovery %v, warning %q", j.NeedsRecovery, j.Warning())
		case j.Kind == "internal" && j.Inode == 0 || j.Kind != "internal" && (j.Inode != 0 || j.Start != 0):
			t.Fatalf("inconsistent journal: %+v", j)
		case j.Err != "" && !j.NeedsRecovery:
			t.Fatalf("unreadable journal not taken as needing recovery: %+v", j)
		}
		b, err := json.Marshal(j)
		if err != nil {
			t.Fatal(err)
		}
		var back Journal
		if err := json.Unmarshal(b, &back); err != nil || back != j {
			t.Fatalf("journal %+v does not survive JSON %s: %+v, %v", j, b, back, err)
		}
		if img.read > 64<<10 {
			t.Fatalf("read %d bytes for a superblock and a journal superblock", img.read)
		}
	})
}

// FuzzPartitionTable reads a fuzzed disk's GPT or MBR partition table and
// opens its partitions. It must never panic or read outside the disk; a
// table it accepts lists partitions inside the disk, in order, and
// survives its JSON form; errors say what is wrong.
func FuzzPartitionTable(f *testing.F) {
	le := binary.LittleEndian
	f.Add(encodeSparse(gptImage(512, 4<<20, gptPart{typ: linuxFSType, first: 2048, last: 4095, name: "root"},
		gptPart{typ: bytes.Repeat([]byte{0x11}, 16), first: 4096, last: 8190})))
	f.Add(encodeSparse(gptImage(4096, 4<<20, gptPart{typ: linuxFSType, first: 256, last: 511, name: "data"})))
	// an MBR with a primary Linux partition and an extended one holding
	// two logical partitions
	mbr := make([]byte, 4<<20)
	entry := func(b []byte, k int, ty byte, start, n uint32) {
		e := b[446+16*k:]
		e[4] = ty
		le.PutUint32(e[8:], start)
		le.PutUint32(e[12:], n)
		b[510], b[511] = 0x55, 0xAA
	}
	entry(mbr, 0, 0x83, 2048, 2048)
	entry(mbr, 1, 0x05, 4096, 4096)
	entry(mbr[4096*512:], 0, 0x83, 64, 1024)
	entry(mbr[4096*512:], 1, 0x05, 2048, 2048)
	entry(mbr[6144*512:], 0, 0x82, 64, 1024)
	f.Add(encodeSparse(mbr))
	// a GPT whose primary header is broken: the backup one is read
	gpt := gptImage(512, 1<<20, gptPart{typ: linuxFSType, first: 34, last: 2000})
	copy(gpt[len(gpt)-512:], gpt[512:1024])
	le.PutUint64(gpt[len(gpt)-512+72:], 2)
	h := gpt[len(gpt)-512 : len(gpt)-512+92]
	le.PutUint32(h[16:], 0)
	le.PutUint32(h[16:], crc32.ChecksumIEEE(h))
	gpt[512] = 'X'
	f.Add(encodeSparse(gpt))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, ok := decodeSparse(t, data)
		if !ok {
			return
		}
		tbl, err := ReadTable(img, img.size)
		if err != nil {
			checkErr(t, err, ErrPartitionTable)
			return
		}
		if tbl != nil {
			checkTable(t, tbl, img.size)
		}
		for _, n := range []int{0, 1, 5} {
			v, err := OpenVolume(img, img.size, n)
			if err != nil {
				checkErr(t, err, ErrPartitionTable, ErrNoPartition, ErrChoosePartition)
				continue
			}
			if v.Size < 0 || v.Partition != nil && (v.Partition.Start < 0 || v.Partition.Start+v.Size > img.size) {
				t.Fatalf("volume outside the disk: %+v", v.Partition)
			}
			if _, err := v.ReadAt(make([]byte, 512), 0); err != nil && err != io.EOF {
				t.Fatal(err)
			}
		}
		if img.read > 64<<20 {
			t.Fatalf("read %d bytes of a %d-byte disk", img.read, img.size)
		}
	})
}

// checkTable checks an accepted table: partitions in order, inside the
// disk, and the table the same after a JSON round trip.
func checkTable(t *testing.T, tbl *Table, size int64) {
	t.Helper()
	if tbl.Kind != "gpt" && tbl.Kind != "mbr" || tbl.SectorSize != 512 && tbl.SectorSize != 4096 {
		t.Fatalf("table %q of %d-byte sectors", tbl.Kind, tbl.SectorSize)
	}
	for k, p := range tbl.Partitions {
		if p.Number < 1 || k > 0 && p.Number <= tbl.Partitions[k-1].Number {
			t.Fatalf("partition numbers out of order: %v", tbl)
		}
		if p.Start < 0 || p.Size <= 0 || p.Start+p.Size > size {
			t.Fatalf("partition %d at %d+%d outside the %d-byte disk", p.Number, p.Start, p.Size, size)
		}
	}
	_ = tbl.String()
	b, err := json.Marshal(tbl)
	if err != nil {
		t.Fatal(err)
	}
	var back Table
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if b2, _ := json.Marshal(&back); !bytes.Equal(b, b2) {
		t.Fatalf("table does not survive JSON:\n%s\n%s", b, b2)
	}
}

// TestExtentsMapNoMoreThanTheDisk: an inode whose extents map more blocks
// than the disk holds (the superblock may claim any size; the same blocks
// may be mapped over and over) is corrupt, instead of a listing or a read
// that costs many times the disk.
func TestExtentsMapNoMoreThanTheDisk(t *testing.T) {
	f := &fsys{size: 64 << 10, bs: 1024, blocks: 1 << 24}
	in := &inode{ino: 12, flags: flagExtents, size: 1 << 30}
	le := binary.LittleEndian
	le.PutUint16(in.block[0:], 0xF30A)
	le.PutUint16(in.block[2:], 4) // entries
	le.PutUint16(in.block[4:], 4) // max
	for k := range 4 {
		e := in.block[12+12*k:]
		le.PutUint32(e[0:], uint32(k)*32768) // logical block
		le.PutUint16(e[4:], 32768)           // length
		le.PutUint32(e[8:], 10)              // the same physical blocks each time
	}
	if _, err := f.extents(in); !errors.Is(err, ErrCorruptFS) || !strings.Contains(err.Error(), "more than the disk's 64") {
		t.Fatalf("extents mapping 131072 blocks of a 64-block disk: %v", err)
	}
	le.PutUint16(in.block[2:], 1)
	le.PutUint16(in.block[12+4:], 50)
	if exts, err := f.extents(in); err != nil || len(exts) != 1 {
		t.Fatalf("one extent of 50 blocks: %v %v", exts, err)
	}
}
