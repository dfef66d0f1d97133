package apiclient

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/gophercloud/gophercloud/v2"

	"github.com/raksha-backup/raksha/api"
)

// DeleteBackup deletes a backup (its chunks stay until the repository's
// gc); a protected one is refused (409).
func (c *Client) DeleteBackup(ctx context.Context, id string) error {
	_, err := c.sc.Request(ctx, "DELETE", c.sc.ResourceBase+"backups/"+url.PathEscape(id), &gophercloud.RequestOpts{OkCodes: []int{204}})
	return wrap("delete backup "+id, err)
}

// ProtectBackup protects (protect true) or unprotects a backup from
// delete and prune, and returns it.
func (c *Client) ProtectBackup(ctx context.Context, id string, protect bool) (*api.BackupView, error) {
	verb := "unprotect"
	if protect {
		verb = "protect"
	}
	var out struct {
		Backup api.BackupView `json:"backup"`
	}
	if err := c.post(ctx, verb+" backup "+id, "backups/"+url.PathEscape(id)+"/"+verb, nil, &out, 200); err != nil {
		return nil, err
	}
	return &out.Backup, nil
}

// ListWorkloads lists the workloads of the token's project (or
// projectID) with their servers and volumes, as discovery finds them.
func (c *Client) ListWorkloads(ctx context.Context, projectID string) ([]api.WorkloadView, error) {
	q := url.Values{}
	if projectID != "" {
		q.Set("project_id", projectID)
	}
	var out struct {
		Workloads []api.WorkloadView `json:"workloads"`
	}
	err := c.get(ctx, "list workloads", "workloads", q, &out)
	return out.Workloads, err
}

// GetQuota shows the project's quotas and usage.
func (c *Client) GetQuota(ctx context.Context, projectID string) (*api.QuotaView, error) {
	q := url.Values{}
	if projectID != "" {
		q.Set("project_id", projectID)
	}
	var out struct {
		Quota api.QuotaView `json:"quota"`
	}
	if err := c.get(ctx, "show quotas", "quotas", q, &out); err != nil {
		return nil, err
	}
	return &out.Quota, nil
}

// FileOpts names a directory or file in a backup's disk: the disk's id
// (VM~DISK, as a backup's disks show it), the path, and the partition (0:
// the whole disk or its only file system).
type FileOpts struct {
	BackupID, Disk, Path string
	Partition            int
}

func (o FileOpts) query() url.Values {
	q := url.Values{"path": {o.Path}}
	if o.Partition > 0 {
		q.Set("partition", strconv.Itoa(o.Partition))
	}
	return q
}

func (o FileOpts) base() string {
	return "backups/" + url.PathEscape(o.BackupID) + "/disks/" + url.PathEscape(o.Disk) + "/files"
}

// ListFiles lists a directory of a backup's disk, every page.
func (c *Client) ListFiles(ctx context.Context, o FileOpts) ([]api.FileView, error) {
	var all []api.FileView
	q := o.query()
	for {
		var out struct {
			Files []api.FileView `json:"files"`
			Links links          `json:"files_links"`
		}
		if err := c.get(ctx, fmt.Sprintf("list %s in disk %s of backup %s", o.Path, o.Disk, o.BackupID), o.base(), q, &out); err != nil {
			return nil, err
		}
		all = append(all, out.Files...)
		next := out.Links.next()
		if next.Marker == "" {
			return all, nil
		}
		q.Set("marker", next.Marker)
	}
}

// DownloadFile streams a file of a backup's disk into w and returns its
// size.
func (c *Client) DownloadFile(ctx context.Context, o FileOpts, w io.Writer) (int64, error) {
	op := fmt.Sprintf("download %s from disk %s of backup %s", o.Path, o.Disk, o.BackupID)
	resp, err := c.sc.Request(ctx, "GET", c.sc.ResourceBase+o.base()+"/content?"+o.query().Encode(),
		&gophercloud.RequestOpts{OkCodes: []int{http.StatusOK}, KeepResponseBody: true})
	if err != nil {
		return 0, wrap(op, err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("%s: %w", op, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, fmt.Errorf("%s: got %d of %d bytes", op, n, resp.ContentLength)
	}
	return n, nil
}
