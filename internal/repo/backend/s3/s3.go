// Package s3 stores a repository's objects in an S3 bucket: AWS S3 or an
// S3-compatible store such as Ceph RGW or MinIO (URL s3://bucket/prefix).
//
// Object name N is stored under the key PREFIX/N (N alone when the prefix is
// empty). Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the shared config and credentials
// files, ~/.aws/config and ~/.aws/credentials or AWS_CONFIG_FILE and
// AWS_SHARED_CREDENTIALS_FILE, web identity, container and instance roles)
// unless Config names a provider. A PUT is atomic in S3, so Save needs no temporary object.
//
// The SDK's own retries are switched off: the retry wrapper
// (backend/retry) retries what classify marks as transient, and only that.
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

// DefaultRegion is the region used when neither Config, the environment nor a
// profile names one. S3-compatible stores usually accept any region.
const DefaultRegion = "us-east-1"

// Config holds the settings of an S3 backend that are not in its URL.
type Config struct {
	// Endpoint is the base URL of an S3-compatible service, for example
	// http://127.0.0.1:7480 for Ceph RGW. Empty means the SDK's choice: AWS,
	// or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL from the environment.
	Endpoint string
	// PathStyle addresses buckets as ENDPOINT/bucket/key instead of
	// bucket.ENDPOINT/key. RGW and MinIO usually need it.
	PathStyle bool
	// Region overrides AWS_REGION and the profile's region; if none of them is
	// set, DefaultRegion is used.
	Region string
	// Profile selects a profile of the shared config and credentials files
	// instead of AWS_PROFILE (or "default").
	Profile string
	// Credentials, when not nil, replaces the standard credential chain.
	Credentials aws.CredentialsProvider
	// HTTPClient, when not nil, replaces the client Open builds (one tuned for
	// many parallel small requests to one host). When AWS_CA_BUNDLE is set
	// the SDK needs an *awshttp.BuildableClient here, not an *http.Client.
	HTTPClient aws.HTTPClient
	// ListPageSize is the number of keys List asks for per request; 0 means
	// 1000, the S3 maximum. Tests set it small to exercise pagination.
	ListPageSize int32
	// RequestTimeout bounds one request (one try of Save, Load, Stat,
	// Delete, Copy or one List page) from sending it to reading the last
	// byte of the answer: a store that stalls, also in the middle of a body,
	// fails the try with a transient error (ErrRequestTimeout) that the
	// retry wrapper retries. 0 means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Log receives debug messages; nil means slog.Default().
	Log *slog.Logger
}

// DefaultRequestTimeout is the RequestTimeout when Config sets none: ample
// for repository objects (chunks of a few MiB) on a slow link.
const DefaultRequestTimeout = 2 * time.Minute

// ErrRequestTimeout is wrapped by the errors of requests that ran out of
// their RequestTimeout. Unlike an expired caller's context it is transient:
// backend.IsPermanent is false for it.
var ErrRequestTimeout = errors.New("request timed out")

// Backend is a bucket (or a prefix in a bucket) of objects. It is safe for
// concurrent use. It implements backend.Backend and backend.Copier.
type Backend struct {
	client    *s3.Client
	bucket    string
	prefix    string // without slashes at either end; may be empty
	pageSize  int32
	location  string
	transport atomic.Pointer[http.Transport] // ours to close, once built
	timeout   time.Duration
	log       *slog.Logger
}

var (
	_ backend.Backend = (*Backend)(nil)
	_ backend.Copier  = (*Backend)(nil)
)

