package filerestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// need fails under CI and skips elsewhere when a tool is missing.
func need(t *testing.T, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s missing in CI: run make test-deps (Debian package %s)", tool, pkg)
		}
		t.Skipf("SKIPPED: %s (%s) not installed: run make test-deps", tool, pkg)
	}
}

// fsAt is an ext4 file system to make at a sector of a partitioned image.
type fsAt struct {
	sector  int64
	size    string
	staging string
}

// partitioned writes a sparse image of size MiB, partitions it with the
// sfdisk script and makes ext4 file systems in it (mkfs.ext4 -E offset,
// no loop device).
func partitioned(t *testing.T, sizeMiB int64, script string, fss ...fsAt) string {
	t.Helper()
	need(t, "sfdisk", "fdisk")
	need(t, "mkfs.ext4", "e2fsprogs")
	img := filepath.Join(t.TempDir(), "disk.img")
	must(t, os.WriteFile(img, nil, 0o600))
	must(t, os.Truncate(img, sizeMiB<<20))
	cmd := exec.Command("sfdisk", "-q", "--no-reread", "--no-tell-kernel", img)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	for _, f := range fss {
		args := []string{"-q", "-F", "-E", fmt.Sprintf("offset=%d", f.sector*512)}
		if f.staging != "" {
			args = append(args, "-d", f.staging)
		}
		if out, err := exec.Command("mkfs.ext4", append(args, img, f.size)...).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4 at sector %d: %v\n%s", f.sector, err, out)
		}
	}
	return img
}

const (
	typeEFI   = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	typeLinux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
	typeSwap  = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
)

func TestGPTOnlyLinuxPartitionChosen(t *testing.T) {
	staging := stage(t)
	img := partitioned(t, 96, "label: gpt\n"+
		"start=2048, size=20480, type="+typeEFI+", name=\"efi\"\n"+
		"start=22528, size=8192, type="+typeSwap+"\n"+
		"start=32768, size=131072, type="+typeLinux+", name=\"root\"\n",
		fsAt{sector: 32768, size: "64M", staging: staging})
	r, size := openImage(t, img)

	tbl, err := ReadTable(r, size)
	must(t, err)
	if tbl == nil || tbl.Kind != "gpt" || len(tbl.Partitions) != 3 {
		t.Fatalf("table %+v", tbl)
	}
	p := tbl.Partitions[2]
	if p.Number != 3 || p.Start != 32768*512 || p.Size != 64<<20 || p.Type != "Linux filesystem" || p.Name != "root" || !p.Linux {
		t.Fatalf("partition 3: %+v", p)
	}
	if tbl.Partitions[0].Type != "EFI System" || tbl.Partitions[1].Type != "Linux swap" || tbl.Partitions[0].Linux || tbl.Partitions[1].Linux {
		t.Fatalf("partitions: %+v", tbl.Partitions)
	}

	for _, n := range []int{0, 3} { // automatic, and asked for
		v, err := OpenVolume(r, size, n)
		must(t, err)
		if v.Partition == nil || v.Partition.Number != 3 || v.Size != 64<<20 {
			t.Fatalf("volume %d: %+v", n, v)
		}
		dest := filepath.Join(t.TempDir(), "out")
		if _, err := Extract(context.Background(), v, v.Size, "/", dest, ExtractOptions{}); err != nil {
			t.Fatal(err)
		}
		must(t, os.Remove(filepath.Join(dest, "lost+found")))
		sameTree(t, staging, dest)
	}

	// a partition without a file system in it
	v, err := OpenVolume(r, size, 1)
	must(t, err)
	if _, err := Extract(context.Background(), v, v.Size, "/", t.TempDir(), ExtractOptions{}); !errors.Is(err, ErrNotExt4) {
		t.Fatalf("EFI partition: %v", err)
	}

	// bad numbers
	for _, n := range []int{4, 128, -1} {
		_, err := OpenVolume(r, size, n)
		var pe *PartitionError
		if !errors.Is(err, ErrNoPartition) || !errors.As(err, &pe) || pe.Asked != n {
			t.Fatalf("partition %d: %v", n, err)
		}
		if n == 4 && (!strings.Contains(err.Error(), "no partition 4") ||
			!strings.Contains(err.Error(), `3 (Linux filesystem "root", 64 MiB at 16 MiB, ext4)`)) {
			t.Fatalf("partition 4: %v", err)
		}
		t.Logf("partition %d: %v", n, err)
	}

	// the whole disk read as a file system names the table
	if _, err := Extract(context.Background(), r, size, "/", t.TempDir(), ExtractOptions{}); !errors.Is(err, ErrNotExt4) || !strings.Contains(err.Error(), "GPT") {
		t.Fatalf("whole disk: %v", err)
	}
}

