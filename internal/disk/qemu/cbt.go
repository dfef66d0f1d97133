// Package qemu tracks changed blocks of QEMU disks with persistent dirty
// bitmaps and exports a point-in-time view of them for backup, all over QMP.
//
// One backup of the disks of one VM, run by the host worker of its compute
// host (the only QMP client of the VM, see DESIGN.md "Sockets"):
//
//  1. Prepare (before the freeze): a temporary qcow2 "fleecing" node per
//     disk whose backing is the disk itself.
//  2. Checkpoint (inside the freeze window): ONE transaction for all disks:
//     add the new persistent bitmap, disable the previous one (which then
//     holds exactly the changes since the previous backup), and start a
//     copy-before-write job (blockdev-backup sync=none) into the fleecing
//     node, which from then on reads as the disk at the checkpoint.
//  3. Export: the fleecing nodes over NBD on a unix socket, read from user
//     space (internal/nbd), with a copy of the previous bitmap on the
//     fleecing node as the changed-extent list. The Source's ReadAt returns
//     the whole disk as it was at the checkpoint.
//  4. Cleanup, always: exports, jobs, nodes and temporary files go.
//  5. After the backup's record is committed: Release removes the previous
//     bitmap; if the backup failed instead, Abort merges the new bitmap back
//     into the previous one and re-enables it, so the next backup's diff
//     against the last committed checkpoint is still complete.
//
// A missing, inconsistent or still-recording previous bitmap means no
// changed-extent list: the caller reads everything (never an incomplete
// backup).
package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// BitmapPrefix starts the name of every bitmap Raksha creates.
const BitmapPrefix = "raksha-"

// Bitmap is a dirty bitmap of a block node, as query-named-block-nodes says.
type Bitmap struct {
	Name         string `json:"name"`
	Recording    bool   `json:"recording"`
	Persistent   bool   `json:"persistent"`
	Inconsistent bool   `json:"inconsistent"`
	Busy         bool   `json:"busy"`
	Granularity  int64  `json:"granularity"`
	Count        int64  `json:"count"`
}

type nodeInfo struct {
	NodeName string   `json:"node-name"`
	File     string   `json:"file"`
	Drv      string   `json:"drv"`
	Bitmaps  []Bitmap `json:"dirty-bitmaps"`
	Image    struct {
		VirtualSize int64 `json:"virtual-size"`
	} `json:"image"`
}

func (m *Monitor) nodes(ctx context.Context) (map[string]nodeInfo, error) {
	var list []nodeInfo
	if err := m.Run(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &list); err != nil {
		return nil, err
	}
	out := map[string]nodeInfo{}
	for _, n := range list {
		out[n.NodeName] = n
	}
	return out, nil
}

// Bitmaps lists the dirty bitmaps of a node.
func (m *Monitor) Bitmaps(ctx context.Context, node string) ([]Bitmap, error) {
	nodes, err := m.nodes(ctx)
	if err != nil {
		return nil, err
	}
	n, ok := nodes[node]
	if !ok {
		return nil, fmt.Errorf("block node %q not found", node)
	}
	return n.Bitmaps, nil
}

// Drive is one disk of a VM to back up: its qcow2 format node.
type Drive struct {
	// Node is the node name of the disk's format (qcow2) node.
	Node string
	// Prev is the bitmap of the previous committed backup ("" for none).
	Prev string
}

// Backup is one checkpoint-and-export cycle for the disks of one VM.
type Backup struct {
	mon     *Monitor
	dir     string
	id      string
	drives  []Drive
	log     *slog.Logger
	fleece  map[string]string // node → fleecing node
	files   []string
	jobs    []string
	exports []string
	tmpBmps map[string]string // node → bitmap copy on the fleecing node
	usable  map[string]bool   // node → previous bitmap usable
	sock    string
	server  bool
	newName string
	checked bool
}