// bucketNameRE is the S3 rule for bucket names: 3-63 lowercase letters,
// digits, dots and hyphens, beginning and ending with a letter or digit.
var bucketNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// Open returns a backend for the objects under prefix in bucket, creating the
// bucket if it does not exist. It checks that credentials can be found and
// that they give access to the bucket; errors that retrying cannot fix (a bad
// bucket name, no credentials, access denied) are backend.Permanent.
func Open(ctx context.Context, bucket, prefix string, cfg Config) (*Backend, error) {
	if !bucketNameRE.MatchString(bucket) || strings.Contains(bucket, "..") {
		return nil, backend.Permanent(fmt.Errorf("s3: invalid bucket name %q: use 3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit", bucket))
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	b := &Backend{
		bucket:   bucket,
		prefix:   strings.Trim(prefix, "/"),
		pageSize: cfg.ListPageSize,
		timeout:  cfg.RequestTimeout,
		log:      log,
	}
	if b.timeout <= 0 {
		b.timeout = DefaultRequestTimeout
	}
	if b.pageSize <= 0 || b.pageSize > 1000 {
		b.pageSize = 1000
	}
	var hc aws.HTTPClient = newHTTPClient(&b.transport)
	if cfg.HTTPClient != nil {
		hc = cfg.HTTPClient
	}
	loadOpts := []func(*config.LoadOptions) error{
		config.WithDefaultRegion(DefaultRegion),
		config.WithHTTPClient(hc),
		// One attempt per call: backend/retry decides what to retry.
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
		// Checksums only where S3 requires them: the repository hashes every
		// object itself, and older S3-compatible stores reject the newer
		// checksum headers and trailers.
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if cfg.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		loadOpts = append(loadOpts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.Credentials != nil {
		loadOpts = append(loadOpts, config.WithCredentialsProvider(cfg.Credentials))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		b.closeIdle()
		return nil, backend.Permanent(fmt.Errorf("s3 open %s: load AWS configuration: %w", bucket, err))
	}
	b.client = s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
	})
	b.location = "s3://" + bucket
	if b.prefix != "" {
		b.location += "/" + b.prefix
	}
	if ep := endpointForLog(cfg.Endpoint, b.client.Options().BaseEndpoint); ep != "" {
		b.location += " at " + ep
	}
	if awsCfg.Credentials == nil {
		b.closeIdle()
		return nil, backend.Permanent(fmt.Errorf("s3 open %s: no AWS credentials configured", b.location))
	}
	if _, err := awsCfg.Credentials.Retrieve(ctx); err != nil {
		b.closeIdle()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("s3 open %s: get credentials: %w", b.location, ctx.Err())
		}
		return nil, backend.Permanent(fmt.Errorf("s3 open %s: no usable AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE and a credentials file): %w", b.location, err))
	}
	if err := b.ensureBucket(ctx, awsCfg.Region); err != nil {
		b.closeIdle()
		return nil, err
	}
	return b, nil
}

// endpointForLog returns the configured endpoint without user information,
// or "" for the SDK's default (AWS).
func endpointForLog(configured string, base *string) string {
	ep := configured
	if ep == "" && base != nil {
		ep = *base
	}
	if ep == "" {
		return ""
	}
	if u, err := url.Parse(ep); err == nil {
		return u.Redacted()
	}
	return "(unparsable endpoint)"
}

// newHTTPClient returns a client for many parallel small requests to one
// host: enough idle connections kept per host that a burst of concurrent PUTs
// reuses them instead of opening (and leaving in TIME_WAIT) new ones. It is
// the SDK's buildable client, so AWS_CA_BUNDLE still applies; the transport
// it finally builds is recorded in *t for Close.
func newHTTPClient(t *atomic.Pointer[http.Transport]) *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) {
			d.Timeout = 10 * time.Second
			d.KeepAlive = 30 * time.Second
		}).
		WithTransportOptions(func(tr *http.Transport) {
			tr.MaxIdleConns = 256
			tr.MaxIdleConnsPerHost = 64
			tr.IdleConnTimeout = 90 * time.Second
			tr.TLSHandshakeTimeout = 10 * time.Second
			tr.ExpectContinueTimeout = time.Second
			// A server that took a request but does not answer within this
			// time is treated as failed (the retry wrapper tries again).
			tr.ResponseHeaderTimeout = 2 * time.Minute
			t.Store(tr)
		})
}

// ensureBucket creates the bucket unless it exists and is accessible.
func (b *Backend) ensureBucket(ctx context.Context, region string) error {
	rctx, cancel := b.request(ctx)
	defer cancel()
	_, err := b.client.HeadBucket(rctx, &s3.HeadBucketInput{Bucket: aws.String(b.bucket)})
	if err == nil {
		return nil
	}
	if httpStatus(err) != http.StatusNotFound {
		return b.classify(ctx, rctx, "open", "", err)
	}
	rctx, cancel = b.request(ctx)
	defer cancel()
	in := &s3.CreateBucketInput{Bucket: aws.String(b.bucket)}
	if region != "" && region != DefaultRegion {
		in.CreateBucketConfiguration = &types.CreateBucketConfiguration{
			LocationConstraint: types.BucketLocationConstraint(region),
		}
	}
	_, err = b.client.CreateBucket(rctx, in)
	var owned *types.BucketAlreadyOwnedByYou
	switch {
	case err == nil:
		b.log.Debug("created S3 bucket", "bucket", b.bucket, "location", b.location)
		return nil
	case errors.As(err, &owned):
		return nil // created concurrently by another client of ours
	default:
		var exists *types.BucketAlreadyExists
		if errors.As(err, &exists) {
			return backend.Permanent(fmt.Errorf("s3 create bucket %s: the name is taken by another account: %w", b.location, err))
		}
		return b.classify(ctx, rctx, "create bucket", "", err)
	}
}

