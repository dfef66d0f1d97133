package filerestore

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
)

// TestBrowse reads the staged tree through the FS API: directory listings
// with types, attributes, random reads across holes and extents, symlinks.
func TestBrowse(t *testing.T) {
	staging := stage(t)
	must(t, os.Link(filepath.Join(staging, "data/small.txt"), filepath.Join(staging, "data/hardlink")))
	must(t, os.Chtimes(filepath.Join(staging, "data"), stamp, stamp))
	img := mkfs(t, staging, "64M", true)
	r, size := openImage(t, img)
	x, err := Open(r, size)
	must(t, err)

	ents, err := x.ReadDir(RootIno)
	must(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name)
	}
	sort.Strings(names)
	if len(names) != 3 || names[0] != "data" || names[1] != "lost+found" || names[2] != "shortcut" {
		t.Fatalf("root: %v", names)
	}
	data, err := x.Lookup(RootIno, "data")
	must(t, err)
	ents, err = x.ReadDir(data)
	must(t, err)
	types := map[string]uint32{}
	for _, e := range ents {
		types[e.Name] = e.Type
	}
	if types["nested"] != ModeDir || types["small.txt"] != ModeReg || types["link"] != ModeLink || len(ents) != 12 {
		t.Fatalf("data: %v", types)
	}
	if _, err := x.Lookup(data, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup nope: %v", err)
	}
	small, err := x.Lookup(data, "small.txt")
	must(t, err)
	if _, err := x.ReadDir(small); !errors.Is(err, ErrNotDir) {
		t.Fatalf("readdir of a file: %v", err)
	}
	if _, err := x.Lookup(small, "x"); !errors.Is(err, ErrNotDir) {
		t.Fatalf("lookup in a file: %v", err)
	}
	hl, err := x.Lookup(data, "hardlink")
	must(t, err)
	a, err := x.Attr(small)
	must(t, err)
	var st syscall.Stat_t
	must(t, syscall.Stat(filepath.Join(staging, "data/small.txt"), &st))
	if hl != small || a.Links != 2 || a.Mode != ModeReg|0o640 || a.Size != 22 || !a.Mtime.Equal(stamp) ||
		a.UID != st.Uid || a.GID != st.Gid {
		t.Fatalf("small.txt: ino %d/%d %+v", hl, small, a)
	}

	link, err := x.Lookup(data, "slowlink")
	must(t, err)
	if target, err := x.ReadLink(link); err != nil || target != "nested/a/b/c/long-target-long-target-long-target-long-target-long-target-long-target-long-target-long-target-" {
		t.Fatalf("slowlink: %q %v", target, err)
	}
	if _, err := x.ReadLink(small); err == nil {
		t.Fatal("readlink of a file")
	}
	if _, err := x.OpenFile(data); err == nil {
		t.Fatal("open of a directory")
	}

	// random reads of the big and the holey file match the originals
	rng := rand.New(rand.NewPCG(5, 6))
	for _, name := range []string{"big.bin", "holey", "empty"} {
		want, err := os.ReadFile(filepath.Join(staging, "data", name))
		must(t, err)
		ino, err := x.Lookup(data, name)
		must(t, err)
		f, err := x.OpenFile(ino)
		must(t, err)
		if f.Size() != int64(len(want)) {
			t.Fatalf("%s: size %d, want %d", name, f.Size(), len(want))
		}
		got, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size()+100))
		must(t, err)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: whole read differs", name)
		}
		for range 200 {
			off := rng.Int64N(int64(len(want)) + 10)
			p := make([]byte, rng.IntN(300000))
			n, err := f.ReadAt(p, off)
			wantN := max(0, min(len(p), len(want)-int(off)))
			if n != wantN || (n < len(p) && err != io.EOF) || (n == len(p) && err != nil) {
				t.Fatalf("%s: ReadAt(%d bytes at %d) = %d, %v; want %d", name, len(p), off, n, err, wantN)
			}
			if !bytes.Equal(p[:n], want[off:off+int64(n)]) {
				t.Fatalf("%s: bytes at %d differ", name, off)
			}
		}
	}
	s := x.Statfs()
	if s.Blocks*uint64(s.BlockSize) != 64<<20 || s.FreeBlocks == 0 || s.FreeBlocks >= s.Blocks || s.FreeInodes >= s.Inodes {
		t.Fatalf("statfs %+v", s)
	}
}

