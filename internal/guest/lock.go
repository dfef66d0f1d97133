package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// LockPath returns the lock file of the agent socket sock: the socket's path
// with ".sock" replaced by ".lock" (".lock" appended when it has no ".sock"),
// e.g. <instance dir>/qga.lock. The file stays after use; who holds the lock
// is what counts, not whether the file exists.
func LockPath(sock string) string {
	return strings.TrimSuffix(sock, ".sock") + ".lock"
}

// LockOwner is what a lock holder writes into the lock file, for people and
// error messages; the flock on the file is what locks.
type LockOwner struct {
	PID   int       `json:"pid"`
	Host  string    `json:"host,omitempty"`
	Owner string    `json:"owner,omitempty"`
	Since time.Time `json:"since"`
}

// lockFile is a held flock(2) on a guest's lock file. The kernel releases it
// when the holding process dies, which is how ThawOrphans tells a live owner
// from a dead one.
type lockFile struct {
	f *os.File
}

// acquireLock takes the exclusive lock on path, polling until ctx is done
// when wait is true, and writes owner into the file.
func acquireLock(ctx context.Context, path, owner string, wait bool) (*lockFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !wait {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w (held by %s)", path, ErrLocked, readOwner(path))
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w (held by %s): %w", path, ErrLocked, readOwner(path), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	host, _ := os.Hostname()
	b, _ := json.Marshal(LockOwner{PID: os.Getpid(), Host: host, Owner: owner, Since: time.Now().UTC()})
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt(append(b, '\n'), 0)
	}
	return &lockFile{f: f}, nil
}

// release drops the lock. The file's content is left (it names the last
// owner); it no longer means anything once the flock is gone.
func (l *lockFile) release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
	return err
}

// readOwner describes the owner recorded in a lock file.
func readOwner(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown owner"
	}
	var o LockOwner
	if json.Unmarshal(b, &o) != nil || o.PID == 0 {
		return "unknown owner"
	}
	s := fmt.Sprintf("pid %d", o.PID)
	if o.Host != "" {
		s += " on " + o.Host
	}
	if o.Owner != "" {
		s += " (" + o.Owner + ")"
	}
	return s + " since " + o.Since.Format(time.RFC3339)
}