// Location implements backend.Backend: s3://bucket/prefix, and the endpoint
// when it is not AWS.
func (b *Backend) Location() string { return b.location }

// key maps an object name to its S3 key.
func (b *Backend) key(name string) (string, error) {
	key, err := backend.ObjectKey(b.prefix, name)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", "s3", b.location, err)
	}
	return key, nil
}

// Save implements backend.Backend with one PutObject. The body is a
// bytes.Reader: the SDK needs a seekable body to sign it over plain http.
func (b *Backend) Save(ctx context.Context, name string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3 save %s: %w", name, err)
	}
	key, err := b.key(name)
	if err != nil {
		return err
	}
	rctx, cancel := b.request(ctx)
	defer cancel()
	_, err = b.client.PutObject(rctx, &s3.PutObjectInput{
		Bucket:        aws.String(b.bucket),
		Key:           aws.String(key),
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
	})
	if err != nil {
		return b.classify(ctx, rctx, "save", name, err)
	}
	return nil
}

// Load implements backend.Backend with one GetObject. A body shorter than
// the announced length is a transient error.
func (b *Backend) Load(ctx context.Context, name string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("s3 load %s: %w", name, err)
	}
	key, err := b.key(name)
	if err != nil {
		return nil, err
	}
	rctx, cancel := b.request(ctx)
	defer cancel()
	out, err := b.client.GetObject(rctx, &s3.GetObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key)})
	if err != nil {
		return nil, b.classify(ctx, rctx, "load", name, err)
	}
	defer out.Body.Close()
	size := aws.ToInt64(out.ContentLength)
	buf := bytes.NewBuffer(make([]byte, 0, max(size, 0)+bytes.MinRead))
	if _, err := buf.ReadFrom(out.Body); err != nil {
		return nil, b.classify(ctx, rctx, "load", name, fmt.Errorf("read body: %w", err))
	}
	if out.ContentLength != nil && int64(buf.Len()) != size {
		return nil, fmt.Errorf("s3 load %s: got %d of %d bytes", name, buf.Len(), size)
	}
	return buf.Bytes(), nil
}

// Stat implements backend.Backend with HeadObject; ModTime is the object's
// Last-Modified time (one-second resolution).
func (b *Backend) Stat(ctx context.Context, name string) (backend.Info, error) {
	if err := ctx.Err(); err != nil {
		return backend.Info{}, fmt.Errorf("s3 stat %s: %w", name, err)
	}
	key, err := b.key(name)
	if err != nil {
		return backend.Info{}, err
	}
	rctx, cancel := b.request(ctx)
	defer cancel()
	out, err := b.client.HeadObject(rctx, &s3.HeadObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key)})
	if err != nil {
		return backend.Info{}, b.classify(ctx, rctx, "stat", name, err)
	}
	return backend.Info{Name: name, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}, nil
}

// Delete implements backend.Backend. S3 answers a DELETE of a missing key
// with success, so Delete asks with HeadObject first to report
// backend.ErrNotFound as the contract wants.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if _, err := b.Stat(ctx, name); err != nil {
		if backend.IsNotFound(err) {
			return fmt.Errorf("s3 delete %s: %w", name, backend.ErrNotFound)
		}
		return err
	}
	key, err := b.key(name)
	if err != nil {
		return err
	}
	rctx, cancel := b.request(ctx)
	defer cancel()
	if _, err := b.client.DeleteObject(rctx, &s3.DeleteObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key)}); err != nil {
		return b.classify(ctx, rctx, "delete", name, err)
	}
	return nil
}

