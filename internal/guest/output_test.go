package guest_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/raksha-backup/raksha/internal/guest"
)

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"password=hunter2 next":                                                       "password=[redacted] next",
		"DB_PASSWORD='s3cr et' ok":                                                    "DB_PASSWORD=[redacted] ok",
		`{"api_key": "abc123", "name": "x"}`:                                          `{"api_key": [redacted], "name": "x"}`,
		"X-Auth-Token: gAAAAABk12345":                                                 "X-Auth-Token: [redacted]",
		"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9x":                                 "Authorization: [redacted] [redacted]",
		"curl -H 'Bearer eyJhbGciOiJIUzI1NiJ9x'":                                      "curl -H 'Bearer [redacted]'",
		"url https://admin:pa55@db.example:5432/x":                                    "url https://admin:[redacted]@db.example:5432/x",
		"os_secret_key=AKIA&region=1":                                                 "os_secret_key=[redacted]&region=1",
		"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\nafter": "[redacted]\nafter",
		"plain output: 42 rows, user=admin":                                           "plain output: 42 rows, user=admin",
	} {
		if got := guest.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTail(t *testing.T) {
	long := strings.Repeat("é", 10000) + "token=abcdef end"
	got := guest.Tail([]byte(long), 100)
	if len(got) > 100+len("…") || !strings.HasPrefix(got, "…") || !utf8.ValidString(got) {
		t.Errorf("tail of %d bytes: %d bytes %q", len(long), len(got), got)
	}
	if !strings.HasSuffix(got, "token=[redacted] end") || strings.Contains(got, "abcdef") {
		t.Errorf("tail %q: want the secret redacted", got)
	}
	// A secret's key just before the cut still hides its value.
	s := "password=" + strings.Repeat("x", 50) + strings.Repeat(" ", 10)
	if got := guest.Tail([]byte(s), 30); strings.Contains(got, "x") {
		t.Errorf("tail %q shows the end of a password whose key was cut", got)
	}
	if got := guest.Tail([]byte("short"), 100); got != "short" {
		t.Errorf("short output %q", got)
	}
}

// TestHookErrorBoundedAndRedacted: a hook that fails with megabytes of
// stderr ending in a password gives an error of at most a bounded size,
// with the password redacted (the error lands in the workflow history).
func TestHookErrorBoundedAndRedacted(t *testing.T) {
	_, c := newFake(t)
	h := guest.Hook{Name: "leaky", Path: "/bin/sh", Args: []string{"-c", "head -c 3000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo 'db password=hunter2 token: abc' >&2; exit 5"}}
	_, err := c.RunHooks(context.Background(), []guest.Hook{h}, "pre", guest.HookFail)
	var he *guest.HookError
	if !errors.As(err, &he) || he.Result.ExitCode != 5 {
		t.Fatalf("err %v, want the hook's failure", err)
	}
	msg := err.Error()
	if len(msg) > 1024 || strings.Contains(msg, "hunter2") || strings.Contains(msg, "abc") || !strings.Contains(msg, "password=[redacted]") {
		t.Errorf("hook error of %d bytes: %.300q", len(msg), msg)
	}
}
