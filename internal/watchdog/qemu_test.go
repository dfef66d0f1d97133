package watchdog_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/freezerec"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
	"github.com/raksha-backup/raksha/internal/watchdog"
)

// The test binary doubles as the two processes of a host worker's freeze:
// the freezer (a stand-in for the host worker) and the watchdog it starts.
const (
	roleEnv      = "RAKSHA_WATCHDOG_TEST_ROLE" // "freezer" or "watchdog"
	dirEnv       = "RAKSHA_WATCHDOG_TEST_DIR"  // the freeze records
	sockEnv      = "RAKSHA_WATCHDOG_TEST_SOCK" // freezer: the agent socket, or
	domainEnv    = "RAKSHA_WATCHDOG_TEST_DOM"  // the libvirt domain (with lockEnv)
	lockEnv      = "RAKSHA_WATCHDOG_TEST_LOCKS"
	parentEnv    = "RAKSHA_WATCHDOG_TEST_PARENT"
	freezeTimout = 5 * time.Second
)

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "freezer":
		os.Exit(freezeAndHang())
	case "watchdog":
		os.Exit(serve())
	}
	os.Exit(m.Run())
}

// serve is the watchdog process: raksha-worker watchdog in small.
func serve() int {
	dir := os.Getenv(dirEnv)
	lf, err := os.OpenFile(filepath.Join(dir, "watchdog.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 1
	}
	defer lf.Close()
	parent, _ := strconv.Atoi(os.Getenv(parentEnv))
	log := slog.New(slog.NewTextHandler(lf, nil))
	if err := watchdog.Run(context.Background(), watchdog.Options{Dir: dir, ParentPID: parent, Log: log}); err != nil {
		log.Error("watchdog failed", "err", err)
		return 1
	}
	return 0
}

// freezeAndHang is the host worker: it starts its watchdog, freezes the
// guest with the freeze recorded, prints "FROZEN <deadline ns> <watchdog
// pid>" and hangs until killed.
func freezeAndHang() int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := os.Getenv(dirEnv)
	recs, err := freezerec.Open(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Setenv(roleEnv, "watchdog")
	os.Setenv(parentEnv, strconv.Itoa(os.Getpid()))
	wd, err := watchdog.Start(os.Args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go wd.Wait()
	opts := guest.Options{Owner: "watchdog test freezer"}
	var c *guest.Client
	if dom := os.Getenv(domainEnv); dom != "" {
		conn, err := libvirt.Dial(ctx, "", libvirt.Options{})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		c, err = libvirt.OpenAgent(ctx, conn, dom, libvirt.AgentOptions{LockDir: os.Getenv(lockEnv), Guest: opts, Freezes: recs})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	} else {
		sock := os.Getenv(sockEnv)
		j, err := recs.Journal(freezerec.Route{Kind: freezerec.Socket, Instance: filepath.Base(filepath.Dir(sock)), Socket: sock})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		opts.Journal = j
		if c, err = guest.Dial(ctx, sock, opts); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	h, err := c.Freeze(ctx, guest.FreezeOptions{Timeout: freezeTimout})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("FROZEN %d %d\n", h.Deadline.UnixNano(), wd.Process.Pid)
	time.Sleep(10 * time.Minute)
	return 0
}

// killedFreezer runs the freezer with env, waits for its freeze and
// SIGKILLs its process group; it returns the freeze deadline and the
// watchdog's pid.
func killedFreezer(t *testing.T, env ...string) (time.Time, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), roleEnv+"=freezer"), env...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "FROZEN ") {
				line <- sc.Text()
				return
			}
		}
		close(line)
	}()
	var l string
	select {
	case l = <-line:
	case <-time.After(60 * time.Second):
		t.Fatal("the freezer did not freeze within 60 s")
	}
	f := strings.Fields(l)
	if len(f) != 3 {
		t.Fatalf("freezer said %q", l)
	}
	// Right after the freeze, as in the issue: the whole process group
	// goes, the freeze guard with it.
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	ns, _ := strconv.ParseInt(f[1], 10, 64)
	pid, _ := strconv.Atoi(f[2])
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	return time.Unix(0, ns), pid
}

