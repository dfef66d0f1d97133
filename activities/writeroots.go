package activities

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Nova's directories on a compute node: instances (its instances_path) and
// where os-brick mounts NFS-style Cinder shares. They are the default
// write roots of a host worker on libvirt.
const (
	NovaInstancesDir = "/var/lib/nova/instances"
	NovaMountDir     = "/var/lib/nova/mnt"
)

// DefaultWriteRoots are the directories WriteDisk may write image files
// under when the worker's configuration names none: on the socket layout
// (HostDir, the lab's hosts/<host>) the host directory and the lab's
// volume directory beside hosts/ (<lab>/volumes); on libvirt Nova's
// instances and mount directories; none otherwise (a data worker writes
// only RBD images unless configured).
func DefaultWriteRoots(cfg Config) []string {
	switch {
	case cfg.HostDir != "":
		return []string{cfg.HostDir, filepath.Join(cfg.HostDir, "..", "..", "volumes")}
	case cfg.Libvirt != nil:
		return []string{NovaInstancesDir, NovaMountDir}
	}
	return nil
}

// resolve makes p absolute and clean with every symlink in it followed; a
// path that does not exist yet is resolved through its nearest existing
// ancestor.
func resolve(p string) (string, error) {
	p = filepath.Clean(p)
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	parent, base := filepath.Split(p)
	if parent == p || parent == "" {
		return p, nil
	}
	r, err := resolve(strings.TrimSuffix(parent, string(filepath.Separator)))
	if err != nil {
		return "", err
	}
	return filepath.Join(r, base), nil
}

// checkWritePath refuses a restore target path that is not inside one of
// the worker's write roots once every symlink in it (and in the roots) is
// followed: a path outside them, escaping through "..", or through a
// symlink that points out. The error names the path and the roots.
func (a *Activities) checkWritePath(path string) error {
	if !filepath.IsAbs(path) {
		return invalid("restore target %s: the path is not absolute", path)
	}
	if len(a.cfg.WriteRoots) == 0 {
		return invalid("restore target %s: this worker has no write roots (configure write_roots): it writes no image file", path)
	}
	real, err := resolve(path)
	if err != nil {
		return invalid("restore target %s: %v", path, err)
	}
	if fi, err := os.Stat(real); err == nil && !fi.Mode().IsRegular() {
		return invalid("restore target %s: not a regular file (%s)", path, fi.Mode().Type())
	}
	for _, root := range a.cfg.WriteRoots {
		rr, err := resolve(root)
		if err != nil {
			continue
		}
		if rel, err := filepath.Rel(rr, real); err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			return nil
		}
	}
	shown := path
	if real != filepath.Clean(path) {
		shown = fmt.Sprintf("%s (%s)", path, real)
	}
	return invalid("restore target %s is outside this worker's write roots %v (write_roots in the worker's configuration)", shown, a.cfg.WriteRoots)
}