// TestBrowseSpecialFiles: device nodes and fifos keep their type and device
// numbers (mkfs.ext4 -d copies them; making them needs root).
func TestBrowseSpecialFiles(t *testing.T) {
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs make test as root (apt-get needs it); mknod needs root")
		}
		t.Skip("SKIPPED: mknod needs root")
	}
	staging := filepath.Join(t.TempDir(), "staging")
	must(t, os.MkdirAll(staging, 0o755))
	must(t, syscall.Mknod(filepath.Join(staging, "null"), syscall.S_IFCHR|0o666, 1<<8|3))
	must(t, syscall.Mknod(filepath.Join(staging, "big"), syscall.S_IFBLK|0o600, int(mkdev(259, 300))))
	must(t, syscall.Mkfifo(filepath.Join(staging, "fifo"), 0o644))
	must(t, os.Chmod(filepath.Join(staging, "null"), 0o666)) // past the umask
	img := mkfs(t, staging, "8M", false)
	r, size := openImage(t, img)
	x, err := Open(r, size)
	must(t, err)
	for name, want := range map[string]Attr{
		"null": {Mode: ModeChar | 0o666, Rdev: 1<<8 | 3},
		"big":  {Mode: ModeBlock | 0o600, Rdev: mkdev(259, 300)},
		"fifo": {Mode: ModeFIFO | 0o644},
	} {
		ino, err := x.Lookup(RootIno, name)
		must(t, err)
		a, err := x.Attr(ino)
		must(t, err)
		if a.Mode != want.Mode || a.Rdev != want.Rdev || a.Size != 0 {
			t.Fatalf("%s: mode %o rdev %#x, want %o %#x", name, a.Mode, a.Rdev, want.Mode, want.Rdev)
		}
	}
}

// mkdev is the kernel's new_encode_dev.
func mkdev(major, minor uint32) uint32 {
	return minor&0xff | major<<8 | (minor&^0xff)<<12
}

// TestBrowseCorruptImages walks corrupted images through the FS API (what
// the mount does): errors are fine, panics and endless loops are not.
func TestBrowseCorruptImages(t *testing.T) {
	staging := filepath.Join(t.TempDir(), "staging")
	must(t, os.MkdirAll(filepath.Join(staging, "a/b"), 0o755))
	must(t, os.WriteFile(filepath.Join(staging, "a/b/f"), randomBytes(9, 70000), 0o644))
	must(t, os.WriteFile(filepath.Join(staging, "a/g"), []byte("g"), 0o644))
	must(t, os.Symlink("b/f", filepath.Join(staging, "a/l")))
	img := mkfs(t, staging, "8M", false)
	data, err := os.ReadFile(img)
	must(t, err)
	var used []int64
	for blk := int64(0); blk < int64(len(data))/4096; blk++ {
		if !bytes.Equal(data[blk*4096:(blk+1)*4096], make([]byte, 4096)) {
			used = append(used, blk)
		}
	}
	rng := rand.New(rand.NewPCG(77, 78))
	opened, walked := 0, 0
	for range 300 {
		p := patched{base: data, patches: map[int64]byte{}}
		for range 1 + rng.IntN(8) {
			p.patches[used[rng.IntN(len(used))]*4096+int64(rng.IntN(4096))] = byte(rng.Uint32())
		}
		x, err := Open(p, int64(len(data)))
		if err != nil {
			continue
		}
		opened++
		// breadth first, each inode once, bounded
		queue, seen := []uint32{RootIno}, map[uint32]bool{RootIno: true}
		for len(queue) > 0 && len(seen) < 1000 {
			ino := queue[0]
			queue = queue[1:]
			a, err := x.Attr(ino)
			if err != nil {
				continue
			}
			switch a.Mode & ModeType {
			case ModeDir:
				ents, _ := x.ReadDir(ino)
				for _, e := range ents {
					if _, err := x.Lookup(ino, e.Name); err == nil && !seen[e.Ino] {
						seen[e.Ino] = true
						queue = append(queue, e.Ino)
					}
				}
			case ModeReg:
				if f, err := x.OpenFile(ino); err == nil {
					buf := make([]byte, 65536)
					for off := int64(0); off < min(f.Size(), 1<<20); off += int64(len(buf)) {
						if _, err := f.ReadAt(buf, off); err != nil {
							break
						}
					}
				}
			case ModeLink:
				_, _ = x.ReadLink(ino)
			}
		}
		walked += len(seen)
	}
	t.Logf("300 corrupted images: %d opened, %d inodes visited", opened, walked)
}
