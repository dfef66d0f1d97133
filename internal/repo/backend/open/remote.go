package open

import (
	"context"
	"fmt"
	"net/url"

	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/s3"
	"github.com/raksha-backup/raksha/internal/repo/backend/swift"
)

// openRemote opens the object-store backends: s3://bucket/prefix and
// swift://container/prefix. Credentials come from the environment and the
// clients' config files, as the s3 and swift packages describe.
func openRemote(ctx context.Context, u *url.URL, opts Options) (backend.Backend, error) {
	switch u.Scheme {
	case "s3", "swift":
	default:
		return nil, backend.Permanent(fmt.Errorf("repository URL %q: unknown scheme %q (use file, s3 or swift)", u.Redacted(), u.Scheme))
	}
	if u.User != nil {
		return nil, backend.Permanent(fmt.Errorf("repository URL %q: credentials do not belong in the URL; use the environment or a config file", u.Redacted()))
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, backend.Permanent(fmt.Errorf("repository URL %q: %s URLs take no query or fragment (%s://NAME/prefix)", u.Redacted(), u.Scheme, u.Scheme))
	}
	if u.Port() != "" {
		return nil, backend.Permanent(fmt.Errorf("repository URL %q: the host part is the bucket or container name, not a server (set the S3 endpoint separately)", u.Redacted()))
	}
	bucket, prefix, err := splitBucket(u)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "s3":
		be, err := s3.Open(ctx, bucket, prefix, s3.Config{
			Endpoint:       opts.S3Endpoint,
			PathStyle:      opts.S3PathStyle,
			Region:         opts.S3Region,
			Profile:        opts.S3Profile,
			RequestTimeout: opts.S3RequestTimeout,
			Log:            opts.Log,
		})
		if err != nil {
			return nil, fmt.Errorf("repository %s: %w", u.Redacted(), err)
		}
		return be, nil
	default: // swift
		be, err := swift.Open(ctx, bucket, prefix, swift.Config{Cloud: opts.SwiftCloud, Log: opts.Log})
		if err != nil {
			return nil, fmt.Errorf("repository %s: %w", u.Redacted(), err)
		}
		return be, nil
	}
}