func TestGPTBackupHeader(t *testing.T) {
	img := partitioned(t, 40, "label: gpt\nstart=2048, size=40960, type="+typeLinux+"\n",
		fsAt{sector: 2048, size: "20M"})
	data, err := os.ReadFile(img)
	must(t, err)
	// damage the primary header's checksum: the backup in the last sector is used
	data[512+16] ^= 0xFF
	v, err := OpenVolume(bytes.NewReader(data), int64(len(data)), 0)
	must(t, err)
	if v.Partition.Number != 1 || v.Partition.Start != 1<<20 {
		t.Fatalf("from the backup header: %+v", v.Partition)
	}
	if _, err := Open(v, v.Size); err != nil {
		t.Fatal(err)
	}
	// damage the backup too
	last := len(data) - 512
	if string(data[last:last+8]) != "EFI PART" {
		t.Fatal("no backup header in the last sector")
	}
	data[last+16] ^= 0xFF
	if _, err := OpenVolume(bytes.NewReader(data), int64(len(data)), 0); !errors.Is(err, ErrPartitionTable) || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("both headers damaged: %v", err)
	}
}

func TestGPTNoOrSeveralLinuxPartitions(t *testing.T) {
	img := partitioned(t, 64, "label: gpt\n"+
		"start=2048, size=20480, type="+typeLinux+", name=\"a\"\n"+
		"start=22528, size=20480, type="+typeLinux+", name=\"b\"\n"+
		"start=43008, size=20480, type="+typeEFI+"\n",
		fsAt{sector: 2048, size: "10M"}, fsAt{sector: 22528, size: "10M"})
	r, size := openImage(t, img)
	_, err := OpenVolume(r, size, 0)
	var pe *PartitionError
	if !errors.Is(err, ErrChoosePartition) || !errors.As(err, &pe) || len(pe.Table.Partitions) != 3 {
		t.Fatalf("two Linux partitions: %v", err)
	}
	want := `choose a partition: the disk has a GPT partition table with 2 Linux file-system partitions; ` +
		`GPT partitions: 1 (Linux filesystem "a", 10 MiB at 1 MiB, ext4), 2 (Linux filesystem "b", 10 MiB at 11 MiB, ext4), 3 (EFI System, 10 MiB at 21 MiB)`
	if err.Error() != want {
		t.Fatalf("error:\n%s\nwant\n%s", err, want)
	}
	v, err := OpenVolume(r, size, 2)
	must(t, err)
	if v.Partition.Name != "b" {
		t.Fatalf("partition 2: %+v", v.Partition)
	}

	img = partitioned(t, 16, "label: gpt\nstart=2048, size=20480, type="+typeEFI+"\n")
	r, size = openImage(t, img)
	if _, err := OpenVolume(r, size, 0); !errors.Is(err, ErrChoosePartition) || !strings.Contains(err.Error(), "no Linux file-system partition") {
		t.Fatalf("no Linux partition: %v", err)
	}
}

