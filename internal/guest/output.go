package guest

import (
	"regexp"
	"unicode/utf8"
)

// OutputTailSize is the most of a guest command's output (a hook's, a
// health check's, a guest-run's) that Raksha passes on: activity results
// and errors land in the workflow's history, which the operator's Temporal
// keeps and shows.
const OutputTailSize = 4096

// Redacted replaces a secret Redact finds.
const Redacted = "[redacted]"

var secretPatterns = []struct {
	re   *regexp.Regexp
	repl string
}{
	// A PEM private key block.
	{regexp.MustCompile(`(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)`), Redacted},
	// Authorization: Bearer/Basic credentials.
	{regexp.MustCompile(`(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}`), "${1}${2}" + Redacted},
	// Credentials in a URL: scheme://user:password@host.
	{regexp.MustCompile(`(://[^/\s:@]+:)[^/\s@]+@`), "${1}" + Redacted + "@"},
	// key=value, key: value, "key": "value" where the key names a secret.
	{regexp.MustCompile(`(?i)([A-Za-z0-9_.-]*(?:passw(?:or)?d|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential|auth)[A-Za-z0-9_.-]*"?\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;&]+)`), "${1}" + Redacted},
}

// Redact replaces the obvious secrets in guest output: values of
// key=value and key: value pairs whose key names a password, secret,
// token, API or access key, private key, credential or auth; bearer and
// basic credentials; passwords in URLs; PEM private keys. It is a safety
// net for output that goes where the tenant's secrets must not (histories,
// logs), not a guarantee: a secret in free text stays.
func Redact(s string) string {
	for _, p := range secretPatterns {
		s = p.re.ReplaceAllString(s, p.repl)
	}
	return s
}

// Tail returns at most the last n bytes of b, redacted (Redact), cut at a
// character boundary and marked with a leading "…" when something was cut. The redaction
// sees 1 KiB before the tail, so that a secret's key just before the cut
// still hides its value.
func Tail(b []byte, n int) string {
	if n <= 0 {
		return ""
	}
	cut := len(b) > n
	if from := len(b) - n - 1024; from > 0 {
		b = b[from:]
	}
	s := Redact(string(b))
	if len(s) <= n && !cut {
		return s
	}
	if len(s) > n {
		s = s[len(s)-n:]
	}
	for len(s) > 0 && !utf8.RuneStart(s[0]) {
		s = s[1:]
	}
	return "…" + s
}
