package libvirt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	lv "github.com/digitalocean/go-libvirt"

	"github.com/raksha-backup/raksha/internal/disk/qemu"
)

// Changed-block tracking through libvirt's incremental backup API
// (checkpoints and pull-mode backups, libvirt >= 7.6 for per-disk modes).
//
// Raksha owns the chain; libvirt's checkpoint metadata is a short-lived
// cache. Nova knows nothing of checkpoints, and libvirt refuses to undefine
// a domain that has any (Nova's delete, hard reboot, resize and migration
// all undefine), so no checkpoint metadata outlives a Begin or a Release:
// each checkpoint's XML is kept in Raksha's own records (Checkpoint.XML),
// redefined with validation just before it is used, and its metadata
// removed (the bitmaps stay in the qcow2 images) right after. Every
// checkpoint's bitmap keeps recording, so a later backup diffs against any
// older checkpoint whose bitmaps are still there; Release removes the
// bitmaps of checkpoints no longer needed.
//
// Incremental is decided per disk and never repaired: a disk whose base
// bitmap is missing or inconsistent (QEMU stopped uncleanly, a resize or
// migration lost it), a disk that is new, or one that cannot hold bitmaps
// (raw, network) is read in full with the reason in its DiskMode.

// CheckpointPrefix starts the names of Raksha's checkpoints (and so of
// their bitmaps in the qcow2 images).
const CheckpointPrefix = "raksha-"

// Checkpoint is one libvirt checkpoint as Raksha records it.
type Checkpoint struct {
	// Name is the checkpoint's (and its bitmaps') name: a unique id,
	// never a counter.
	Name string `json:"name"`
	// Disks are the targets that have a bitmap of this checkpoint.
	Disks []string `json:"disks"`
	// XML is the checkpoint's description as libvirt gave it (without its
	// parent: the chain is Raksha's), redefined before use.
	XML string `json:"xml"`
}

// DiskMode is how Begin reads one disk.
type DiskMode struct {
	// Target is the disk's guest device name.
	Target string `json:"target"`
	// Mode is "incremental" (changed extents against the base) or "full".
	Mode string `json:"mode"`
	// Reason says why a disk is read in full.
	Reason string `json:"reason,omitempty"`
}

// BeginOptions configures Begin.
type BeginOptions struct {
	// Name is the new checkpoint's name (CheckpointPrefix + a unique id).
	Name string
	// Disks are the targets to back up (every disk Begin may read).
	Disks []string
	// Base is the checkpoint of the previous backup, if any.
	Base *Checkpoint
	// Full lists disks (target → reason) to read in full whatever the base.
	Full map[string]string
	// Stale are other checkpoints the disks' base backups recorded (a disk
	// whose base is older than the VM's other disks'): no longer any
	// disk's base once the new backup is committed, to be released then.
	Stale []Checkpoint
	// WorkDir holds the export's socket and the scratch files (a directory
	// of the host worker's; its path must fit a unix socket name).
	WorkDir string
	// EndStaleBackupJob says the caller holds the guest's lock and runs no
	// backup of the domain: a backup job found active was left by a Raksha
	// process that died after its Begin (Nova starts no backup jobs), and
	// is ended (its scratch files in WorkDir removed) before the new one.
	// Any other job (a migration) is still refused with ErrJobActive.
	EndStaleBackupJob bool
}

// Backup is a pull-mode backup job of one domain: a point-in-time NBD
// export of each disk, until End.
type Backup struct {
	c    *Conn
	dom  lv.Domain
	sock string
	work string
	// Checkpoint is the new checkpoint, as Raksha records it.
	Checkpoint Checkpoint
	// Modes says how each disk of BeginOptions.Disks is read, in order.
	Modes []DiskMode
	// EndedStaleJob says a backup job a dead process left was ended first
	// (BeginOptions.EndStaleBackupJob).
	EndedStaleJob bool
	// Base is the base checkpoint the job diffed against (nil: none);
	// Release it once the new backup is committed, with Stale.
	Base *Checkpoint
	// Stale are BeginOptions.Stale.
	Stale   []Checkpoint
	exports map[string]export
}