// TestMBRLogicalPartitions: a primary Linux partition and two logical ones
// in an extended partition (numbered 5 and 6 as Linux does).
func TestMBRLogicalPartitions(t *testing.T) {
	staging := stage(t)
	img := partitioned(t, 128, "label: dos\n"+
		"start=2048, size=40960, type=83\n"+
		"start=43008, size=200704, type=5\n"+
		"start=45056, size=20480, type=82\n"+
		"start=67584, size=131072, type=83\n",
		fsAt{sector: 2048, size: "20M"}, fsAt{sector: 67584, size: "64M", staging: staging})
	r, size := openImage(t, img)
	tbl, err := ReadTable(r, size)
	must(t, err)
	var got []string
	for _, p := range tbl.Partitions {
		got = append(got, fmt.Sprintf("%d:%s:%d+%d", p.Number, p.TypeID, p.Start/512, p.Size/512))
	}
	if tbl.Kind != "mbr" || strings.Join(got, " ") != "1:0x83:2048+40960 5:0x82:45056+20480 6:0x83:67584+131072" {
		t.Fatalf("table %s: %v", tbl.Kind, got)
	}
	if _, err := OpenVolume(r, size, 0); !errors.Is(err, ErrChoosePartition) {
		t.Fatalf("two Linux partitions: %v", err)
	}
	v, err := OpenVolume(r, size, 6)
	must(t, err)
	dest := filepath.Join(t.TempDir(), "out")
	if _, err := Extract(context.Background(), v, v.Size, "/", dest, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	must(t, os.Remove(filepath.Join(dest, "lost+found")))
	sameTree(t, staging, dest)
	// the extended partition itself is no partition to open
	if _, err := OpenVolume(r, size, 2); !errors.Is(err, ErrNoPartition) {
		t.Fatalf("partition 2: %v", err)
	}
}

func TestMBRSingleLinux(t *testing.T) {
	img := partitioned(t, 32, "label: dos\nstart=2048, size=61440, type=83\n", fsAt{sector: 2048, size: "30M"})
	r, size := openImage(t, img)
	v, err := OpenVolume(r, size, 0)
	must(t, err)
	if v.Table.Kind != "mbr" || v.Partition.Number != 1 || v.Partition.Type != "Linux" {
		t.Fatalf("volume %+v", v.Partition)
	}
	x, err := Open(v, v.Size)
	must(t, err)
	if _, err := x.Lookup(RootIno, "lost+found"); err != nil {
		t.Fatal(err)
	}
}

func TestNoPartitionTable(t *testing.T) {
	staging := stage(t)
	img := mkfs(t, staging, "16M", false)
	r, size := openImage(t, img)
	v, err := OpenVolume(r, size, 0)
	must(t, err)
	if v.Table != nil || v.Partition != nil || v.Size != size {
		t.Fatalf("volume %+v", v)
	}
	_, err = OpenVolume(r, size, 1)
	if !errors.Is(err, ErrNoPartition) || !strings.Contains(err.Error(), "no partition table") {
		t.Fatalf("partition 1 of a whole-disk file system: %v", err)
	}
	// zeros, random bytes and short disks are no partition table
	for name, data := range map[string][]byte{"zeros": make([]byte, 1<<20), "random": randomBytes(7, 1<<20), "short": []byte("x")} {
		if tbl, err := ReadTable(bytes.NewReader(data), int64(len(data))); tbl != nil || err != nil {
			t.Fatalf("%s: %+v, %v", name, tbl, err)
		}
	}
	// a boot sector signature over entries that make no sense (a FAT or
	// NTFS boot sector): not a partition table
	b := randomBytes(8, 1<<20)
	b[446] = 0x33
	b[510], b[511] = 0x55, 0xAA
	if tbl, err := ReadTable(bytes.NewReader(b), int64(len(b))); tbl != nil || err != nil {
		t.Fatalf("boot sector: %+v, %v", tbl, err)
	}
	// an MBR partition past the end of the disk
	m := make([]byte, 1<<20)
	m[510], m[511] = 0x55, 0xAA
	copy(m[446:], []byte{0, 0, 0, 0, 0x83, 0, 0, 0, 0x00, 0x08, 0, 0, 0x00, 0x00, 0x10, 0})
	if _, err := ReadTable(bytes.NewReader(m), int64(len(m))); !errors.Is(err, ErrPartitionTable) {
		t.Fatalf("partition past the end: %v", err)
	}
}

// TestPartitionTablesCorrupt flips bytes of partition tables: errors, never
// panics or hangs.
func TestPartitionTablesCorrupt(t *testing.T) {
	gpt := partitioned(t, 8, "label: gpt\nstart=2048, size=8192, type="+typeLinux+"\n")
	mbr := partitioned(t, 8, "label: dos\nstart=2048, size=8192, type=5\nsize=2048, type=83\nsize=2048, type=83\n")
	for img, parts := range map[string]int{gpt: 1, mbr: 2} {
		data, err := os.ReadFile(img)
		must(t, err)
		tbl, err := ReadTable(bytes.NewReader(data), int64(len(data)))
		if err != nil || len(tbl.Partitions) != parts {
			t.Fatalf("%+v, %v", tbl, err)
		}
		var hot []int // the non-zero bytes: tables and records
		for k, c := range data {
			if c != 0 {
				hot = append(hot, k)
			}
		}
		rng := rand.New(rand.NewPCG(11, 12))
		d := bytes.Clone(data)
		for range 2000 {
			copy(d, data)
			for range 1 + rng.IntN(4) {
				d[hot[rng.IntN(len(hot))]] = byte(rng.Uint32())
			}
			if v, err := OpenVolume(bytes.NewReader(d), int64(len(d)), rng.IntN(8)); err == nil {
				if v.Size < 0 || v.Partition != nil && v.Partition.Start+v.Size > int64(len(d)) {
					t.Fatalf("volume outside the disk: %+v", v.Partition)
				}
				buf := make([]byte, 4096)
				if _, err := v.ReadAt(buf, 0); err != nil && err != io.EOF {
					t.Fatal(err)
				}
			}
		}
	}
}

// gptImage builds a GPT disk in memory with sector size ss (no tool writes
// 4096-byte-sector tables into a file): parts are (type GUID bytes, first
// and last sector, name).
func gptImage(ss, size int64, parts ...gptPart) []byte {
	le := binary.LittleEndian
	d := make([]byte, size)
	ents := make([]byte, 128*128)
	for k, p := range parts {
		e := ents[128*k:]
		copy(e[0:16], p.typ)
		e[16] = byte(k + 1) // a unique GUID
		le.PutUint64(e[32:], uint64(p.first))
		le.PutUint64(e[40:], uint64(p.last))
		for j, c := range p.name {
			le.PutUint16(e[56+2*j:], uint16(c))
		}
	}
	copy(d[2*ss:], ents)
	h := d[ss : ss+92]
	copy(h, "EFI PART")
	le.PutUint32(h[8:], 0x00010000)
	le.PutUint32(h[12:], 92)
	le.PutUint64(h[24:], 1)
	le.PutUint64(h[32:], uint64(size/ss-1))
	le.PutUint64(h[72:], 2)
	le.PutUint32(h[80:], 128)
	le.PutUint32(h[84:], 128)
	le.PutUint32(h[88:], crc32.ChecksumIEEE(ents))
	le.PutUint32(h[16:], crc32.ChecksumIEEE(h))
	return d
}

type gptPart struct {
	typ         []byte
	first, last int64
	name        string
}

// linuxFSType is the Linux filesystem type GUID as stored on disk.
var linuxFSType = []byte{0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4}

func TestGPT4KSectors(t *testing.T) {
	d := gptImage(4096, 8<<20, gptPart{typ: linuxFSType, first: 256, last: 1279, name: "data"})
	// sector 512 of a 4Kn disk holds nothing: the header is at 4096
	tbl, err := ReadTable(bytes.NewReader(d), int64(len(d)))
	must(t, err)
	if tbl.SectorSize != 4096 || len(tbl.Partitions) != 1 {
		t.Fatalf("table %+v", tbl)
	}
	p := tbl.Partitions[0]
	if p.Start != 1<<20 || p.Size != 4<<20 || p.Type != "Linux filesystem" || p.Name != "data" || !p.Linux {
		t.Fatalf("partition %+v", p)
	}
	// the same table with 512-byte sectors
	d = gptImage(512, 8<<20, gptPart{typ: linuxFSType, first: 2048, last: 10239})
	v, err := OpenVolume(bytes.NewReader(d), int64(len(d)), 0)
	must(t, err)
	if v.Partition.Start != 1<<20 || v.Size != 4<<20 {
		t.Fatalf("volume %+v", v.Partition)
	}
	// unknown types are listed by GUID and never picked
	d = gptImage(512, 8<<20, gptPart{typ: bytes.Repeat([]byte{0x11}, 16), first: 2048, last: 4095})
	_, err = OpenVolume(bytes.NewReader(d), int64(len(d)), 0)
	if !errors.Is(err, ErrChoosePartition) || !strings.Contains(err.Error(), "1 (type 11111111-1111-1111-1111-111111111111, 1 MiB at 1 MiB)") {
		t.Fatalf("unknown type: %v", err)
	}
	// a partition past the disk's end
	d = gptImage(512, 8<<20, gptPart{typ: linuxFSType, first: 2048, last: 20000})
	if _, err := ReadTable(bytes.NewReader(d), int64(len(d))); !errors.Is(err, ErrPartitionTable) {
		t.Fatalf("partition past the end: %v", err)
	}
}
