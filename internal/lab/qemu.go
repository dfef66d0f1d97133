package lab

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/raksha-backup/raksha/internal/disk/qemu"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/lab/vm"
)

// QEMUOptions configure the lab's real compute backend.
type QEMUOptions struct {
	// LabDir is the lab directory (instance directories live below it).
	LabDir string
	// Image is the lab guest (vm.BuildImage).
	Image vm.Image
	// Accel is QEMU's accelerator (vm.AccelTCG when empty).
	Accel vm.Accel
	// NoWriter keeps the in-guest record writer from running on the disks;
	// WriterInterval is its pause between records.
	NoWriter       bool
	WriterInterval time.Duration
	// StartVM starts a guest; default vm.Start with a stop function. Tests
	// pass vmtest.StartConfig to share the machine-wide guest slots.
	StartVM func(ctx context.Context, cfg vm.Config) (*vm.VM, func() error, error)
	// Log receives the backend's logs; default: discard.
	Log *slog.Logger
}

// QEMUCompute runs each lab server as a QEMU process of the lab guest
// (package vm). The guest boots with no disk; every disk is then hot-plugged
// with the lab's node names (VolumeNode, EphemeralNode) through the QMP
// monitor — the same path as a Nova volume attach — mounted in the guest by
// filesystem label at /data/<label> and given its own record writer,
// through the guest agent. The QMP monitor and agent are used under the
// guest's lock (DESIGN.md, Sockets), so the lab and a host worker never talk
// to a guest at the same time.
type QEMUCompute struct {
	opts QEMUOptions
	log  *slog.Logger

	mu  sync.Mutex
	vms map[InstanceRef]*qemuGuest
}

type qemuGuest struct {
	mu   sync.Mutex // serialises hot-plug operations on this guest
	vm   *vm.VM
	stop func() error
}

// NewQEMUCompute returns the QEMU backend.
func NewQEMUCompute(opts QEMUOptions) *QEMUCompute {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.StartVM == nil {
		opts.StartVM = func(ctx context.Context, cfg vm.Config) (*vm.VM, func() error, error) {
			v, err := vm.Start(ctx, cfg)
			if err != nil {
				return nil, nil, err
			}
			return v, func() error {
				sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				return v.Stop(sctx)
			}, nil
		}
	}
	return &QEMUCompute{opts: opts, log: opts.Log, vms: map[InstanceRef]*qemuGuest{}}
}

// Start boots the guest, then plugs in and mounts its disks.
func (q *QEMUCompute) Start(ctx context.Context, inst Instance) error {
	q.mu.Lock()
	if g := q.vms[inst.InstanceRef]; g != nil {
		select {
		case <-g.vm.Done():
		default:
			q.mu.Unlock()
			return nil // already running
		}
	}
	q.mu.Unlock()
	cfg := vm.Config{
		LabDir: q.opts.LabDir, Host: inst.Host, Instance: inst.Name, Image: q.opts.Image,
		MemoryMB: inst.MemoryMB, CPUs: inst.VCPUs, Accel: q.opts.Accel, NoWriter: true,
		KeepOnParentExit: false, Logger: q.log,
	}
	v, stop, err := q.opts.StartVM(ctx, cfg)
	if err != nil {
		return fmt.Errorf("start %s: %w", inst.InstanceRef, err)
	}
	g := &qemuGuest{vm: v, stop: stop}
	q.mu.Lock()
	q.vms[inst.InstanceRef] = g
	q.mu.Unlock()
	for _, d := range inst.Disks {
		if err := q.plug(ctx, g, d); err != nil {
			_ = q.Stop(ctx, inst.InstanceRef)
			return fmt.Errorf("start %s: %w", inst.InstanceRef, err)
		}
	}
	q.log.Info("lab server running", "instance", inst.InstanceRef.String(), "pid", v.PID, "disks", len(inst.Disks), "boot", v.BootDuration.Round(time.Millisecond))
	return nil
}

// Stop stops the guest (QMP quit, then kill).
func (q *QEMUCompute) Stop(ctx context.Context, ref InstanceRef) error {
	q.mu.Lock()
	g := q.vms[ref]
	delete(q.vms, ref)
	q.mu.Unlock()
	if g == nil {
		return nil
	}
	if err := g.stop(); err != nil {
		return fmt.Errorf("stop %s: %w", ref, err)
	}
	return nil
}

// StopAll stops every guest this backend started (for `raksha lab down`).
func (q *QEMUCompute) StopAll(ctx context.Context) {
	q.mu.Lock()
	var refs []InstanceRef
	for r := range q.vms {
		refs = append(refs, r)
	}
	q.mu.Unlock()
	for _, r := range refs {
		if err := q.Stop(ctx, r); err != nil {
			q.log.Error("stop lab server", "instance", r.String(), "err", err)
		}
	}
}