// provenThawed polls the guest's freeze status through open (which must
// not wait for the lock: the watchdog takes it to thaw) until it is
// thawed, and returns when it saw that. It checks first that the guest is
// still frozen with its freezer dead.
func provenThawed(t *testing.T, dl time.Time, open func(ctx context.Context) (*guest.Client, error)) time.Time {
	t.Helper()
	status := func() (guest.FreezeStatus, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := open(ctx)
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.FsfreezeStatus(ctx)
	}
	first := true
	for {
		st, err := status()
		now := time.Now()
		switch {
		case errors.Is(err, guest.ErrLocked):
		case err != nil:
			t.Fatalf("status: %v", err)
		case first && st != guest.Frozen:
			t.Fatalf("guest %s right after its freezer was killed, before the deadline; want frozen", st)
		case st == guest.Thawed:
			return now
		}
		if err == nil {
			first = false
		}
		if now.After(dl.Add(15 * time.Second)) {
			t.Fatalf("guest still %s 15 s past its freeze deadline with the freezer dead", st)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// checkWatchdog checks that the record is gone, the watchdog logged the
// thaw, and it ended by itself (its parent dead, no record left).
func checkWatchdog(t *testing.T, dir string, pid int) {
	t.Helper()
	recs, err := freezerec.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	end := time.Now().Add(10 * time.Second)
	for {
		keys, _ := recs.Keys()
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		exited := len(b) == 0 || strings.Contains(string(b), ") Z ")
		if len(keys) == 0 && exited {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("10 s after the thaw: records %v, watchdog exited %v", keys, exited)
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "watchdog.log"))
	t.Logf("watchdog log:\n%s", log)
	if !strings.Contains(string(log), "watchdog thawed a guest") {
		t.Fatal("the watchdog did not log its thaw")
	}
}

// TestKilledFreezerThawedByWatchdog (socket layout, a real guest and
// qemu-ga): the process holding the freeze is SIGKILLed with its process
// group right after "guest frozen" and nothing restarts it; the watchdog
// it had started thaws the guest within a few seconds of the deadline,
// removes the record and ends.
func TestKilledFreezerThawedByWatchdog(t *testing.T) {
	img := vmtest.Image(t)
	lab := vmtest.LabDir(t)
	v := vmtest.Boot(t, img, vmtest.Spec{LabDir: lab, Instance: "w1", Labels: []string{"a"}})
	dir := filepath.Join(guest.HostDir(lab, "host1"), "freezes")

	dl, pid := killedFreezer(t, dirEnv+"="+dir, sockEnv+"="+v.AgentSocket)
	thawed := provenThawed(t, dl, func(ctx context.Context) (*guest.Client, error) {
		return guest.Dial(ctx, v.AgentSocket, guest.Options{NoWait: true, Owner: t.Name()})
	})
	late := thawed.Sub(dl)
	t.Logf("guest seen thawed %v after its freeze deadline (watchdog margin %v, poll 250 ms)", late.Round(time.Millisecond), watchdog.DefaultMargin)
	if late > 5*time.Second {
		t.Fatalf("thawed %v after the deadline; want within 5 s", late)
	}
	checkWatchdog(t, dir, pid)
}

// TestLibvirtKilledFreezerThawedByWatchdog is the same on a libvirt
// compute node: the freeze went through libvirt's agent pass-through and
// so does the watchdog's thaw, under the guest's lock in the lock directory.
func TestLibvirtKilledFreezerThawedByWatchdog(t *testing.T) {
	c := libvirttest.Conn(t)
	img := vmtest.Image(t)
	d := libvirttest.Boot(t, c, img, libvirttest.Spec{Labels: []string{"data"}, NoWriter: true})
	locks := filepath.Join(d.Dir, "locks")
	dir := filepath.Join(d.Dir, "freezes")

	dl, pid := killedFreezer(t, dirEnv+"="+dir, domainEnv+"="+d.UUID, lockEnv+"="+locks)
	thawed := provenThawed(t, dl, func(ctx context.Context) (*guest.Client, error) {
		return libvirt.OpenAgent(ctx, c, d.UUID, libvirt.AgentOptions{LockDir: locks, Guest: guest.Options{NoWait: true, Owner: t.Name()}})
	})
	late := thawed.Sub(dl)
	t.Logf("guest seen thawed %v after its freeze deadline (watchdog margin %v, poll 250 ms)", late.Round(time.Millisecond), watchdog.DefaultMargin)
	if late > 5*time.Second {
		t.Fatalf("thawed %v after the deadline; want within 5 s", late)
	}
	checkWatchdog(t, dir, pid)
}
