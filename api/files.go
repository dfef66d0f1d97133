package api

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/raksha-backup/raksha/internal/filerestore"
	"github.com/raksha-backup/raksha/internal/repo"
)

// Bounds of the file routes.
const (
	// MaxFilePath is the longest path a file route takes (Linux's PATH_MAX).
	MaxFilePath = 4096
	// DefaultFileListLimit and MaxFileListLimit bound a directory page.
	DefaultFileListLimit = 1000
	MaxFileListLimit     = 1000
	// fileCacheChunks is the decoded chunks one file request keeps: its
	// memory is at most this many chunks.
	fileCacheChunks = 4
	// DefaultMaxFileRequests bounds the file requests served at once
	// (Config.MaxFileRequests); more are refused with 429.
	DefaultMaxFileRequests = 8
)

// diskAPIID is a disk's id in the API: VM~DISK.
func diskAPIID(d repo.DiskRef) string { return d.VM + "~" + d.Disk }

// FileView is one entry of a directory in a backup's disk.
type FileView struct {
	Name string `json:"name"`
	// Type is file, directory, symlink, fifo, socket, char_device,
	// block_device or unknown.
	Type string `json:"type"`
	Size int64  `json:"size"`
	// Mode is the permission bits in octal (e.g. "0644").
	Mode     string    `json:"mode"`
	UID      uint32    `json:"uid"`
	GID      uint32    `json:"gid"`
	Modified time.Time `json:"modified_at"`
	// Target is a symlink's target, as the link holds it.
	Target string `json:"target,omitempty"`
}

func fileType(mode uint32) string {
	switch mode & filerestore.ModeType {
	case filerestore.ModeReg:
		return "file"
	case filerestore.ModeDir:
		return "directory"
	case filerestore.ModeLink:
		return "symlink"
	case filerestore.ModeFIFO:
		return "fifo"
	case filerestore.ModeSock:
		return "socket"
	case filerestore.ModeChar:
		return "char_device"
	case filerestore.ModeBlock:
		return "block_device"
	}
	return "unknown"
}

// backupFS is an open file system of a backup's disk.
type backupFS struct {
	fs       *filerestore.FS
	backupID string
	disk     string
	release  func()
}

// openBackupFS opens the ext2/3/4 file system of a disk of a backup the
// caller may act on with action (404 for a backup out of its projects, as
// everywhere), through raksha's own reader (filerestore over the
// repository's lazy disk reader): no kernel mount, no host path. At most
// MaxFileRequests are open at once. The caller calls release.
func (s *Server) openBackupFS(r *http.Request, id *Identity, action string) (*backupFS, error) {
	backupID, diskID := r.PathValue("id"), r.PathValue("disk")
	repoGiven := r.URL.Query().Get("repository")
	repoID, b, err := s.loadBackup(r, id, repoGiven, backupID, action)
	if err != nil {
		return nil, err
	}
	var ref *repo.DiskRef
	for i, d := range b.Disks {
		if diskAPIID(d) == diskID {
			ref = &b.Disks[i]
			break
		}
		if d.Disk == diskID {
			if ref != nil {
				return nil, errorf(http.StatusBadRequest, "Disk name %s is ambiguous in backup %s: give VM~DISK.", diskID, backupID)
			}
			ref = &b.Disks[i]
		}
	}
	if ref == nil {
		return nil, errorf(http.StatusNotFound, "Disk %s of backup %s could not be found.", diskID, backupID)
	}
	partition := 0
	if v := r.URL.Query().Get("partition"); v != "" {
		if partition, err = strconv.Atoi(v); err != nil || partition < 1 || partition > 128 {
			return nil, errorf(http.StatusBadRequest, "Invalid partition %q: want a partition number from 1 to 128.", v)
		}
	}
	select {
	case s.fileSlots <- struct{}{}:
	default:
		return nil, errorf(http.StatusTooManyRequests, "Too many file requests in progress; try again later.")
	}
	release := func() { <-s.fileSlots }
	_, rp, err := s.openRepo(r, repoID)
	if err != nil {
		release()
		return nil, err
	}
	d, err := rp.OpenDisk(r.Context(), ref.ID, repo.ReaderOptions{CacheChunks: fileCacheChunks})
	if err != nil {
		release()
		return nil, fmt.Errorf("open disk %s of backup %s: %w", ref.ID, backupID, err)
	}
	where := fmt.Sprintf("disk %s of backup %s", diskAPIID(*ref), backupID)
	vol, err := filerestore.OpenVolume(d, d.Size(), partition)
	var pe *filerestore.PartitionError
	switch {
	case errors.As(err, &pe):
		release()
		return nil, errorf(http.StatusBadRequest, "Cannot choose the file system of %s: %v.", where, pe)
	case err != nil:
		release()
		return nil, errorf(http.StatusBadRequest, "Cannot read the partition table of %s: %v.", where, err)
	}
	if filerestore.IsXFS(vol) {
		release()
		return nil, errorf(http.StatusBadRequest, "The file system of %s is XFS: file listings and downloads read ext2/3/4 only (an operator restores XFS files with raksha restore files).", where)
	}
	fs, err := filerestore.Open(vol, vol.Size)
	if err != nil {
		release()
		return nil, &Error{Status: http.StatusBadRequest, Message: fmt.Sprintf("No ext2/3/4 file system to read on %s.", where), Err: err}
	}
	return &backupFS{fs: fs, backupID: backupID, disk: diskAPIID(*ref), release: release}, nil
}

