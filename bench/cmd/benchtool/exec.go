package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// ExecResult is what `benchtool exec` measures about one command.
type ExecResult struct {
	Argv     []string `json:"argv"`
	ExitCode int      `json:"exit_code"`        // -1 when killed by a signal
	Signal   string   `json:"signal,omitempty"` // set when killed by a signal
	WallNS   int64    `json:"wall_ns"`          // start to reap
	// SyncNS (with -sync) is how long a sync(2) started right after the
	// reap took: the write-back of what the command left dirty in the page
	// cache (and whatever else was dirty on the machine). WallNS + SyncNS is
	// the command's time up to a final sync.
	SyncNS   int64 `json:"sync_ns,omitempty"`
	MaxRSSKB int64 `json:"maxrss_kb"` // from wait4's rusage of the child
	UserNS   int64 `json:"user_ns"`   // CPU time of the child (and its reaped children)
	SysNS    int64 `json:"sys_ns"`    //
	// Counters of /proc/PID/io read at the child's PTRACE_EVENT_EXIT stop,
	// i.e. after its last syscall, while the whole thread group is still
	// accountable. rchar counts every byte returned by read(2)-family calls
	// (files, pipes, sockets) whether or not it came from the page cache.
	RcharExit     int64 `json:"rchar_exit"`
	WcharExit     int64 `json:"wchar_exit"`
	ReadBytesExit int64 `json:"read_bytes_exit"` // storage-layer reads (0 on a warm cache)
	ExitSeen      bool  `json:"exit_seen"`       // the exit stop was observed
	TimedOut      bool  `json:"timed_out"`       // killed after -timeout
	// Second, independent method: the kernel adds a reaped child's I/O
	// counters to its parent's, so /proc/self/io of this wrapper grows by
	// the child's total when it is reaped. Includes a few hundred bytes of
	// this wrapper's own reads of /proc files.
	RcharReaped int64 `json:"rchar_reaped"`
}

func cmdExec(args []string) error {
	fs := flag.NewFlagSet("exec", flag.ExitOnError)
	out := fs.String("o", "", "write the JSON result to this file (default: stderr)")
	timeout := fs.Duration("timeout", 0, "kill the command (SIGKILL) after this long; 0 = never")
	doSync := fs.Bool("sync", false, "after the command is reaped, run sync(2) and time it (sync_ns)")
	fs.Parse(args)
	argv := fs.Args()
	if len(argv) == 0 {
		return fmt.Errorf("usage: benchtool exec [-o FILE] -- CMD [ARGS]")
	}
	res, err := runTraced(argv, *timeout)
	if err != nil {
		return err
	}
	if *doSync {
		t := time.Now()
		syscall.Sync()
		res.SyncNS = max(time.Since(t).Nanoseconds(), 1)
	}
	b, _ := json.Marshal(res)
	if *out != "" {
		if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(os.Stderr, string(b))
	}
	if res.ExitCode != 0 {
		if res.ExitCode < 0 {
			return exitError(128)
		}
		return exitError(res.ExitCode)
	}
	return nil
}

type procIO struct{ rchar, wchar, readBytes int64 }

func readProcIO(path string) (procIO, error) {
	f, err := os.Open(path)
	if err != nil {
		return procIO{}, err
	}
	defer f.Close()
	var p procIO
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "rchar":
			p.rchar = n
		case "wchar":
			p.wchar = n
		case "read_bytes":
			p.readBytes = n
		}
	}
	return p, sc.Err()
}

