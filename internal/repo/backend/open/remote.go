package open

import (
	"context"
	"fmt"
	"net/url"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

func openRemote(ctx context.Context, u *url.URL, opts Options) (backend.Backend, error) {
	switch u.Scheme {
	default:
		return nil, backend.Permanent(fmt.Errorf("repository URL %q: unknown scheme %q (use file, s3 or swift)", u.Redacted(), u.Scheme))
	}
}
