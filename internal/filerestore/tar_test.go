package filerestore

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type tarEntry struct {
	hdr  tar.Header
	data string
}

func mkTar(t *testing.T, ents ...tarEntry) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range ents {
		h := e.hdr
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeReg && h.Size == 0 {
			h.Size = int64(len(e.data))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if e.data != "" {
			if _, err := tw.Write([]byte(e.data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &b
}

func dir(name string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}}
}
func file(name, data string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name}, data: data}
}
func symlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target}}
}
func hardlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target}}
}

// TestExtractTarHostile feeds ExtractTar what a compromised appliance
// could send: each is refused with an error naming the entry and why, and
// nothing is written outside the target (a sibling directory, the
// "outside", stays empty; the symlinks' targets are never written through).
func TestExtractTarHostile(t *testing.T) {
	cases := []struct {
		name string
		ents []tarEntry
		want string
	}{
		{"dot-dot", []tarEntry{file("../escape", "x")}, `".." in the path`},
		{"dot-dot inside", []tarEntry{dir("a/"), file("a/../../escape", "x")}, `".." in the path`},
		{"absolute", []tarEntry{file("/tmp/escape", "x")}, "absolute path"},
		{"unclean", []tarEntry{dir("a/"), file("a//b", "x")}, "not a clean path"},
		{"dot", []tarEntry{file("./x", "x")}, "not a clean path"},
		{"target itself", []tarEntry{dir("./")}, "names the target directory itself"},
		{"symlink then file through it", []tarEntry{symlink("s", "OUTSIDE"), file("s/escape", "x")}, `parent "s" is not a directory this restore made`},
		{"absolute symlink then file", []tarEntry{symlink("s", "/"), file("s/escape", "x")}, `parent "s" is not a directory`},
		{"symlink then dir through it", []tarEntry{symlink("s", "OUTSIDE"), dir("s/d/")}, `parent "s" is not a directory`},
		{"file then file under it", []tarEntry{file("f", "x"), file("f/g", "x")}, `parent "f" is not a directory`},
		{"no parent", []tarEntry{file("a/b", "x")}, `parent "a" is not a directory`},
		{"hard link outside", []tarEntry{hardlink("h", "../OUTSIDE/secret")}, "not a file this restore wrote"},
		{"hard link absolute", []tarEntry{hardlink("h", "/etc/passwd")}, "not a file this restore wrote"},
		{"hard link to a symlink", []tarEntry{symlink("s", "OUTSIDE/secret"), hardlink("h", "s")}, "not a file this restore wrote"},
		{"hard link to a dir", []tarEntry{dir("d/"), hardlink("h", "d")}, "not a file this restore wrote"},
		{"long name", []tarEntry{file(strings.Repeat("a/", 3000)+"f", "x")}, "name longer than"},
		{"deep", []tarEntry{file(strings.Repeat("d/", MaxDepth+1)+"f", "x")}, "nested deeper"},
		{"unknown type", []tarEntry{{hdr: tar.Header{Name: "x", Typeflag: 'Z'}}}, "entry type"},
		{"duplicate", []tarEntry{file("f", "x"), file("f", "y")}, "file exists"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			outside, to := filepath.Join(base, "OUTSIDE"), filepath.Join(base, "to")
			if err := os.Mkdir(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			_, err := ExtractTar(context.Background(), mkTar(t, c.ents...), to, "/", ExtractOptions{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error saying %q", err, c.want)
			}
			if c.want != "file exists" && !errors.Is(err, ErrHostileArchive) {
				t.Errorf("%v is not ErrHostileArchive", err)
			}
			assertOnly(t, base, "OUTSIDE", "to")
			if ents, _ := os.ReadDir(outside); len(ents) > 0 {
				t.Errorf("written outside the target: %v", ents)
			}
			if _, err := os.Lstat(filepath.Join(base, "escape")); err == nil {
				t.Error("escape written next to the target")
			}
		})
	}
}

func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("%s holds %v, want %v", dir, got, names)
	}
}