// List implements backend.Backend with ListObjectsV2, page by page; ModTime
// comes from the listing.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	keyPrefix := prefix
	strip := ""
	if b.prefix != "" {
		strip = b.prefix + "/"
		keyPrefix = strip + prefix
	}
	p := s3.NewListObjectsV2Paginator(b.client, &s3.ListObjectsV2Input{
		Bucket:  aws.String(b.bucket),
		Prefix:  aws.String(keyPrefix),
		MaxKeys: aws.Int32(b.pageSize),
	})
	for p.HasMorePages() {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("s3 list %s: %w", prefix, err)
		}
		rctx, cancel := b.request(ctx)
		page, err := p.NextPage(rctx)
		if err != nil {
			err = b.classify(ctx, rctx, "list", prefix, err)
			cancel()
			return err
		}
		cancel()
		for _, obj := range page.Contents {
			key := aws.ToString(obj.Key)
			name, ok := strings.CutPrefix(key, strip)
			if !ok || name == "" {
				continue
			}
			if err := fn(backend.Info{Name: name, Size: aws.ToInt64(obj.Size), ModTime: aws.ToTime(obj.LastModified)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Copy implements backend.Copier with CopyObject: the bytes stay in the
// store and the copy gets a new ModTime. (Objects over 5 GiB would need a
// multipart copy; repository objects are far smaller.)
func (b *Backend) Copy(ctx context.Context, from, to string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3 copy %s to %s: %w", from, to, err)
	}
	src, err := b.key(from)
	if err != nil {
		return err
	}
	dst, err := b.key(to)
	if err != nil {
		return err
	}
	rctx, cancel := b.request(ctx)
	defer cancel()
	_, err = b.client.CopyObject(rctx, &s3.CopyObjectInput{
		Bucket:     aws.String(b.bucket),
		Key:        aws.String(dst),
		CopySource: aws.String(backend.EscapedPath(b.bucket, src)),
	})
	if err != nil {
		return b.classify(ctx, rctx, "copy", from+" to "+to, err)
	}
	return nil
}

// Close implements backend.Backend: it closes idle connections of the
// transport Open built. The backend must not be used afterwards.
func (b *Backend) Close() error {
	b.closeIdle()
	return nil
}

func (b *Backend) closeIdle() {
	if t := b.transport.Load(); t != nil {
		t.CloseIdleConnections()
	}
}

// httpStatus returns the HTTP status of a failed call, or 0 if there was no
// response.
func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// request returns the context of one request: ctx bounded by RequestTimeout.
func (b *Backend) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.timeout)
}

// classify wraps err from operation op on object name (empty for
// bucket-level operations), made with rctx, the request context derived
// from ctx by request:
//   - a missing key wraps backend.ErrNotFound;
//   - a cancelled or expired ctx is returned as such (wrapped);
//   - a request that outran RequestTimeout (rctx expired, ctx not) wraps
//     ErrRequestTimeout and not the context's error, so it is retried;
//   - access denied (401, 403), bad requests (400), a missing or invalid
//     bucket and other client errors are backend.Permanent;
//   - 5xx, 408, 429, throttling codes and network errors stay plain, so
//     the retry wrapper retries them.
func (b *Backend) classify(ctx, rctx context.Context, op, name string, err error) error {
	what := "s3 " + op + " " + b.location
	if name != "" {
		what = "s3 " + op + " " + name + " in " + b.location
	}
	if ctx.Err() == nil && rctx.Err() != nil {
		return fmt.Errorf("%s: %w: no complete answer within %v (%v)", what, ErrRequestTimeout, b.timeout, err)
	}
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("%s: %w (%w)", what, ctxErr, err)
	}
	status := httpStatus(err)
	code := ""
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		code = apiErr.ErrorCode()
	}
	var noKey *types.NoSuchKey
	var notFound *types.NotFound
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %w", what, err)
	case code == "NoSuchBucket":
		return backend.Permanent(fmt.Errorf("%s: bucket %s does not exist: %w", what, b.bucket, err))
	case name != "" && (errors.As(err, &noKey) || errors.As(err, &notFound) || code == "NoSuchKey" || status == http.StatusNotFound):
		return fmt.Errorf("%s: %w", what, backend.ErrNotFound)
	case code == "RequestTimeout" || code == "RequestTimeTooSkewed" || code == "SlowDown" ||
		code == "OperationAborted" || code == "Throttling" || code == "ThrottlingException":
		return fmt.Errorf("%s: %w", what, err) // transient though 4xx
	case status == http.StatusUnauthorized || status == http.StatusForbidden ||
		code == "AccessDenied" || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch":
		return backend.Permanent(fmt.Errorf("%s: access denied (HTTP %d %s): check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and the bucket's policy: %w", what, status, code, err))
	case code == "InvalidBucketName":
		return backend.Permanent(fmt.Errorf("%s: invalid bucket name %q: %w", what, b.bucket, err))
	case status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500:
		return fmt.Errorf("%s: %w", what, err)
	case status >= 400:
		return backend.Permanent(fmt.Errorf("%s: %w", what, err))
	default:
		// No HTTP answer: connection refused or reset, timeouts, short reads.
		return fmt.Errorf("%s: %w", what, err)
	}
}