type export struct{ name, bitmap string }

// maxSocketPath is the longest unix socket path this package gives QEMU
// (sun_path holds 108 bytes with its NUL).
const maxSocketPath = 100

// socketPath is the NBD socket of the job in work: work/nbd.sock, or, when
// that path is too long for a unix socket, one in the temporary directory
// named after work (the same for a worker that restarted).
func socketPath(work string) string {
	if p := filepath.Join(work, "nbd.sock"); len(p) <= maxSocketPath {
		return p
	}
	h := sha256.Sum256([]byte(filepath.Clean(work)))
	return filepath.Join(os.TempDir(), "raksha-nbd-"+hex.EncodeToString(h[:8])+".sock")
}

// stateFile is where Begin records the job in its work directory, so that
// a host worker that restarted finds it again (Attach).
const stateFile = "job.json"

type jobState struct {
	Domain     string            `json:"domain"`
	Checkpoint Checkpoint        `json:"checkpoint"`
	Base       *Checkpoint       `json:"base,omitempty"`
	Stale      []Checkpoint      `json:"stale,omitempty"`
	Modes      []DiskMode        `json:"modes"`
	Exports    map[string]string `json:"exports"`
	Bitmaps    map[string]string `json:"bitmaps"`
}

func (b *Backup) save() error {
	st := jobState{Domain: UUIDString(b.dom.UUID), Checkpoint: b.Checkpoint, Base: b.Base, Stale: b.Stale, Modes: b.Modes,
		Exports: map[string]string{}, Bitmaps: map[string]string{}}
	for t, e := range b.exports {
		st.Exports[t], st.Bitmaps[t] = e.name, e.bitmap
	}
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := filepath.Join(b.work, stateFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("save job state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(b.work, stateFile)); err != nil {
		return fmt.Errorf("save job state: %w", err)
	}
	return nil
}

// ErrNoJobState: the work directory holds no job that Begin recorded.
var ErrNoJobState = errors.New("libvirt: no recorded backup job")

// Attach finds the job that Begin recorded in workDir for dom (a host
// worker that restarted): the Backup it returns serves Open while libvirt
// still runs the job, and End, Release of its checkpoints and Forget in any
// case. No recorded job is ErrNoJobState.
func Attach(ctx context.Context, c *Conn, dom lv.Domain, workDir string) (*Backup, error) {
	data, err := os.ReadFile(filepath.Join(workDir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("attach to the backup of %s: %w", dom.Name, ErrNoJobState)
	}
	if err != nil {
		return nil, fmt.Errorf("attach to the backup of %s: %w", dom.Name, err)
	}
	var st jobState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("attach to the backup of %s: job state: %w", dom.Name, err)
	}
	if st.Domain != UUIDString(dom.UUID) {
		return nil, fmt.Errorf("attach to the backup of %s: the recorded job is of domain %s", dom.Name, st.Domain)
	}
	b := &Backup{c: c, dom: dom, work: workDir, sock: socketPath(workDir), Checkpoint: st.Checkpoint,
		Base: st.Base, Stale: st.Stale, Modes: st.Modes, exports: map[string]export{}}
	for t, n := range st.Exports {
		b.exports[t] = export{name: n, bitmap: st.Bitmaps[t]}
	}
	return b, nil
}

// Forget removes the job's record from its work directory (after End and
// the Release that follows the commit or the failure).
func (b *Backup) Forget() error {
	if err := os.Remove(filepath.Join(b.work, stateFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("forget the backup of %s: %w", b.dom.Name, err)
	}
	return nil
}

// ErrJobActive: the domain already runs a job (another backup, a
// migration); libvirt allows one.
var ErrJobActive = errors.New("libvirt: the domain has an active job")

// Begin starts a pull-mode backup of opts.Disks of the running domain dom
// and makes the new checkpoint opts.Name: call it inside the freeze window
// (libvirt's checkpoint has no quiesce of its own here). The base
// checkpoint is redefined with validation first; a disk whose base does
// not validate is read in full. Checkpoint metadata is gone when Begin
// returns, whatever happened. End must follow a successful Begin.
func Begin(ctx context.Context, c *Conn, dom lv.Domain, opts BeginOptions) (_ *Backup, err error) {
	staleEnded := false
	if !strings.HasPrefix(opts.Name, CheckpointPrefix) || strings.ContainsAny(opts.Name, "/ '\"<>&") {
		return nil, fmt.Errorf("libvirt backup: checkpoint name %q: must start with %q and hold no '/', space, quote or XML character", opts.Name, CheckpointPrefix)
	}
	if len(opts.Disks) == 0 {
		return nil, fmt.Errorf("libvirt backup of %s: no disks", dom.Name)
	}
	disks, err := c.Disks(ctx, dom)
	if err != nil {
		return nil, fmt.Errorf("libvirt backup of %s: %w", dom.Name, err)
	}
	byTarget := map[string]DomainDisk{}
	for _, d := range disks {
		byTarget[d.Target] = d
	}
	for _, t := range opts.Disks {
		if _, ok := byTarget[t]; !ok {
			return nil, fmt.Errorf("libvirt backup of %s: no disk %s in the domain (it has %s)", dom.Name, t, targets(disks))
		}
	}
	if active, err := c.JobActive(ctx, dom); err != nil {
		return nil, fmt.Errorf("libvirt backup of %s: %w", dom.Name, err)
	} else if active {
		op, err := c.jobOperation(ctx, dom)
		if err != nil || !opts.EndStaleBackupJob || op != lv.DomainJobOperationStrBackup {
			return nil, fmt.Errorf("libvirt backup of %s: %w (operation %d)", dom.Name, ErrJobActive, op)
		}
		if err := c.endJob(ctx, dom, opts.WorkDir); err != nil {
			return nil, fmt.Errorf("libvirt backup of %s: the backup job a dead process left: %w", dom.Name, err)
		}
		staleEnded = true
	}
	b := &Backup{c: c, dom: dom, work: opts.WorkDir, sock: socketPath(opts.WorkDir), exports: map[string]export{}, EndedStaleJob: staleEnded}
	if err := os.MkdirAll(opts.WorkDir, 0o700); err != nil {
		return nil, fmt.Errorf("libvirt backup of %s: %w", dom.Name, err)
	}
	_ = os.Remove(b.sock)
	// Whatever happens, no checkpoint metadata stays behind.
	defer func() {
		names := []string{opts.Name}
		if opts.Base != nil {
			names = append(names, opts.Base.Name)
		}
		if derr := c.dropMetadata(context.WithoutCancel(ctx), dom, names...); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	// Metadata of an earlier, interrupted run goes first.
	if err := c.dropMetadata(ctx, dom, opts.Name); err != nil {
		return nil, err
	}

	// The base: redefined with validation, per disk when the whole fails.
	incr := map[string]bool{}
	reason := map[string]string{}
	var baseErr error
	if opts.Base != nil {
		baseErr = CheckRecorded(*opts.Base)
	}
	for _, t := range opts.Disks {
		switch d := byTarget[t]; {
		case !d.Bitmaps():
			reason[t] = fmt.Sprintf("%s image (%s): no persistent dirty bitmaps", orUnknown(d.Format), d.Source())
		case opts.Full[t] != "":
			reason[t] = opts.Full[t]
		case baseErr != nil:
			reason[t] = baseErr.Error()
		case opts.Base == nil:
			reason[t] = "no base checkpoint (first backup)"
		case !slices.Contains(opts.Base.Disks, t):
			reason[t] = fmt.Sprintf("disk not in base checkpoint %s (new disk)", opts.Base.Name)
		default:
			incr[t] = true
		}
	}
	if opts.Base != nil && len(incr) > 0 {
		ok, why, err := c.redefineValid(ctx, dom, *opts.Base, keys(incr))
		if err != nil {
			return nil, fmt.Errorf("libvirt backup of %s: %w", dom.Name, err)
		}
		for t := range incr {
			if !ok[t] {
				delete(incr, t)
				reason[t] = why[t]
			}
		}
	}

	// The job and the new checkpoint, at once.
	var bx, cx strings.Builder
	bx.WriteString("<domainbackup mode='pull'>")
	fmt.Fprintf(&bx, "<server transport='unix' socket='%s'/><disks>", xmlEsc(b.sock))
	cx.WriteString("<domaincheckpoint><name>" + xmlEsc(opts.Name) + "</name><disks>")
	for _, d := range disks {
		if !slices.Contains(opts.Disks, d.Target) {
			fmt.Fprintf(&bx, "<disk name='%s' backup='no'/>", xmlEsc(d.Target))
			fmt.Fprintf(&cx, "<disk name='%s' checkpoint='no'/>", xmlEsc(d.Target))
			continue
		}
		scratch := filepath.Join(opts.WorkDir, d.Target+".scratch")
		_ = os.Remove(scratch)
		if incr[d.Target] {
			fmt.Fprintf(&bx, "<disk name='%s' backup='yes' type='file' backupmode='incremental' incremental='%s'><scratch file='%s'/></disk>",
				xmlEsc(d.Target), xmlEsc(opts.Base.Name), xmlEsc(scratch))
		} else {
			fmt.Fprintf(&bx, "<disk name='%s' backup='yes' type='file' backupmode='full'><scratch file='%s'/></disk>", xmlEsc(d.Target), xmlEsc(scratch))
		}
		if d.Bitmaps() {
			fmt.Fprintf(&cx, "<disk name='%s' checkpoint='bitmap'/>", xmlEsc(d.Target))
			b.Checkpoint.Disks = append(b.Checkpoint.Disks, d.Target)
		} else {
			fmt.Fprintf(&cx, "<disk name='%s' checkpoint='no'/>", xmlEsc(d.Target))
		}
	}
	bx.WriteString("</disks></domainbackup>")
	cx.WriteString("</disks></domaincheckpoint>")
	var cpArg lv.OptString
	if len(b.Checkpoint.Disks) > 0 {
		cpArg = lv.OptString{cx.String()}
	}
	if err := callCtx(ctx, func() error { return c.l.DomainBackupBegin(dom, bx.String(), cpArg, 0) }); err != nil {
		return nil, fmt.Errorf("libvirt backup of %s: backup begin: %w", dom.Name, err)
	}
	defer func() {
		if err != nil {
			_ = b.End(context.WithoutCancel(ctx))
		}
	}()
	b.Checkpoint.Name = opts.Name
	if len(b.Checkpoint.Disks) > 0 {
		x, err := c.checkpointXML(ctx, dom, opts.Name)
		if err != nil {
			return nil, fmt.Errorf("libvirt backup of %s: %w", dom.Name, err)
		}
		b.Checkpoint.XML = x
	}
	if err := b.readExports(ctx); err != nil {
		return nil, fmt.Errorf("libvirt backup of %s: %w", dom.Name, err)
	}
	for _, t := range opts.Disks {
		m := DiskMode{Target: t, Mode: "full", Reason: reason[t]}
		if incr[t] {
			m = DiskMode{Target: t, Mode: "incremental"}
		}
		b.Modes = append(b.Modes, m)
	}
	if opts.Base != nil {
		base := *opts.Base
		b.Base = &base
	}
	b.Stale = slices.Clone(opts.Stale)
	if err := b.save(); err != nil {
		return nil, fmt.Errorf("libvirt backup of %s: %w", dom.Name, err)
	}
	return b, nil
}

// Mode returns how the disk target is read.
func (b *Backup) Mode(target string) (DiskMode, bool) {
	for _, m := range b.Modes {
		if m.Target == target {
			return m, true
		}
	}
	return DiskMode{}, false
}

// Domain is the job's domain.
func (b *Backup) Domain() lv.Domain { return b.dom }

// Socket is the unix socket of the job's NBD server.
func (b *Backup) Socket() string { return b.sock }

// Open opens the point-in-time export of the disk target over n NBD
// connections. An incrementally read disk's Source answers Changed with
// the extents written since the base checkpoint.
func (b *Backup) Open(ctx context.Context, target string, n int) (*qemu.Source, error) {
	e, ok := b.exports[target]
	if !ok {
		return nil, fmt.Errorf("libvirt backup of %s: disk %s is not exported", b.dom.Name, target)
	}
	ctxName := ""
	if e.bitmap != "" {
		ctxName = "qemu:dirty-bitmap:" + e.bitmap
	}
	s, err := qemu.OpenExport(ctx, b.sock, e.name, ctxName, n)
	if err != nil {
		return nil, fmt.Errorf("libvirt backup of %s: open export of %s: %w", b.dom.Name, target, err)
	}
	return s, nil
}

// End ends the backup job (virDomainAbortJob, the normal end of a pull
// backup), waits until libvirt reports no job, and removes the scratch
// files and socket. The new checkpoint's bitmaps stay. Idempotent.
func (b *Backup) End(ctx context.Context) error {
	return b.c.endJob(ctx, b.dom, b.work)
}

// endJob aborts dom's backup job if one runs and waits for it to go.
func (c *Conn) endJob(ctx context.Context, dom lv.Domain, work string) error {
	active, err := c.JobActive(ctx, dom)
	if err != nil {
		return fmt.Errorf("end backup of %s: %w", dom.Name, err)
	}
	if active {
		err := callCtx(ctx, func() error { return c.l.DomainAbortJob(dom) })
		if err != nil && !isNoJob(err) {
			return fmt.Errorf("end backup of %s: abort job: %w", dom.Name, err)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		active, err := c.JobActive(ctx, dom)
		if err != nil {
			return fmt.Errorf("end backup of %s: %w", dom.Name, err)
		}
		if !active {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("end backup of %s: the job is still active 30 s after its abort", dom.Name)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("end backup of %s: %w", dom.Name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if work != "" {
		scratch, _ := filepath.Glob(filepath.Join(work, "*.scratch"))
		for _, f := range append(scratch, socketPath(work)) {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("end backup of %s: %w", dom.Name, err)
			}
		}
	}
	return nil
}

// EndJob ends a backup job of dom that an earlier worker began (found
// after a restart, or left by a crash), removing what it left in work.
func EndJob(ctx context.Context, c *Conn, dom lv.Domain, work string) error {
	return c.endJob(ctx, dom, work)
}

// Release removes the bitmaps of the checkpoints cps from dom's disks
// (the checkpoints of backups no longer needed as a base): each is
// redefined and deleted, which drops its bitmaps. A checkpoint whose
// bitmaps are gone from some disks (a disk detached, replaced, or its QEMU
// killed) is released disk by disk: its bitmap goes from every disk that
// still has it, an inconsistent one too (left by a QEMU killed after its
// image had stored the bitmap: it records nothing and would stay for
// ever). One whose bitmaps are gone everywhere only loses its metadata. No
// metadata stays.
func Release(ctx context.Context, c *Conn, dom lv.Domain, cps ...Checkpoint) error {
	var errs []error
	for _, cp := range cps {
		if cp.XML == "" {
			continue
		}
		if err := c.dropMetadata(ctx, dom, cp.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		ok, err := c.deleteValid(ctx, dom, cp.Name, stripParent(cp.XML))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			continue
		}
		var valid, broken []string
		for _, t := range cp.Disks {
			x, err := restrictCheckpoint(stripParent(cp.XML), []string{t})
			if err != nil {
				continue
			}
			ok, err := c.deleteValid(ctx, dom, cp.Name, x)
			switch {
			case err != nil:
				errs = append(errs, err)
			case ok:
				valid = append(valid, t)
			case c.deleteBroken(ctx, dom, cp.Name, x):
				// An inconsistent bitmap (QEMU killed after the image
				// stored it): it records nothing and would stay for ever.
				broken = append(broken, t)
			}
		}
		c.log.Info("checkpoint to release does not validate on every disk; released disk by disk", "domain", dom.Name, "checkpoint", cp.Name,
			"valid", valid, "broken bitmaps removed", broken)
	}
	return errors.Join(errs...)
}

// deleteBroken redefines checkpoint x of one disk without validation and
// deletes it, which removes the disk's bitmap of that name if the image
// has one, inconsistent or not; it reports whether a bitmap went. No
// metadata stays.
func (c *Conn) deleteBroken(ctx context.Context, dom lv.Domain, name, x string) bool {
	var h lv.DomainCheckpoint
	err := callCtx(ctx, func() error {
		var err error
		h, err = c.l.DomainCheckpointCreateXML(dom, x, uint32(lv.DomainCheckpointCreateRedefine))
		return err
	})
	if err != nil {
		return false
	}
	err = callCtx(ctx, func() error { return c.l.DomainCheckpointDelete(h, 0) })
	if err != nil {
		c.log.Debug("no bitmap to remove", "domain", dom.Name, "checkpoint", name, "err", err)
		_ = c.dropMetadata(context.WithoutCancel(ctx), dom, name)
		return false
	}
	return true
}

// deleteValid redefines checkpoint x with validation and deletes it (its
// bitmaps go); false when it does not validate (nothing done).
func (c *Conn) deleteValid(ctx context.Context, dom lv.Domain, name, x string) (bool, error) {
	var h lv.DomainCheckpoint
	err := callCtx(ctx, func() error {
		var err error
		h, err = c.l.DomainCheckpointCreateXML(dom, x, uint32(lv.DomainCheckpointCreateRedefine|lv.DomainCheckpointCreateRedefineValidate))
		return err
	})
	if err != nil {
		return false, nil
	}
	if err := callCtx(ctx, func() error { return c.l.DomainCheckpointDelete(h, 0) }); err != nil {
		_ = c.dropMetadata(context.WithoutCancel(ctx), dom, name)
		return false, fmt.Errorf("release checkpoint %s of %s: %w", name, dom.Name, err)
	}
	return true, nil
}

// Disks returns the disks of dom's live XML.
func (c *Conn) Disks(ctx context.Context, dom lv.Domain) ([]DomainDisk, error) {
	var x string
	err := callCtx(ctx, func() error {
		var err error
		x, err = c.l.DomainGetXMLDesc(dom, 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("domain XML of %s: %w", dom.Name, err)
	}
	return ParseDisks(x)
}

// jobOperation is the operation of dom's active job (a backup, a
// migration out, ...).
func (c *Conn) jobOperation(ctx context.Context, dom lv.Domain) (lv.DomainJobOperation, error) {
	var params []lv.TypedParam
	err := callCtx(ctx, func() error {
		var err error
		_, params, err = c.l.DomainGetJobStats(dom, 0)
		return err
	})
	if err != nil {
		return lv.DomainJobOperationStrUnknown, fmt.Errorf("job stats of %s: %w", dom.Name, err)
	}
	for _, p := range params {
		if p.Field != lv.DomainJobOperationStr {
			continue
		}
		switch v := p.Value.I.(type) {
		case int32:
			return lv.DomainJobOperation(v), nil
		case uint32:
			return lv.DomainJobOperation(v), nil
		}
	}
	return lv.DomainJobOperationStrUnknown, nil
}

// JobActive reports whether dom runs a job (a backup, a migration).
func (c *Conn) JobActive(ctx context.Context, dom lv.Domain) (bool, error) {
	var typ int32
	err := callCtx(ctx, func() error {
		var err error
		typ, _, _, _, _, _, _, _, _, _, _, _, err = c.l.DomainGetJobInfo(dom)
		return err
	})
	if err != nil {
		if isNotRunning(err) {
			return false, nil
		}
		return false, fmt.Errorf("job info of %s: %w", dom.Name, err)
	}
	return lv.DomainJobType(typ) != lv.DomainJobNone, nil
}

// CheckpointNames lists the checkpoint metadata libvirt holds for dom
// (none, outside Begin and Release).
func (c *Conn) CheckpointNames(ctx context.Context, dom lv.Domain) ([]string, error) {
	var cps []lv.DomainCheckpoint
	err := callCtx(ctx, func() error {
		var err error
		cps, _, err = c.l.DomainListAllCheckpoints(dom, 1, 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("checkpoints of %s: %w", dom.Name, err)
	}
	var names []string
	for _, cp := range cps {
		names = append(names, cp.Name)
	}
	slices.Sort(names)
	return names, nil
}

// redefineValid redefines the base checkpoint with validation for the
// disks want and returns which of them validate, with the reason for the
// others. The metadata it defines stays for the backup (Begin removes it).
func (c *Conn) redefineValid(ctx context.Context, dom lv.Domain, base Checkpoint, want []string) (map[string]bool, map[string]string, error) {
	ok, why := map[string]bool{}, map[string]string{}
	try := func(ts []string) error {
		x, err := restrictCheckpoint(stripParent(base.XML), ts)
		if err != nil {
			return err
		}
		if err := c.dropMetadata(ctx, dom, base.Name); err != nil {
			return err
		}
		return callCtx(ctx, func() error {
			_, err := c.l.DomainCheckpointCreateXML(dom, x, uint32(lv.DomainCheckpointCreateRedefine|lv.DomainCheckpointCreateRedefineValidate))
			return err
		})
	}
	err := try(want)
	if err == nil {
		for _, t := range want {
			ok[t] = true
		}
		return ok, why, nil
	}
	if ctx.Err() != nil {
		return nil, nil, ctx.Err()
	}
	// One disk at a time, to tell which disks fail.
	first := err
	var good []string
	for _, t := range want {
		if err := try([]string{t}); err != nil {
			why[t] = fmt.Sprintf("base checkpoint %s does not validate on this disk: %s", base.Name, libvirtMessage(err))
			continue
		}
		good = append(good, t)
	}
	if len(good) == 0 {
		if err := c.dropMetadata(ctx, dom, base.Name); err != nil {
			return nil, nil, err
		}
		c.log.Warn("base checkpoint does not validate: full read", "domain", dom.Name, "checkpoint", base.Name, "err", first)
		return ok, why, nil
	}
	if err := try(good); err != nil {
		return nil, nil, fmt.Errorf("redefine checkpoint %s for %v after each validated alone: %w", base.Name, good, err)
	}
	for _, t := range good {
		ok[t] = true
	}
	return ok, why, nil
}

// dropMetadata removes the metadata of the named checkpoints of dom, if
// libvirt has them; their bitmaps stay.
func (c *Conn) dropMetadata(ctx context.Context, dom lv.Domain, names ...string) error {
	var errs []error
	for _, n := range names {
		err := callCtx(ctx, func() error {
			h, err := c.l.DomainCheckpointLookupByName(dom, n, 0)
			if err != nil {
				return err
			}
			return c.l.DomainCheckpointDelete(h, lv.DomainCheckpointDeleteMetadataOnly)
		})
		if err != nil && !isNoCheckpoint(err) {
			errs = append(errs, fmt.Errorf("remove metadata of checkpoint %s of %s: %w", n, dom.Name, err))
		}
	}
	return errors.Join(errs...)
}

// checkpointXML returns the checkpoint's XML as Raksha records it.
func (c *Conn) checkpointXML(ctx context.Context, dom lv.Domain, name string) (string, error) {
	var x string
	err := callCtx(ctx, func() error {
		h, err := c.l.DomainCheckpointLookupByName(dom, name, 0)
		if err != nil {
			return err
		}
		x, err = c.l.DomainCheckpointGetXMLDesc(h, 0)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("checkpoint %s XML: %w", name, err)
	}
	return stripParent(x), nil
}

// readExports reads the export and bitmap names from the job's XML.
func (b *Backup) readExports(ctx context.Context) error {
	var x string
	err := callCtx(ctx, func() error {
		var err error
		x, err = b.c.l.DomainBackupGetXMLDesc(b.dom, 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("backup XML: %w", err)
	}
	var j struct {
		Disks []struct {
			Name       string `xml:"name,attr"`
			Backup     string `xml:"backup,attr"`
			ExportName string `xml:"exportname,attr"`
			Bitmap     string `xml:"exportbitmap,attr"`
		} `xml:"disks>disk"`
	}
	if err := xml.Unmarshal([]byte(x), &j); err != nil {
		return fmt.Errorf("backup XML: %w", err)
	}
	for _, d := range j.Disks {
		if d.Backup != "yes" {
			continue
		}
		name := d.ExportName
		if name == "" {
			name = d.Name
		}
		b.exports[d.Name] = export{name: name, bitmap: d.Bitmap}
	}
	return nil
}

var parentRE = regexp.MustCompile(`(?s)\s*<parent>.*?</parent>`)

// stripParent drops a checkpoint XML's parent: Raksha keeps the chain.
func stripParent(x string) string { return parentRE.ReplaceAllString(x, "") }

// restrictCheckpoint rewrites a checkpoint XML so that only the disks in
// keep have checkpoint='bitmap' (the others 'no').
func restrictCheckpoint(x string, keep []string) (string, error) {
	re := regexp.MustCompile(`<disk\s+name=['"]([^'"]+)['"]\s+checkpoint=['"]bitmap['"]`)
	n := 0
	out := re.ReplaceAllStringFunc(x, func(m string) string {
		t := re.FindStringSubmatch(m)[1]
		if slices.Contains(keep, t) {
			n++
			return m
		}
		return strings.Replace(m, "bitmap", "no", 1)
	})
	if n != len(keep) {
		return "", fmt.Errorf("checkpoint XML has bitmaps for %d of the disks %v", n, keep)
	}
	// A disk that is 'no' must not name a bitmap.
	return regexp.MustCompile(`(checkpoint=['"]no['"])\s+bitmap=['"][^'"]*['"]`).ReplaceAllString(out, "$1"), nil
}

func isNoCheckpoint(err error) bool {
	var e lv.Error
	return errors.As(err, &e) && lv.ErrorNumber(e.Code) == lv.ErrNoDomainCheckpoint
}

func isNoJob(err error) bool {
	var e lv.Error
	return errors.As(err, &e) && lv.ErrorNumber(e.Code) == lv.ErrOperationInvalid && strings.Contains(e.Message, "no job")
}

func isNotRunning(err error) bool {
	var e lv.Error
	return errors.As(err, &e) && lv.ErrorNumber(e.Code) == lv.ErrOperationInvalid && strings.Contains(e.Message, "not running")
}

func libvirtMessage(err error) string {
	var e lv.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}

func xmlEsc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return strings.ReplaceAll(b.String(), "'", "&#39;")
}

func targets(ds []DomainDisk) string {
	var ts []string
	for _, d := range ds {
		ts = append(ts, d.Target)
	}
	return strings.Join(ts, ", ")
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown-format"
	}
	return s
}

// CheckpointKind is the repo.Checkpoint kind of a libvirt checkpoint.
const CheckpointKind = "libvirt-checkpoint"

// maxCheckpointXML bounds a recorded checkpoint XML taken back from a
// repository.
const maxCheckpointXML = 1 << 20

// CheckRecorded checks a checkpoint taken back from Raksha's records
// before it is redefined: Raksha's name, bounded XML that names it.
func CheckRecorded(cp Checkpoint) error {
	switch {
	case !strings.HasPrefix(cp.Name, CheckpointPrefix) || strings.ContainsAny(cp.Name, "/ '\"<>&"):
		return fmt.Errorf("recorded checkpoint %q: not a name Raksha gives", cp.Name)
	case len(cp.XML) > maxCheckpointXML:
		return fmt.Errorf("recorded checkpoint %s: XML of %d bytes, more than %d", cp.Name, len(cp.XML), maxCheckpointXML)
	case !strings.Contains(cp.XML, "<name>"+cp.Name+"</name>"):
		return fmt.Errorf("recorded checkpoint %s: its XML does not name it", cp.Name)
	}
	return nil
}