// runTraced starts argv as a ptrace'd child (stdin/stdout/stderr inherited),
// asks for PTRACE_O_TRACEEXIT, passes every signal through, and reads
// /proc/PID/io when the child stops on its way out.
//
// Tracing costs the command time: every signal it gets (the Go runtime sends
// itself SIGURG to preempt goroutines, many per second) becomes a stop the
// tracer has to resume. A Go restore measured 2.8x its plain wall time so.
// So by default the command runs untraced and its bytes read come from the
// counters the kernel adds to this process when it reaps the child (the two
// methods agreed within 0.0005%); BENCH_PTRACE=1 turns tracing back on.
func runTraced(argv []string, timeout time.Duration) (*ExecResult, error) {
	traced := os.Getenv("BENCH_PTRACE") == "1"
	// All ptrace requests must come from the thread that is the tracer.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	self0, err := readProcIO("/proc/self/io")
	if err != nil {
		return nil, fmt.Errorf("reading /proc/self/io: %w", err)
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, err
	}
	start := time.Now()
	proc, err := os.StartProcess(path, argv, &os.ProcAttr{
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		// Own process group, so that a timeout or an interrupt reaches
		// everything the command started.
		Sys: &syscall.SysProcAttr{Ptrace: traced, Setpgid: true},
	})
	if err != nil {
		return nil, err
	}
	pid := proc.Pid
	res := &ExecResult{Argv: argv}
	var timedOut atomic.Bool
	if timeout > 0 {
		t := time.AfterFunc(timeout, func() {
			timedOut.Store(true)
			syscall.Kill(-pid, syscall.SIGKILL)
		})
		defer t.Stop()
	}
	// Pass interrupts on to the command's group (it is not in ours).
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		for sig := range sigs {
			syscall.Kill(-pid, sig.(syscall.Signal))
		}
	}()

	var ws syscall.WaitStatus
	var ru syscall.Rusage
	wait := func() error {
		for {
			_, err := syscall.Wait4(pid, &ws, syscall.WALL, &ru)
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			return err
		}
	}
	if !traced {
		if err := wait(); err != nil {
			return nil, fmt.Errorf("wait4: %w", err)
		}
		return finish(res, start, &timedOut, ws, ru, self0), nil
	}
	// First stop: SIGTRAP right after execve.
	if err := wait(); err != nil {
		return nil, fmt.Errorf("wait4: %w", err)
	}
	if !ws.Stopped() {
		return nil, fmt.Errorf("child did not stop after exec (status %v)", ws)
	}
	if err := syscall.PtraceSetOptions(pid, syscall.PTRACE_O_TRACEEXIT); err != nil {
		proc.Kill()
		return nil, fmt.Errorf("PTRACE_SETOPTIONS: %w", err)
	}
	if err := syscall.PtraceCont(pid, 0); err != nil {
		return nil, fmt.Errorf("PTRACE_CONT: %w", err)
	}
	for {
		if err := wait(); err != nil {
			return nil, fmt.Errorf("wait4: %w", err)
		}
		if ws.Exited() || ws.Signaled() {
			break
		}
		if !ws.Stopped() {
			continue
		}
		sig := ws.StopSignal()
		if sig == syscall.SIGTRAP && ws.TrapCause() == syscall.PTRACE_EVENT_EXIT {
			if p, err := readProcIO(fmt.Sprintf("/proc/%d/io", pid)); err == nil {
				res.RcharExit, res.WcharExit, res.ReadBytesExit = p.rchar, p.wchar, p.readBytes
				res.ExitSeen = true
			}
			syscall.PtraceCont(pid, 0)
			continue
		}
		if sig == syscall.SIGTRAP {
			sig = 0 // a trap of ours (no other events are enabled)
		}
		// Signal-delivery stop: deliver the signal as if untraced.
		syscall.PtraceCont(pid, int(sig))
	}
	return finish(res, start, &timedOut, ws, ru, self0), nil
}

// finish fills in what the reaped child's status and counters say.
func finish(res *ExecResult, start time.Time, timedOut *atomic.Bool, ws syscall.WaitStatus, ru syscall.Rusage, self0 procIO) *ExecResult {
	res.WallNS = time.Since(start).Nanoseconds()
	res.TimedOut = timedOut.Load()
	res.MaxRSSKB = ru.Maxrss
	res.UserNS = ru.Utime.Nano()
	res.SysNS = ru.Stime.Nano()
	if ws.Signaled() {
		res.ExitCode = -1
		res.Signal = ws.Signal().String()
	} else {
		res.ExitCode = ws.ExitStatus()
	}
	if self1, err := readProcIO("/proc/self/io"); err == nil {
		res.RcharReaped = self1.rchar - self0.rchar
		if !res.ExitSeen {
			res.RcharExit = res.RcharReaped
		}
	}
	return res
}
