// Package open turns a repository URL into a backend.Backend wrapped with
// retries: file:///path, s3://bucket/prefix, swift://container/prefix.
package open

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
	"github.com/raksha-backup/raksha/internal/repo/backend/retry"
)

// Options carries settings that are not part of a repository URL. None of
// them is a secret: credentials come from the environment or config files.
type Options struct {
	// S3Endpoint is a custom S3 endpoint such as Ceph RGW or MinIO
	// (http://127.0.0.1:7480); empty means AWS.
	S3Endpoint string
	// S3PathStyle forces path-style bucket addressing (needed by RGW/MinIO).
	S3PathStyle bool
	// S3Region is the region to sign S3 requests for; empty means AWS_REGION,
	// the profile's region, or us-east-1.
	S3Region string
	// S3RequestTimeout bounds each S3 request, body included (a stalled
	// store fails the try, which is retried); 0 means s3.DefaultRequestTimeout.
	S3RequestTimeout time.Duration
	// S3Profile selects a profile of the AWS shared config and credentials
	// files; empty means AWS_PROFILE or "default".
	S3Profile string
	// SwiftCloud selects a clouds.yaml entry for swift:// URLs; empty means
	// ST_AUTH/ST_USER/ST_KEY, then OS_CLOUD, then the OS_* variables.
	SwiftCloud string
	// Retry is the retry policy for transient errors; zero means defaults.
	Retry retry.Policy
	// Log receives retry warnings; nil means slog.Default().
	Log *slog.Logger
}

// Open opens the backend the URL names. Errors name the URL and what is wrong.
func Open(ctx context.Context, rawURL string, opts Options) (backend.Backend, error) {
	be, err := openRaw(ctx, rawURL, opts)
	if err != nil {
		return nil, err
	}
	return retry.Wrap(be, opts.Retry, opts.Log), nil
}

func openRaw(ctx context.Context, rawURL string, opts Options) (backend.Backend, error) {
	if rawURL == "" {
		return nil, backend.Permanent(fmt.Errorf("repository URL is empty (use file:///path, s3://bucket/prefix or swift://container/prefix)"))
	}
	if strings.HasPrefix(rawURL, "/") {
		return nil, backend.Permanent(fmt.Errorf("repository URL %q: write a local path as file://%s", rawURL, rawURL))
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, backend.Permanent(fmt.Errorf("repository URL %q: %w", rawURL, err))
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, backend.Permanent(fmt.Errorf("repository URL %q: file URLs take an absolute path: file:///path", rawURL))
		}
		if u.Path == "" {
			return nil, backend.Permanent(fmt.Errorf("repository URL %q: no path", rawURL))
		}
		return local.Open(u.Path)
	default:
		return openRemote(ctx, u, opts)
	}
}

// splitBucket returns the bucket (host part) and the object prefix of u, the
// prefix without leading or trailing slashes.
func splitBucket(u *url.URL) (bucket, prefix string, err error) {
	if u.Host == "" {
		return "", "", backend.Permanent(fmt.Errorf("repository URL %q: no bucket or container name (%s://NAME/prefix)", u.Redacted(), u.Scheme))
	}
	return u.Host, strings.Trim(u.Path, "/"), nil
}
