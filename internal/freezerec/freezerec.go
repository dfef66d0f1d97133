// Package freezerec keeps the durable records of guest freezes in effect on
// a compute host: one JSON file per guest in a directory (a host worker's
// freezes/ directory), written before the freeze command is sent and
// removed after a confirmed thaw. A record says how to reach the guest's
// agent (Route), the freeze's deadline and its owner, so that a process
// other than the freezer (the watchdog) can thaw the guest at the deadline
// if the freezer dies. A record is written atomically (temporary file,
// fsync, rename, fsync of the directory): a reader sees the whole record or
// the previous one, never a part.
package freezerec

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Route kinds.
const (
	// Socket: the agent's unix socket (the lab's socket layout); the lock
	// file is guest.LockPath of the socket.
	Socket = "socket"
	// Libvirt: libvirt's agent pass-through to a domain; the lock file is
	// <LockDir>/<domain uuid>.lock.
	Libvirt = "libvirt"
)

// Route is how to reach one guest's agent, with the guest's lock.
type Route struct {
	// Kind is Socket or Libvirt.
	Kind string `json:"kind"`
	// Instance names the guest for people (the instance or domain name).
	Instance string `json:"instance"`
	// Socket is the agent socket (Kind Socket).
	Socket string `json:"socket,omitempty"`
	// URI, Domain (the domain's UUID) and LockDir reach a libvirt guest.
	URI     string `json:"libvirt_uri,omitempty"`
	Domain  string `json:"domain,omitempty"`
	LockDir string `json:"lock_dir,omitempty"`
}

// Key is the record's file name stem: one record per guest, so a newer
// freeze of a guest replaces the older one's record.
func (r Route) Key() (string, error) {
	var k string
	switch r.Kind {
	case Socket:
		if r.Socket == "" {
			return "", errors.New("freeze record: socket route without a socket")
		}
		k = "socket-" + r.Instance
	case Libvirt:
		if r.Domain == "" || r.URI == "" || r.LockDir == "" {
			return "", errors.New("freeze record: libvirt route needs a URI, a domain and a lock directory")
		}
		k = "libvirt-" + r.Domain
	default:
		return "", fmt.Errorf("freeze record: unknown route kind %q", r.Kind)
	}
	if strings.ContainsAny(k, "/\\") || strings.HasSuffix(k, "-") || strings.HasPrefix(k, ".") {
		return "", fmt.Errorf("freeze record: invalid guest name %q", r.Instance)
	}
	return k, nil
}

// Record is one freeze in effect (or one whose thaw was not confirmed).
type Record struct {
	// ID identifies this freeze; a newer freeze of the guest has another.
	ID string `json:"id"`
	// Route reaches the guest's agent.
	Route Route `json:"route"`
	// Deadline is when the freezer's own guard thaws the guest.
	Deadline time.Time `json:"deadline"`
	// Owner names the freezer (e.g. "raksha freeze <workflow id>"); PID is
	// its process.
	Owner string `json:"owner,omitempty"`
	PID   int    `json:"pid"`
	// Written is when the record was written.
	Written time.Time `json:"written"`
}

// Dir is a directory of freeze records. Its methods are safe for
// concurrent use by several processes as long as the records of one guest
// are written and removed only by the holder of the guest's lock.
type Dir struct {
	path string
}

// Open returns the directory at path, creating it (mode 0700) if needed.
func Open(path string) (*Dir, error) {
	if path == "" {
		return nil, errors.New("freeze records: no directory")
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("freeze records: %w", err)
	}
	return &Dir{path: path}, nil
}

// Path is the directory's path.
func (d *Dir) Path() string { return d.path }

func (d *Dir) file(key string) string { return filepath.Join(d.path, key+".json") }

// Write records rec durably, replacing the guest's previous record: when
// it returns nil the record is on disk (file and directory synced).
func (d *Dir) Write(rec Record) error {
	key, err := rec.Route.Key()
	if err != nil {
		return err
	}
	if rec.ID == "" || rec.Deadline.IsZero() {
		return errors.New("freeze record: no id or no deadline")
	}
	if rec.Written.IsZero() {
		rec.Written = time.Now().UTC()
	}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("freeze record %s: encode: %w", key, err)
	}
	tmp, err := os.CreateTemp(d.path, ".tmp-"+key+"-*")
	if err != nil {
		return fmt.Errorf("freeze record %s: %w", key, err)
	}
	defer os.Remove(tmp.Name()) // gone after the rename; removes a failed write's leftover
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), d.file(key))
	}
	if err == nil {
		err = d.syncDir()
	}
	if err != nil {
		return fmt.Errorf("freeze record %s: write: %w", key, err)
	}
	return nil
}

func (d *Dir) syncDir() error {
	f, err := os.Open(d.path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Read returns the record stored under key; an error matching
// os.ErrNotExist when there is none.
func (d *Dir) Read(key string) (*Record, error) {
	b, err := os.ReadFile(d.file(key))
	if err != nil {
		return nil, fmt.Errorf("freeze record %s: %w", key, err)
	}
	var rec Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("freeze record %s: decode: %w", key, err)
	}
	return &rec, nil
}

// Keys lists the keys of the records in the directory, sorted.
func (d *Dir) Keys() ([]string, error) {
	ents, err := os.ReadDir(d.path)
	if err != nil {
		return nil, fmt.Errorf("freeze records: %w", err)
	}
	var keys []string
	for _, e := range ents {
		n := e.Name()
		if e.Type().IsRegular() && strings.HasSuffix(n, ".json") && !strings.HasPrefix(n, ".") {
			keys = append(keys, strings.TrimSuffix(n, ".json"))
		}
	}
	sort.Strings(keys)
	return keys, nil
}

// Remove removes the record under key if it is still the freeze id's
// (a newer freeze's record is left alone) and reports whether it did. A
// record that is already gone is no error.
func (d *Dir) Remove(key, id string) (bool, error) {
	rec, err := d.Read(key)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err == nil && rec.ID != id {
		return false, nil
	}
	// An undecodable record is nobody's: removing it loses nothing.
	if rerr := os.Remove(d.file(key)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return false, fmt.Errorf("freeze record %s: remove: %w", key, rerr)
	}
	if err := d.syncDir(); err != nil {
		return true, fmt.Errorf("freeze record %s: remove: %w", key, err)
	}
	return true, nil
}

// Due reports whether rec's freeze is past its deadline plus margin at now.
func (rec Record) Due(now time.Time, margin time.Duration) bool {
	return !now.Before(rec.Deadline.Add(margin))
}

// Journal records the freezes of one guest in a Dir: the guest package's
// FreezeJournal for a client of that guest.
type Journal struct {
	d     *Dir
	route Route
	key   string
}

// Journal returns the journal of the guest reached by route.
func (d *Dir) Journal(route Route) (*Journal, error) {
	key, err := route.Key()
	if err != nil {
		return nil, err
	}
	return &Journal{d: d, route: route, key: key}, nil
}

// Begin durably records the freeze id of the guest with its deadline and
// owner (this process's pid), replacing any older record of the guest.
func (j *Journal) Begin(id string, deadline time.Time, owner string) error {
	return j.d.Write(Record{ID: id, Route: j.route, Deadline: deadline.UTC(), Owner: owner, PID: os.Getpid()})
}

// End removes the record of freeze id after its thaw was confirmed; a
// newer freeze's record stays.
func (j *Journal) End(id string) error {
	_, err := j.d.Remove(j.key, id)
	return err
}