// filePath reads the path parameter: required for content, "/" by default
// for a listing; at most MaxFilePath bytes, no NUL.
func filePath(r *http.Request, def string) (string, error) {
	p := r.URL.Query().Get("path")
	if p == "" {
		p = def
	}
	if p == "" {
		return "", errorf(http.StatusBadRequest, "No path given.")
	}
	if len(p) > MaxFilePath || strings.ContainsRune(p, 0) {
		return "", errorf(http.StatusBadRequest, "Invalid path: at most %d bytes, no NUL.", MaxFilePath)
	}
	return path.Clean("/" + p), nil
}

// lookup resolves p in the file system: 404 when it is not there.
func (bf *backupFS) lookup(r *http.Request, p string, followLast bool) (uint32, error) {
	ino, err := bf.fs.LookupPath(r.Context(), p, followLast)
	switch {
	case errors.Is(err, filerestore.ErrNotFound):
		return 0, errorf(http.StatusNotFound, "Path %s could not be found in disk %s of backup %s.", p, bf.disk, bf.backupID)
	case err != nil && strings.Contains(err.Error(), "not a directory in the backup"):
		return 0, errorf(http.StatusNotFound, "Path %s could not be found in disk %s of backup %s.", p, bf.disk, bf.backupID)
	case err != nil:
		return 0, fmt.Errorf("look up %s in disk %s of backup %s: %w", p, bf.disk, bf.backupID, err)
	}
	return ino, nil
}

