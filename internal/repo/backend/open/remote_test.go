package open_test

import (
	"context"
	"strings"
	"testing"

	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/open"
)

// TestBadURL checks that every malformed repository URL is refused at once,
// permanently, with a message that names what is wrong and leaks no secret.
func TestBadURL(t *testing.T) {
	cases := []struct {
		url  string
		want string // a substring of the error
	}{
		{"", "URL is empty"},
		{"/srv/backups", "file:///srv/backups"},
		{"ftp://host/x", `unknown scheme "ftp"`},
		{"s3://", "no bucket or container name"},
		{"s3:///prefix", "no bucket or container name"},
		{"swift:///prefix", "no bucket or container name"},
		{"s3://Bad_Bucket/prefix", "invalid bucket name"},
		{"s3://ab/prefix", "invalid bucket name"},
		{"s3://bucket:9000/prefix", "not a server"},
		{"s3://key:topsecret@bucket/prefix", "credentials do not belong in the URL"},
		{"swift://container/prefix?region=x", "no query"},
		{"swift://a%2Fb/prefix", "invalid"},
		{"file://otherhost/path", "absolute path"},
		{"s3://bucket/%zz", "invalid URL escape"},
	}
	for _, tc := range cases {
		be, err := open.Open(context.Background(), tc.url, open.Options{})
		if err == nil {
			be.Close()
			t.Errorf("Open(%q) succeeded, want an error containing %q", tc.url, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%q) = %v, want it to contain %q", tc.url, err, tc.want)
		}
		if !backend.IsPermanent(err) {
			t.Errorf("Open(%q): error is not permanent: %v", tc.url, err)
		}
		if strings.Contains(err.Error(), "topsecret") {
			t.Errorf("Open(%q): error leaks the password: %v", tc.url, err)
		}
	}
}
