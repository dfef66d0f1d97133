package filerestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
)

// ResolveIn turns the absolute path p of a file system mounted at src (a
// backup's) into a path relative to src made of real directories only, as
// Extract looks paths up: symlinks in directory components are followed
// inside that file system (an absolute target starts at its root, never the
// host's), at most MaxLinkHops of them; the last component is not
// followed. "." is the root. A missing path is ErrNotFound.
func ResolveIn(ctx context.Context, src *os.Root, p string) (string, error) {
	comps := SplitPath(p)
	var cur []string
	hops := 0
	for k := 0; k < len(comps); k++ {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		here := append(cur[:len(cur):len(cur)], comps[k])
		rel := strings.Join(here, "/")
		fi, err := src.Lstat(rel)
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%w: %s", ErrNotFound, p)
		}
		if errors.Is(err, syscall.ENOTDIR) {
			return "", fmt.Errorf("not a directory in the backup: /%s", strings.Join(cur, "/"))
		}
		if err != nil {
			return "", fmt.Errorf("/%s: %w", rel, UnwrapPath(err))
		}
		last := k == len(comps)-1
		if fi.Mode()&fs.ModeSymlink != 0 && !last {
			if hops++; hops > MaxLinkHops {
				return "", fmt.Errorf("/%s: too many levels of symbolic links", rel)
			}
			target, err := src.Readlink(rel)
			if err != nil {
				return "", fmt.Errorf("/%s: %w", rel, UnwrapPath(err))
			}
			if !strings.HasPrefix(target, "/") {
				target = "/" + strings.Join(cur, "/") + "/" + target
			}
			comps = SplitPath(target + "/" + strings.Join(comps[k+1:], "/"))
			cur, k = nil, -1
			continue
		}
		if !last && !fi.IsDir() {
			return "", fmt.Errorf("not a directory in the backup: /%s", rel)
		}
		cur = here
	}
	if len(cur) == 0 {
		return ".", nil
	}
	return strings.Join(cur, "/"), nil
}

// UnwrapPath drops an *fs.PathError's own path (relative to a private
// mount point); callers name the path in the backup instead.
func UnwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