// listFiles is GET /v1/backups/{id}/disks/{disk}/files?path=/dir: one page
// (limit, marker: the last name of the previous page) of a directory, in
// the order the directory holds its entries. Symlinks in the path's
// directories are followed inside the file system; the directory itself
// may be one.
func (s *Server) listFiles(w http.ResponseWriter, r *http.Request, id *Identity) error {
	p, err := filePath(r, "/")
	if err != nil {
		return err
	}
	limit := DefaultFileListLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxFileListLimit {
			return errorf(http.StatusBadRequest, "Invalid limit %q: want an integer from 1 to %d.", v, MaxFileListLimit)
		}
		limit = n
	}
	marker := r.URL.Query().Get("marker")
	bf, err := s.openBackupFS(r, id, ActionBackupFilesList)
	if err != nil {
		return err
	}
	defer bf.release()
	ino, err := bf.lookup(r, p, true)
	if err != nil {
		return err
	}
	var ents []filerestore.DirEntry
	more, seen := false, marker == ""
	err = bf.fs.ReadDirFunc(ino, func(e filerestore.DirEntry) error {
		if !seen {
			seen = e.Name == marker
			return nil
		}
		if len(ents) == limit {
			more = true
			return filerestore.ErrStop
		}
		ents = append(ents, e)
		return r.Context().Err()
	})
	if errors.Is(err, filerestore.ErrNotDir) {
		return errorf(http.StatusBadRequest, "Path %s is not a directory in disk %s of backup %s.", p, bf.disk, bf.backupID)
	}
	if err != nil {
		return fmt.Errorf("list %s in disk %s of backup %s: %w", p, bf.disk, bf.backupID, err)
	}
	if !seen {
		return errorf(http.StatusBadRequest, "Marker %s could not be found.", marker)
	}
	out := struct {
		Path  string     `json:"path"`
		Files []FileView `json:"files"`
		Links []Link     `json:"files_links,omitempty"`
	}{Path: p, Files: make([]FileView, 0, len(ents))}
	for _, e := range ents {
		a, err := bf.fs.Attr(e.Ino)
		if err != nil {
			return fmt.Errorf("list %s in disk %s of backup %s: %s: %w", p, bf.disk, bf.backupID, e.Name, err)
		}
		v := FileView{Name: e.Name, Type: fileType(a.Mode), Size: a.Size, Mode: fmt.Sprintf("%04o", a.Mode&0o7777),
			UID: a.UID, GID: a.GID, Modified: a.Mtime.UTC()}
		if v.Type == "symlink" {
			if v.Target, err = bf.fs.ReadLink(e.Ino); err != nil {
				return fmt.Errorf("list %s in disk %s of backup %s: %s: %w", p, bf.disk, bf.backupID, e.Name, err)
			}
		}
		out.Files = append(out.Files, v)
	}
	if more {
		out.Links = nextLink(r, ents[len(ents)-1].Name)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// downloadFile is GET /v1/backups/{id}/disks/{disk}/files/content?path=
// /file: the regular file's bytes, streamed from the repository as they
// are read (Range requests served), a symlink followed inside the file
// system.
func (s *Server) downloadFile(w http.ResponseWriter, r *http.Request, id *Identity) error {
	p, err := filePath(r, "")
	if err != nil {
		return err
	}
	bf, err := s.openBackupFS(r, id, ActionBackupFilesDownload)
	if err != nil {
		return err
	}
	defer bf.release()
	ino, err := bf.lookup(r, p, true)
	if err != nil {
		return err
	}
	a, err := bf.fs.Attr(ino)
	if err != nil {
		return fmt.Errorf("download %s from disk %s of backup %s: %w", p, bf.disk, bf.backupID, err)
	}
	if a.Mode&filerestore.ModeType != filerestore.ModeReg {
		return errorf(http.StatusBadRequest, "Path %s is not a regular file in disk %s of backup %s.", p, bf.disk, bf.backupID)
	}
	f, err := bf.fs.OpenFile(ino)
	if err != nil {
		return fmt.Errorf("download %s from disk %s of backup %s: %w", p, bf.disk, bf.backupID, err)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(p)}))
	rc := http.NewResponseController(w)
	// The server's write timeout bounds a whole answer; a download gets a
	// minute per read instead, so a large file streams and a stalled
	// client is still cut off.
	body := &deadlineReader{SectionReader: io.NewSectionReader(f, 0, f.Size()), rc: rc}
	http.ServeContent(w, r, "", a.Mtime, body)
	if body.err != nil {
		infoOf(r.Context()).err = fmt.Errorf("download %s from disk %s of backup %s: %w", p, bf.disk, bf.backupID, body.err)
	}
	return nil
}

// deadlineReader extends the response's write deadline before each read,
// and remembers the first read error (the answer is under way by then).
type deadlineReader struct {
	*io.SectionReader
	rc  *http.ResponseController
	err error
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	_ = d.rc.SetWriteDeadline(time.Now().Add(time.Minute))
	n, err := d.SectionReader.Read(p)
	if err != nil && err != io.EOF && d.err == nil {
		d.err = err
	}
	return n, err
}
