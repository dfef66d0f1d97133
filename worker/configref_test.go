package main

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// TestConfigReferenceInREADME: the README's configuration reference lists
// every key Config reads (nested keys dotted, map entries as <id>), and
// nothing else.
func TestConfigReferenceInREADME(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	start := strings.Index(text, "### Configuration reference")
	if start < 0 {
		t.Fatal("README.md has no \"### Configuration reference\" section")
	}
	section := text[start:]
	if end := strings.Index(section[4:], "\n#"); end >= 0 {
		section = section[:end+4]
	}
	listed := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		first := strings.SplitN(line, "|", 3)[1]
		for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(first, -1) {
			listed[m[1]] = true
		}
	}
	keys := map[string]bool{}
	configKeys(reflect.TypeOf(Config{}), "", keys)
	for k := range keys {
		if !listed[k] {
			t.Errorf("worker.yaml key %s is not in the README's configuration reference", k)
		}
	}
	for k := range listed {
		if !keys[k] {
			t.Errorf("the README's configuration reference lists %s, which raksha-worker does not read", k)
		}
	}
}

// configKeys collects the yaml keys of t: structs nested with dots, maps of
// structs as prefix.<id>.key (and prefix itself).
func configKeys(t reflect.Type, prefix string, out map[string]bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if name == "" || name == "-" {
			continue
		}
		key := prefix + name
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Struct:
			configKeys(ft, key+".", out)
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			out[key] = true
			configKeys(ft.Elem(), key+".<id>.", out)
		default:
			out[key] = true
		}
	}
}