// TestExtractTarBudget: a huge declared size stops before anything of the
// file is written; too many entries stop too; a stream that ends inside a
// file is an error.
func TestExtractTarBudget(t *testing.T) {
	// a header declaring 1 PiB, with no data behind it
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: "huge", Typeflag: tar.TypeReg, Size: 1 << 50, Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	tw.Flush()
	to := t.TempDir()
	_, err := ExtractTar(context.Background(), &b, to, "/", ExtractOptions{})
	if !errors.Is(err, ErrBudget) {
		t.Fatalf("huge size: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(to, "huge")); err == nil {
		t.Error("huge written")
	}
	_, err = ExtractTar(context.Background(), mkTar(t, file("a", "1"), file("b", "2"), file("c", "3")), t.TempDir(), "/", ExtractOptions{MaxEntries: 2})
	if !errors.Is(err, ErrBudget) || !strings.Contains(err.Error(), "/c") {
		t.Errorf("entries: %v", err)
	}
	_, err = ExtractTar(context.Background(), mkTar(t, file("a", "1234"), file("b", "5678")), t.TempDir(), "/", ExtractOptions{MaxBytes: 6})
	if !errors.Is(err, ErrBudget) || !strings.Contains(err.Error(), "/b") {
		t.Errorf("bytes: %v", err)
	}
	full := mkTar(t, file("a", strings.Repeat("x", 5000))).Bytes()
	_, err = ExtractTar(context.Background(), bytes.NewReader(full[:2000]), t.TempDir(), "/", ExtractOptions{})
	if err == nil || !strings.Contains(err.Error(), "read the tar stream") {
		t.Errorf("truncated: %v", err)
	}
}

// TestExtractTarRules: special bits, hard links, devices and directory
// modes on a well-formed stream.
func TestExtractTarRules(t *testing.T) {
	ents := []tarEntry{
		dir("d/"),
		{hdr: tar.Header{Name: "d/suid", Mode: 0o4755}, data: "#!"},
		hardlink("d/again", "d/suid"),
		{hdr: tar.Header{Name: "d/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}},
		{hdr: tar.Header{Name: "ro/", Typeflag: tar.TypeDir, Mode: 0o555}},
		file("ro/inside", "x"),
		symlink("ro/up", "../../../../etc/passwd"),
	}
	to := t.TempDir()
	st, err := ExtractTar(context.Background(), mkTar(t, ents...), to, "/", ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(to, "d/suid"))
	if fi.Mode()&os.ModeSetuid != 0 || st.SpecialBitsStripped != 1 || len(st.Warnings) != 1 {
		t.Errorf("setuid: %v %+v", fi.Mode(), st)
	}
	again, _ := os.Stat(filepath.Join(to, "d/again"))
	if !os.SameFile(fi, again) || st.Hardlinks != 1 || st.Files != 2 {
		t.Errorf("hard link: %+v", st)
	}
	if _, err := os.Lstat(filepath.Join(to, "d/null")); err == nil || len(st.Skipped) != 1 {
		t.Errorf("device restored or not listed: %v", st.Skipped)
	}
	ro, _ := os.Stat(filepath.Join(to, "ro"))
	if ro.Mode().Perm() != 0o555 {
		t.Errorf("ro: %v", ro.Mode())
	}
	if l, _ := os.Readlink(filepath.Join(to, "ro/up")); l != "../../../../etc/passwd" {
		t.Errorf("symlink %q", l)
	}
	os.Chmod(filepath.Join(to, "ro"), 0o755)
	st, err = ExtractTar(context.Background(), mkTar(t, ents[:2]...), t.TempDir(), "/", ExtractOptions{KeepSpecialBits: true})
	if err != nil || st.SpecialBitsStripped != 0 {
		t.Errorf("kept: %v %+v", err, st)
	}
}
