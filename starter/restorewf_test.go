package main

import (
	"strings"
	"testing"
)

// TestCLIRestoreAndCloneUsage checks the restore and clone commands' input
// errors: they fail before any Temporal connection, with exit code 2.
func TestCLIRestoreAndCloneUsage(t *testing.T) {
	c := &cli{t: t, env: map[string]string{"RAKSHA_TEMPORAL": "127.0.0.1:1"}}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"restore", "start", "b1"}, "--repository is required"},
		{[]string{"restore", "start", "b1", "--repository", "main", "--map-network", "nonet"}, `--map-network "nonet": want OLD=NEW`},
		{[]string{"restore", "start", "b1", "--repository", "main", "--map-flavor", "a="}, `--map-flavor "a=": want OLD=NEW`},
		{[]string{"restore", "start", "b1", "--repository", "main", "--in-place", "--to-project", "x"}, "--in-place rolls the captured servers back"},
		{[]string{"restore", "start", "--repository", "main"}, "accepts 1 arg"},
		{[]string{"clone", "start", "b1", "--repository", "main"}, "--to-project is required"},
		{[]string{"clone", "delete", "stg1"}, "--project is required"},
	} {
		_, _, err := c.run(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("raksha %v: %v, want %q", tc.args, err, tc.want)
			continue
		}
		if code := exitCode(err); code != 2 && !strings.Contains(tc.want, "accepts") {
			t.Errorf("raksha %v: exit code %d, want 2", tc.args, code)
		}
	}
}