// Prepare creates a fleecing node for each drive. dir holds the temporary
// images and the NBD socket; id names this backup's nodes and must be unique
// among concurrent backups of the VM.
func Prepare(ctx context.Context, mon *Monitor, dir, id string, drives []Drive, log *slog.Logger) (*Backup, error) {
	if log == nil {
		log = slog.Default()
	}
	b := &Backup{mon: mon, dir: dir, id: id, drives: drives, log: log, fleece: map[string]string{},
		tmpBmps: map[string]string{}, usable: map[string]bool{}}
	nodes, err := mon.nodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("prepare backup %s: %w", id, err)
	}
	for i, d := range drives {
		n, ok := nodes[d.Node]
		if !ok {
			b.Cleanup(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("prepare backup %s: block node %q not found", id, d.Node)
		}
		file := filepath.Join(dir, fmt.Sprintf("fleece-%s-%d.qcow2", id, i))
		out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", file, fmt.Sprint(n.Image.VirtualSize)).CombinedOutput()
		if err != nil {
			b.Cleanup(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("prepare backup %s: qemu-img create: %v: %s", id, err, out)
		}
		b.files = append(b.files, file)
		fl := fmt.Sprintf("fleece-%s-%d", id, i)
		err = mon.Run(ctx, "blockdev-add", map[string]any{
			"driver": "qcow2", "node-name": fl, "backing": d.Node,
			"file": map[string]any{"driver": "file", "filename": file},
		}, nil)
		if err != nil {
			b.Cleanup(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("prepare backup %s: %w", id, err)
		}
		b.fleece[d.Node] = fl
		b.usable[d.Node] = d.Prev != "" && prevUsable(n.Bitmaps, d.Prev, log, d.Node)
	}
	return b, nil
}

func prevUsable(bms []Bitmap, name string, log *slog.Logger, node string) bool {
	for _, bm := range bms {
		if bm.Name != name {
			continue
		}
		if bm.Inconsistent || !bm.Persistent || bm.Busy {
			log.Warn("previous bitmap unusable, reading the whole disk", "node", node, "bitmap", name,
				"inconsistent", bm.Inconsistent, "persistent", bm.Persistent, "busy", bm.Busy)
			return false
		}
		if !bm.Recording {
			// A disabled previous bitmap means an earlier backup stopped
			// between its checkpoint and its Abort: it no longer covers the
			// time since then.
			log.Warn("previous bitmap is not recording, reading the whole disk", "node", node, "bitmap", name)
			return false
		}
		return true
	}
	log.Warn("previous bitmap missing, reading the whole disk", "node", node, "bitmap", name)
	return false
}

// Checkpoint runs the one transaction that fixes the point in time for all
// drives and starts tracking the next changes in bitmap newBitmap. Call it
// inside the freeze window. extra actions join the same transaction (tests
// start a reference copy of the same instant this way).
func (b *Backup) Checkpoint(ctx context.Context, newBitmap string, extra ...Action) error {
	acts := append([]Action(nil), extra...)
	for i, d := range b.drives {
		acts = append(acts, Action{Type: "block-dirty-bitmap-add", Data: map[string]any{
			"node": d.Node, "name": newBitmap, "persistent": true}})
		if b.usable[d.Node] {
			acts = append(acts, Action{Type: "block-dirty-bitmap-disable", Data: map[string]any{"node": d.Node, "name": d.Prev}})
		}
		job := fmt.Sprintf("fleece-job-%s-%d", b.id, i)
		acts = append(acts, Action{Type: "blockdev-backup", Data: map[string]any{
			"job-id": job, "device": d.Node, "target": b.fleece[d.Node], "sync": "none"}})
		b.jobs = append(b.jobs, job)
	}
	if err := b.mon.Transaction(ctx, acts); err != nil {
		b.jobs = nil
		return fmt.Errorf("checkpoint %s: %w", b.id, err)
	}
	b.newName = newBitmap
	b.checked = true
	return nil
}

// Export starts serving the fleecing nodes over NBD and returns a Source per
// drive (in the order of the drives). Close the sources before Cleanup.
func (b *Backup) Export(ctx context.Context, conns int) ([]*Source, error) {
	if !b.checked {
		return nil, fmt.Errorf("export %s: no checkpoint yet", b.id)
	}
	b.sock = filepath.Join(b.dir, "nbd-"+b.id+".sock")
	exported, err := b.mon.exports(ctx)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", b.id, err)
	}
	if !b.server {
		err := b.mon.Run(ctx, "nbd-server-start", map[string]any{
			"addr": map[string]any{"type": "unix", "data": map[string]any{"path": b.sock}}}, nil)
		var qe *QMPError
		if err != nil && !(errors.As(err, &qe) && strings.Contains(qe.Desc, "already running")) {
			return nil, fmt.Errorf("export %s: %w", b.id, err)
		}
		b.server = true
	}
	var out []*Source
	for i, d := range b.drives {
		fl := b.fleece[d.Node]
		args := map[string]any{"type": "nbd", "id": fl, "node-name": fl, "name": fl, "writable": false}
		if exported[fl] {
			// A worker that died after exporting: the export and its bitmap
			// copy are still there.
			b.exports = append(b.exports, fl)
			contexts := []string{"base:allocation"}
			if b.usable[d.Node] {
				b.tmpBmps[d.Node] = "export-" + d.Prev
				contexts = append(contexts, "qemu:dirty-bitmap:export-"+d.Prev)
			}
			src, err := openSource(ctx, b.sock, fl, contexts, conns)
			if err != nil {
				closeAll(out)
				return nil, fmt.Errorf("export %s drive %d: %w", b.id, i, err)
			}
			if b.usable[d.Node] {
				src.bitmap = "qemu:dirty-bitmap:export-" + d.Prev
			}
			out = append(out, src)
			continue
		}
		if b.usable[d.Node] {
			// A disabled copy of the previous bitmap on the fleecing node: the
			// export can only publish bitmaps of the exported node.
			tmp := "export-" + d.Prev
			err := b.mon.Transaction(ctx, []Action{
				{Type: "block-dirty-bitmap-add", Data: map[string]any{"node": fl, "name": tmp, "persistent": false, "disabled": true}},
				{Type: "block-dirty-bitmap-merge", Data: map[string]any{"node": fl, "target": tmp,
					"bitmaps": []any{map[string]any{"node": d.Node, "name": d.Prev}}}},
			})
			if err != nil {
				closeAll(out)
				return nil, fmt.Errorf("export %s: copy bitmap %s: %w", b.id, d.Prev, err)
			}
			b.tmpBmps[d.Node] = tmp
			args["bitmaps"] = []string{tmp}
		}
		if err := b.mon.Run(ctx, "block-export-add", args, nil); err != nil {
			closeAll(out)
			return nil, fmt.Errorf("export %s drive %d: %w", b.id, i, err)
		}
		b.exports = append(b.exports, fl)
		contexts := []string{"base:allocation"}
		if tmp, ok := b.tmpBmps[d.Node]; ok {
			contexts = append(contexts, "qemu:dirty-bitmap:"+tmp)
		}
		src, err := openSource(ctx, b.sock, fl, contexts, conns)
		if err != nil {
			closeAll(out)
			return nil, fmt.Errorf("export %s drive %d: %w", b.id, i, err)
		}
		if tmp, ok := b.tmpBmps[d.Node]; ok {
			src.bitmap = "qemu:dirty-bitmap:" + tmp
		}
		out = append(out, src)
	}
	return out, nil
}

func closeAll(srcs []*Source) {
	for _, s := range srcs {
		s.Close()
	}
}

// Cleanup removes everything Prepare, Checkpoint and Export created but the
// new bitmap. It is safe to call more than once and after any failure, and
// keeps going past errors, returning them joined.
func (b *Backup) Cleanup(ctx context.Context) error {
	var errs []error
	for _, e := range b.exports {
		if err := b.mon.Run(ctx, "block-export-del", map[string]any{"id": e, "mode": "hard"}, nil); err != nil {
			errs = append(errs, err)
		}
	}
	b.exports = nil
	if b.server {
		// The export goes away asynchronously; the server stops regardless.
		if err := b.mon.Run(ctx, "nbd-server-stop", nil, nil); err != nil {
			errs = append(errs, err)
		}
		b.server = false
		os.Remove(b.sock)
	}
	for _, j := range b.jobs {
		if err := b.mon.Run(ctx, "block-job-cancel", map[string]any{"device": j, "force": true}, nil); err != nil {
			errs = append(errs, err)
		}
	}
	for _, j := range b.jobs {
		if err := b.waitJobGone(ctx, j); err != nil {
			errs = append(errs, err)
		}
	}
	b.jobs = nil
	for node, fl := range b.fleece {
		if err := b.mon.Run(ctx, "blockdev-del", map[string]any{"node-name": fl}, nil); err != nil {
			errs = append(errs, err)
		}
		delete(b.fleece, node)
	}
	for _, f := range b.files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	b.files = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cleanup %s: %w", b.id, err)
	}
	return nil
}