// Running reports whether this backend runs the guest and QEMU is alive.
func (q *QEMUCompute) Running(ctx context.Context, ref InstanceRef) (bool, error) {
	q.mu.Lock()
	g := q.vms[ref]
	q.mu.Unlock()
	if g == nil {
		return false, nil
	}
	select {
	case <-g.vm.Done():
		return false, nil
	default:
		return true, nil
	}
}

func (q *QEMUCompute) guest(ref InstanceRef) (*qemuGuest, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	g := q.vms[ref]
	if g == nil {
		return nil, fmt.Errorf("%s is not running", ref)
	}
	return g, nil
}

// Attach hot-plugs and mounts a disk.
func (q *QEMUCompute) Attach(ctx context.Context, ref InstanceRef, d Disk) error {
	g, err := q.guest(ref)
	if err != nil {
		return fmt.Errorf("attach %s: %w", d.Node, err)
	}
	if err := q.plug(ctx, g, d); err != nil {
		return fmt.Errorf("attach %s to %s: %w", d.Node, ref, err)
	}
	return nil
}

// session takes the guest's lock (through its agent) and opens its QMP
// monitor.
func (q *QEMUCompute) session(ctx context.Context, g *qemuGuest, what string) (*guest.Client, *qemu.Monitor, error) {
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ag, err := guest.Dial(lctx, g.vm.AgentSocket, guest.Options{Logger: q.log, Owner: "raksha lab: " + what})
	if err != nil {
		return nil, nil, err
	}
	mon, err := qemu.DialMonitor(lctx, g.vm.LabQMPSocket)
	if err != nil {
		ag.Close()
		return nil, nil, err
	}
	return ag, mon, nil
}

