package agent

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raksha-backup/raksha/internal/filerestore"
)

// The guest's view: the volume is the first virtio disk, mounted at mnt.
const (
	disk = "vda"
	mnt  = "/mnt"
)

// mountData are the options with log recovery and without, as
// internal/loopfs mounts: the disk is writable (a copy-on-write overlay on
// the host), so a read-only mount still replays a dirty log into it.
var mountData = map[string]struct{ recover, norecover string }{
	"xfs":  {"nouuid", "norecovery,nouuid"},
	"ext4": {"errors=remount-ro", "noload,errors=remount-ro"},
}

// Main is the appliance's agent: it reads the request from the kernel
// command line, mounts the disk, sends the tar, prints the result line on
// the console and powers the guest off. It returns only when powering off
// failed.
func Main() {
	res := run()
	b, _ := json.Marshal(res)
	fmt.Fprintf(os.Stdout, "\n%s%s\n", ResultPrefix, b)
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func fail(res Result, stage string, err error) Result {
	res.OK, res.Stage, res.Error = false, stage, err.Error()
	return res
}

func run() (res Result) {
	ctx := context.Background()
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fail(res, "request", err)
	}
	req, err := DecodeRequest(string(cmdline))
	if err != nil {
		return fail(res, "request", err)
	}
	data, ok := mountData[req.FSType]
	if !ok {
		return fail(res, "request", fmt.Errorf("file system %q: want xfs or ext4", req.FSType))
	}
	dev := "/dev/" + disk
	port, err := waitFor(10*time.Second, func() (string, error) {
		if _, err := os.Stat(dev); err != nil {
			return "", fmt.Errorf("no disk %s: %w", dev, err)
		}
		return findPort(PortName)
	})
	if err != nil {
		return fail(res, "disk", err)
	}
	before := sectorsWritten(disk)
	flags := uintptr(unix.MS_RDONLY | unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC)
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return fail(res, "mount", err)
	}
	res.Options = "ro," + data.recover
	if err := unix.Mount(dev, mnt, req.FSType, flags, data.recover); err != nil {
		res.RecoveryErr = fmt.Sprintf("mount %s (%s): %v", dev, res.Options, err)
		fmt.Fprintf(os.Stdout, "APPLIANCE: %s; mounting without log recovery\n", res.RecoveryErr)
		res.Options = "ro," + data.norecover
		if err2 := unix.Mount(dev, mnt, req.FSType, flags, data.norecover); err2 != nil {
			return fail(res, "mount", fmt.Errorf("%s; and without log recovery (%s): %w", res.RecoveryErr, res.Options, err2))
		}
	}
	unix.Sync()
	res.Replayed = (sectorsWritten(disk) - before) * 512
	src, err := os.OpenRoot(mnt)
	if err != nil {
		return fail(res, "mount", err)
	}
	defer src.Close()
	if _, err := filerestore.ResolveIn(ctx, src, req.Path); err != nil {
		res = fail(res, "path", err)
		res.NotFound = errors.Is(err, filerestore.ErrNotFound)
		return res
	}
	f, err := os.OpenFile(port, os.O_RDWR, 0)
	if err != nil {
		return fail(res, "copy", fmt.Errorf("open the port %s: %w", port, err))
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	res.Skipped, err = Write(ctx, src, req.Path, tw)
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return fail(res, "copy", err)
	}
	// the host has all of it once it says so (or gives up)
	got := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		_, err := io.ReadFull(f, b)
		if err == nil && b[0] != Ack {
			err = fmt.Errorf("got %q, not the acknowledgement", b[0])
		}
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			return fail(res, "copy", fmt.Errorf("wait for the host's acknowledgement: %w", err))
		}
	case <-time.After(60 * time.Second):
		return fail(res, "copy", errors.New("the host did not acknowledge the tar within 60s"))
	}
	res.OK = true
	return res
}

// waitFor calls f until it succeeds or d has passed.
func waitFor(d time.Duration, f func() (string, error)) (string, error) {
	deadline := time.Now().Add(d)
	for {
		s, err := f()
		if err == nil || time.Now().After(deadline) {
			return s, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// findPort returns the device node of the virtio-serial port named name.
func findPort(name string) (string, error) {
	dirs, _ := filepath.Glob("/sys/class/virtio-ports/*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			p := "/dev/" + filepath.Base(d)
			if _, err := os.Stat(p); err != nil {
				return "", err
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %s", name)
}

// sectorsWritten reads the sectors written to a block device so far.
func sectorsWritten(dev string) int64 {
	b, err := os.ReadFile("/sys/block/" + dev + "/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 7 {
		return 0
	}
	n, _ := strconv.ParseInt(f[6], 10, 64)
	return n
}