func (b *Backup) waitJobGone(ctx context.Context, job string) error {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		var jobs []struct {
			ID string `json:"id"`
		}
		if err := b.mon.Run(ctx, "query-jobs", nil, &jobs); err != nil {
			return err
		}
		found := false
		for _, j := range jobs {
			found = found || j.ID == job
		}
		if !found {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("job %s did not go away", job)
}

// Abort undoes the checkpoint of a backup that will not be committed: the
// new bitmap's changes are merged into the previous one, which records
// again, and the new bitmap is removed — so the next backup still diffs
// against the last committed checkpoint completely. Without a usable
// previous bitmap the new one is simply removed (the next backup is full).
func (b *Backup) Abort(ctx context.Context) error {
	if !b.checked {
		return nil
	}
	var acts []Action
	for _, d := range b.drives {
		if b.usable[d.Node] {
			acts = append(acts,
				Action{Type: "block-dirty-bitmap-merge", Data: map[string]any{"node": d.Node, "target": d.Prev, "bitmaps": []string{b.newName}}},
				Action{Type: "block-dirty-bitmap-enable", Data: map[string]any{"node": d.Node, "name": d.Prev}})
		}
		acts = append(acts, Action{Type: "block-dirty-bitmap-remove", Data: map[string]any{"node": d.Node, "name": b.newName}})
	}
	if err := b.mon.Transaction(ctx, acts); err != nil {
		return fmt.Errorf("abort checkpoint %s: %w", b.id, err)
	}
	b.checked = false
	return nil
}

// Release removes a committed backup's previous bitmap from a node, leaving
// only the newest (one bitmap per disk as the next diff base). Bitmaps not
// made by Raksha are never touched.
func Release(ctx context.Context, mon *Monitor, node, keep string) ([]string, error) {
	bms, err := mon.Bitmaps(ctx, node)
	if err != nil {
		return nil, fmt.Errorf("release bitmaps of %s: %w", node, err)
	}
	found := false
	for _, bm := range bms {
		found = found || bm.Name == keep
	}
	if !found {
		return nil, fmt.Errorf("release bitmaps of %s: the bitmap to keep, %q, does not exist; nothing removed", node, keep)
	}
	var removed []string
	for _, bm := range bms {
		if bm.Name == keep || !strings.HasPrefix(bm.Name, BitmapPrefix) {
			continue
		}
		if err := mon.Run(ctx, "block-dirty-bitmap-remove", map[string]any{"node": node, "name": bm.Name}, nil); err != nil {
			return removed, fmt.Errorf("release bitmaps of %s: %w", node, err)
		}
		removed = append(removed, bm.Name)
	}
	return removed, nil
}

func (m *Monitor) exports(ctx context.Context) (map[string]bool, error) {
	var list []struct {
		ID string `json:"id"`
	}
	if err := m.Run(ctx, "query-block-exports", nil, &list); err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, e := range list {
		out[e.ID] = true
	}
	return out, nil
}

// Attach finds in QEMU the checkpoint cycle that Prepare and Checkpoint (with
// the same dir, id and drives, in the same order) set up in a process that
// has since died: its fleecing nodes and jobs are still there, the point in
// time still holds. Export and Cleanup then work as in the original process.
// It fails when the fleecing nodes or their jobs are gone.
func Attach(ctx context.Context, mon *Monitor, dir, id string, drives []Drive, newBitmap string, log *slog.Logger) (*Backup, error) {
	if log == nil {
		log = slog.Default()
	}
	b := &Backup{mon: mon, dir: dir, id: id, drives: drives, log: log, fleece: map[string]string{},
		tmpBmps: map[string]string{}, usable: map[string]bool{}, newName: newBitmap, checked: true}
	nodes, err := mon.nodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", id, err)
	}
	var jobs []struct {
		ID string `json:"id"`
	}
	if err := mon.Run(ctx, "query-jobs", nil, &jobs); err != nil {
		return nil, fmt.Errorf("attach %s: %w", id, err)
	}
	running := map[string]bool{}
	for _, j := range jobs {
		running[j.ID] = true
	}
	for i, d := range drives {
		fl := fmt.Sprintf("fleece-%s-%d", id, i)
		job := fmt.Sprintf("fleece-job-%s-%d", id, i)
		if _, ok := nodes[fl]; !ok || !running[job] {
			return nil, fmt.Errorf("attach %s: the point-in-time view of %s is gone (node %s present %v, job running %v)", id, d.Node, fl, ok, running[job])
		}
		b.fleece[d.Node] = fl
		b.jobs = append(b.jobs, job)
		b.files = append(b.files, filepath.Join(dir, fmt.Sprintf("fleece-%s-%d.qcow2", id, i)))
		if d.Prev != "" {
			for _, bm := range nodes[d.Node].Bitmaps {
				// disabled by the checkpoint, so not recording
				if bm.Name == d.Prev && bm.Persistent && !bm.Inconsistent {
					b.usable[d.Node] = true
				}
			}
		}
	}
	exported, err := mon.exports(ctx)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", id, err)
	}
	for _, fl := range b.fleece {
		b.server = b.server || exported[fl]
	}
	b.sock = filepath.Join(dir, "nbd-"+id+".sock")
	return b, nil
}

// Drives returns the drives of the backup, in the order of Export's sources.
func (b *Backup) Drives() []Drive { return append([]Drive(nil), b.drives...) }