// plug adds the disk's nodes and virtio-blk device, then mounts it in the
// guest and starts a record writer on it.
func (q *QEMUCompute) plug(ctx context.Context, g *qemuGuest, d Disk) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	ag, mon, err := q.session(ctx, g, "attach "+d.Node)
	if err != nil {
		return err
	}
	defer ag.Close()
	defer mon.Close()
	type step struct {
		cmd  string
		args any
		undo string // the node to delete when a later step fails
	}
	steps := []step{
		{"blockdev-add", map[string]any{"driver": "file", "filename": d.Path, "node-name": d.Node + "-file"}, d.Node + "-file"},
		{"blockdev-add", map[string]any{"driver": "qcow2", "file": d.Node + "-file", "node-name": d.Node}, d.Node},
	}
	if r := d.RBD; r != nil {
		// QEMU's rbd block driver (Debian: qemu-block-extra), one node
		// named as a qcow2 drive's format node; no librbd cache, so that
		// what the guest wrote is in the cluster when it returns.
		steps = []step{{"blockdev-add", map[string]any{"driver": "rbd", "pool": r.Pool, "image": r.Image, "conf": r.CephConf,
			"user": r.User, "node-name": d.Node, "cache": map[string]any{"direct": true}}, d.Node}}
	}
	steps = append(steps, step{"device_add", map[string]any{"driver": "virtio-blk-pci", "drive": d.Node, "id": "dev-" + d.Node, "serial": d.Serial}, ""})
	for i, s := range steps {
		if err := mon.Run(ctx, s.cmd, s.args, nil); err != nil {
			// Undo what was added, the format node first.
			for j := i - 1; j >= 0; j-- {
				_ = mon.Run(ctx, "blockdev-del", map[string]any{"node-name": steps[j].undo}, nil)
			}
			if d.RBD != nil && strings.Contains(err.Error(), "Unknown driver") {
				return fmt.Errorf("hot-plug %s: %w (QEMU's rbd driver is in the Debian package qemu-block-extra)", d.Node, err)
			}
			return fmt.Errorf("hot-plug %s: %w", d.Node, err)
		}
	}
	writer, interval := "1", q.opts.WriterInterval.String()
	if q.opts.NoWriter {
		writer = "0"
	}
	if q.opts.WriterInterval <= 0 {
		interval = "1s"
	}
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	res, err := ag.Run(rctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", mountScript, "mount", d.Serial, writer, interval}, Capture: true})
	if err != nil {
		return fmt.Errorf("mount %s in the guest: %w", d.Node, err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("mount %s in the guest: exit %d: %s", d.Node, res.ExitCode, strings.TrimSpace(string(res.Stderr)))
	}
	q.log.Info("disk plugged", "instance", g.vm.Instance, "node", d.Node, "guest", strings.TrimSpace(string(res.Stdout)))
	return nil
}

// Detach stops the disk's writer, unmounts it in the guest, unplugs the
// device and deletes its nodes.
func (q *QEMUCompute) Detach(ctx context.Context, ref InstanceRef, node string) error {
	g, err := q.guest(ref)
	if err != nil {
		return fmt.Errorf("detach %s: %w", node, err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	ag, mon, err := q.session(ctx, g, "detach "+node)
	if err != nil {
		return fmt.Errorf("detach %s from %s: %w", node, ref, err)
	}
	defer ag.Close()
	defer mon.Close()
	var serial string
	// The serial is what the guest knows the disk by; the device's property
	// holds it.
	if err := mon.Run(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/dev-" + node, "property": "serial"}, &serial); err != nil {
		return fmt.Errorf("detach %s from %s: %w", node, ref, err)
	}
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	res, err := ag.Run(rctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", umountScript, "umount", serial}, Capture: true})
	if err != nil {
		return fmt.Errorf("detach %s from %s: unmount in the guest: %w", node, ref, err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("detach %s from %s: unmount in the guest: exit %d: %s", node, ref, res.ExitCode, strings.TrimSpace(string(res.Stderr)))
	}
	if err := mon.Run(ctx, "device_del", map[string]any{"id": "dev-" + node}, nil); err != nil {
		return fmt.Errorf("detach %s from %s: %w", node, ref, err)
	}
	// The guest acknowledges the unplug asynchronously; wait for the device
	// to go before deleting its nodes.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var props []struct{ Name string }
		err := mon.Run(ctx, "qom-list", map[string]any{"path": "/machine/peripheral/dev-" + node}, &props)
		if err != nil {
			break // gone
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("detach %s from %s: the guest did not release the device within 30s", node, ref)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A qcow2 drive has a protocol node below its format node; an RBD
	// drive is one node.
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	if err := mon.Run(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return fmt.Errorf("detach %s from %s: %w", node, ref, err)
	}
	del := []string{node}
	for _, n := range nodes {
		if n.NodeName == node+"-file" {
			del = append(del, n.NodeName)
		}
	}
	// The device's block backend is released after the device is gone from
	// QOM (RCU): a node may be "in use" for a moment longer.
	for _, n := range del {
		for {
			err := mon.Run(ctx, "blockdev-del", map[string]any{"node-name": n}, nil)
			if err == nil {
				break
			}
			if !strings.Contains(err.Error(), "is in use") || time.Now().After(deadline) {
				return fmt.Errorf("detach %s from %s: %w", node, ref, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// CopyDisk writes a point-in-time copy of an attached disk to target with a
// QMP backup job (sync=full): QEMU's copy-before-write keeps what the guest
// overwrites during the job, so the copy is the disk as of the job's start.
func (q *QEMUCompute) CopyDisk(ctx context.Context, ref InstanceRef, node, target string) error {
	g, err := q.guest(ref)
	if err != nil {
		return fmt.Errorf("copy %s: %w", node, err)
	}
	var size int64
	if size, err = func() (int64, error) {
		g.mu.Lock()
		defer g.mu.Unlock()
		_, mon, err := q.sessionQMPOnly(ctx, g)
		if err != nil {
			return 0, err
		}
		defer mon.Close()
		var blocks []struct {
			NodeName string `json:"node-name"`
			Image    struct {
				VirtualSize int64 `json:"virtual-size"`
			} `json:"image"`
		}
		if err := mon.Run(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &blocks); err != nil {
			return 0, err
		}
		for _, b := range blocks {
			if b.NodeName == node {
				return b.Image.VirtualSize, nil
			}
		}
		return 0, fmt.Errorf("no block node %s", node)
	}(); err != nil {
		return fmt.Errorf("copy %s of %s: %w", node, ref, err)
	}
	if err := qemuImg(ctx, "create", "-q", "-f", "qcow2", target, fmt.Sprint(size)); err != nil {
		return fmt.Errorf("copy %s of %s: %w", node, ref, err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	ag, mon, err := q.session(ctx, g, "snapshot "+node)
	if err != nil {
		return fmt.Errorf("copy %s of %s: %w", node, ref, err)
	}
	defer ag.Close()
	defer mon.Close()
	// Node and job names are limited to 31 characters.
	tnode := fmt.Sprintf("snap%x", time.Now().UnixNano())
	job := "job-" + tnode
	cleanup := func() {
		_ = mon.Run(context.WithoutCancel(ctx), "blockdev-del", map[string]any{"node-name": tnode}, nil)
		_ = mon.Run(context.WithoutCancel(ctx), "blockdev-del", map[string]any{"node-name": tnode + "-f"}, nil)
	}
	for _, s := range []struct {
		cmd  string
		args any
	}{
		{"blockdev-add", map[string]any{"driver": "file", "filename": target, "node-name": tnode + "-f"}},
		{"blockdev-add", map[string]any{"driver": "qcow2", "file": tnode + "-f", "node-name": tnode}},
		{"blockdev-backup", map[string]any{"job-id": job, "device": node, "target": tnode, "sync": "full", "auto-dismiss": false}},
	} {
		if err := mon.Run(ctx, s.cmd, s.args, nil); err != nil {
			cleanup()
			return fmt.Errorf("copy %s of %s: %w", node, ref, err)
		}
	}
	defer cleanup()
	for {
		var jobs []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		if err := mon.Run(ctx, "query-jobs", nil, &jobs); err != nil {
			return fmt.Errorf("copy %s of %s: %w", node, ref, err)
		}
		var st, msg string
		for _, j := range jobs {
			if j.ID == job {
				st, msg = j.Status, j.Error
			}
		}
		if st == "concluded" {
			_ = mon.Run(ctx, "job-dismiss", map[string]any{"id": job}, nil)
			if msg != "" {
				return fmt.Errorf("copy %s of %s: backup job: %s", node, ref, msg)
			}
			return nil
		}
		if st == "" {
			return fmt.Errorf("copy %s of %s: backup job vanished", node, ref)
		}
		select {
		case <-ctx.Done():
			_ = mon.Run(context.WithoutCancel(ctx), "job-cancel", map[string]any{"id": job}, nil)
			return fmt.Errorf("copy %s of %s: %w", node, ref, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// sessionQMPOnly opens the monitor under the guest's lock for a short query.
func (q *QEMUCompute) sessionQMPOnly(ctx context.Context, g *qemuGuest) (*guest.Client, *qemu.Monitor, error) {
	ag, mon, err := q.session(ctx, g, "query")
	if err != nil {
		return nil, nil, err
	}
	ag.Close()
	return nil, mon, nil
}

// mountScript runs in the guest (busybox sh): $1 the disk's serial, $2 1 to
// start a record writer on it, $3 the writer's interval. It waits for the
// hot-plugged disk, mounts its ext filesystem at /data/<label> (as the
// guest's /init does at boot) and prints the mount point.
const mountScript = `
s="$1"; w="$2"; iv="$3"; dev=""; i=0
while [ -z "$dev" ] && [ $i -lt 200 ]; do
  for b in /sys/block/vd*; do
    [ -e "$b/serial" ] && [ "$(cat $b/serial)" = "$s" ] && dev=/dev/${b##*/}
  done
  [ -n "$dev" ] || { sleep 0.05; i=$((i+1)); }
done
[ -n "$dev" ] || { echo "no virtio disk with serial $s appeared" >&2; exit 1; }
i=0; while [ ! -b "$dev" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
magic=$(dd if=$dev bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')
if [ "$magic" != 53ef ]; then echo "$dev: no ext filesystem, not mounted"; exit 0; fi
label=$(dd if=$dev bs=1 skip=1144 count=16 2>/dev/null | tr -d '\000' | tr -c 'A-Za-z0-9._-' '_')
[ -n "$label" ] || label=${dev##*/}
# taken only when something is mounted there: on a guest booted from its
# root disk, /data/<label> directories of earlier boots stay on it.
awk -v p="/data/$label" '$2 == p { f = 1 } END { exit !f }' /proc/mounts && label=$label-${dev##*/}
mkdir -p /data/$label /run/raksha
mount -t ext4 $dev /data/$label || { echo "mount $dev at /data/$label failed" >&2; exit 1; }
echo "mounted $dev at /data/$label" > /dev/ttyS0
if [ "$w" = 1 ]; then
  rm -f /run/raksha/w-$s.ready
  guestapp write -interval "$iv" -ready /run/raksha/w-$s.ready /data/$label >>/run/raksha/guestapp.log 2>&1 </dev/null &
  echo $! > /run/raksha/w-$s.pid
  i=0; while [ ! -e /run/raksha/w-$s.ready ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
  [ -e /run/raksha/w-$s.ready ] || { echo "record writer on /data/$label not ready after 30s" >&2; exit 1; }
fi
echo "/data/$label"
`

// umountScript runs in the guest: $1 the disk's serial. It stops the disk's
// record writer and unmounts it.
const umountScript = `
s="$1"; dev=""
for b in /sys/block/vd*; do
  [ -e "$b/serial" ] && [ "$(cat $b/serial)" = "$s" ] && dev=/dev/${b##*/}
done
[ -n "$dev" ] || exit 0
if [ -e /run/raksha/w-$s.pid ]; then
  p=$(cat /run/raksha/w-$s.pid); kill $p 2>/dev/null
  i=0; while kill -0 $p 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
  rm -f /run/raksha/w-$s.pid
fi
mp=$(awk -v d="$dev" '$1 == d { print $2 }' /proc/mounts)
[ -z "$mp" ] || umount "$mp" || { echo "umount $mp failed" >&2; exit 1; }
sync
`
