// Package backend defines where a repository's objects live.
//
// A Backend is a flat store of named objects. Names are slash-separated relative
// paths such as "config", "keys/3f2a", "chunks/ab/ab12…" or "backups/ID". The
// repository (internal/repo) is the only user; it never relies on directory
// semantics, renames or locks, because object stores (S3, Swift) give none.
//
// Every implementation lives in its own package (local, mem, s3, swift) and must
// pass the shared conformance suite in backendtest.
package backend

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// ErrNotFound is returned (wrapped) by Load, Stat and Delete when no object has
// the given name. Test with errors.Is or IsNotFound.
var ErrNotFound = errors.New("object not found")

// IsNotFound reports whether err says that an object does not exist.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// PermanentError marks an error that retrying cannot fix (bad credentials,
// missing bucket, invalid request). Backends wrap such errors with Permanent;
// the retry wrapper never retries them.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so that IsPermanent reports true for it. A nil err stays nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err must not be retried: a PermanentError, a
// not-found error, or a cancelled or expired context.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p) || IsNotFound(err) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// Info describes a stored object.
type Info struct {
	// Name is the object's full name, as passed to Save.
	Name string
	// Size is the stored size in bytes.
	Size int64
	// ModTime is the time the object was last written, by the store's clock.
	// The repository's garbage collector compares store times only with other
	// store times, never with a client's clock.
	ModTime time.Time
}

// Backend stores, loads, lists and deletes whole objects.
//
// The contract every implementation keeps (and backendtest checks):
//   - Save writes the object atomically: a concurrent or later Load sees either
//     the old object or the complete new one, never a part. Saving an existing
//     name replaces it and sets a new ModTime.
//   - Load returns the exact bytes saved; a missing object gives an error for
//     which IsNotFound is true.
//   - Stat reports size and ModTime without reading the data.
//   - Delete of a missing object returns an error for which IsNotFound is true.
//   - List calls fn for every object whose name starts with prefix, in no
//     particular order, and stops with fn's error if fn returns one.
//   - All methods are safe for concurrent use and honour ctx cancellation.
//   - Errors that retrying cannot fix are wrapped with Permanent.
type Backend interface {
	// Location names the store for messages and logs; it never contains a secret.
	Location() string
	Save(ctx context.Context, name string, data []byte) error
	Load(ctx context.Context, name string) ([]byte, error)
	Stat(ctx context.Context, name string) (Info, error)
	Delete(ctx context.Context, name string) error
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// Close releases connections; the Backend must not be used afterwards.
	Close() error
}

// Copier is implemented by backends that can copy an object inside the store
// without moving its bytes through the client (S3 CopyObject, Swift COPY, a
// local hard link or copy). The copy gets a new ModTime.
type Copier interface {
	Copy(ctx context.Context, from, to string) error
}

// Copy copies object from to object to, through the store where it can.
func Copy(ctx context.Context, be Backend, from, to string) error {
	if c, ok := be.(Copier); ok {
		return c.Copy(ctx, from, to)
	}
	data, err := be.Load(ctx, from)
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", from, to, err)
	}
	if err := be.Save(ctx, to, data); err != nil {
		return fmt.Errorf("copy %s to %s: %w", from, to, err)
	}
	return nil
}

// Flusher is implemented by backends whose saves are not durable until flushed
// (a local file system). The repository flushes before every commit point.
type Flusher interface {
	Flush(ctx context.Context) error
}

// Flush flushes be if it needs flushing.
func Flush(ctx context.Context, be Backend) error {
	if f, ok := be.(Flusher); ok {
		return f.Flush(ctx)
	}
	return nil
}

// IntoLoader is implemented by backends that can load an object into a
// buffer the caller reuses, sparing an allocation per object (restores load
// many large chunks).
type IntoLoader interface {
	// LoadInto returns the object's bytes in buf[:n] when buf is large
	// enough, else in a new slice. Errors are those of Load.
	LoadInto(ctx context.Context, name string, buf []byte) ([]byte, error)
}

// LoadInto loads name into buf if be can, else through Load.
func LoadInto(ctx context.Context, be Backend, name string, buf []byte) ([]byte, error) {
	if l, ok := be.(IntoLoader); ok {
		return l.LoadInto(ctx, name, buf)
	}
	return be.Load(ctx, name)
}

// ObjectKey maps an object name to its key under prefix in an object store
// (S3, Swift). Names that are empty, absolute, end in "/" or hold "//" are
// refused: they would alias other keys.
func ObjectKey(prefix, name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") || strings.Contains(name, "//") {
		return "", Permanent(fmt.Errorf("invalid object name %q", name))
	}
	if prefix == "" {
		return name, nil
	}
	return prefix + "/" + name, nil
}

// EscapedPath is bucket/key with every path segment URL-escaped, as S3's
// CopySource and Swift's COPY Destination want it.
func EscapedPath(bucket, key string) string {
	segs := strings.Split(bucket+"/"+key, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}
