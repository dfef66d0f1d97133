package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/demo"
	"github.com/raksha-backup/raksha/internal/lab/vm"
)

// Files of a running lab in its directory.
const (
	labPIDFile   = "lab.pid"
	labURLFile   = "lab.url"
	labReadyFile = "lab.ready"
	labLogFile   = "lab.log"
	// labComputeFile says how the lab runs its servers (lab up --compute).
	labComputeFile = "lab.compute"
	labCloudsFile  = "clouds.yaml"
	// Cloud names in the lab's clouds.yaml.
	labAdminCloud = demo.AdminCloud
	labDemoCloud  = demo.DemoCloud
	labDemoUser   = demo.DemoUser
)

func defaultLabDir() string { return filepath.Join(os.TempDir(), "raksha-lab") }

func (a *app) labCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{Use: "lab", Short: "The lab cloud: an OpenStack-compatible API over real QEMU guests on this machine"}
	c.PersistentFlags().StringVar(&dir, "dir", "", "lab directory (default: env RAKSHA_LAB_DIR, else raksha-lab in the temporary directory; keep it short: socket paths are limited to 107 bytes)")
	labDir := func() string {
		switch {
		case dir != "":
			return dir
		case a.getenv("RAKSHA_LAB_DIR") != "":
			return a.getenv("RAKSHA_LAB_DIR")
		}
		return defaultLabDir()
	}
	c.AddCommand(a.labUpCmd(labDir), a.labDownCmd(labDir), a.labStatusCmd(labDir), a.labServeCmd(labDir))
	return c
}

func (a *app) labUpCmd(labDir func() string) *cobra.Command {
	var noDemo bool
	var addr, accel, compute string
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "up [--dir DIR] [--no-demo] [--compute qemu|libvirt]",
		Short: "Start the lab cloud in the background (and a demo workload on first start)",
		Long: `Start the lab cloud in the background: Keystone, Nova, Cinder, Glance, Neutron and Heat
subsets on 127.0.0.1, servers as QEMU processes of the lab guest, volumes as qcow2 files.
Without --no-demo it also creates (once) project demo with user demo and two servers
demo-1 and demo-2 (metadata and tag raksha.workload=demo), each with an ephemeral disk
and an attached data volume, the in-guest writer running on both. DIR/clouds.yaml has
the clouds raksha-lab (admin) and raksha-lab-demo (member of demo):
  OS_CLIENT_CONFIG_FILE=DIR/clouds.yaml OS_CLOUD=raksha-lab openstack server list --all-projects`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(labDir())
			if err != nil {
				return err
			}
			if pid, ok := labRunning(dir); ok {
				fmt.Fprintf(a.stdout, "lab already running (pid %d) in %s\n", pid, dir)
				return a.printLabStatus(dir)
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return fmt.Errorf("lab up: %w", err)
			}
			for _, f := range []string{labReadyFile, labURLFile} {
				_ = os.Remove(filepath.Join(dir, f))
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("lab up: %w", err)
			}
			logf, err := os.OpenFile(filepath.Join(dir, labLogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return fmt.Errorf("lab up: %w", err)
			}
			defer logf.Close()
			sargs := []string{"lab", "serve", "--dir", dir, "--addr", addr, "--accel", accel, "--compute", compute, "--log-level", "info"}
			if noDemo {
				sargs = append(sargs, "--no-demo")
			}
			srv := exec.Command(self, sargs...)
			srv.Stdout, srv.Stderr = logf, logf
			srv.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			wd, _ := os.Getwd()
			srv.Dir = wd // the guest image is built from the repository found from here
			start := time.Now()
			if err := srv.Start(); err != nil {
				return fmt.Errorf("lab up: start %s lab serve: %w", self, err)
			}
			exited := make(chan error, 1)
			go func() { exited <- srv.Wait() }()
			fmt.Fprintf(a.stderr, "lab starting in %s (pid %d, log %s)...\n", dir, srv.Process.Pid, filepath.Join(dir, labLogFile))
			deadline := time.After(timeout)
			for {
				if _, err := os.Stat(filepath.Join(dir, labReadyFile)); err == nil {
					break
				}
				select {
				case err := <-exited:
					return fmt.Errorf("lab up: the lab process exited (%v); see %s:\n%s", err, filepath.Join(dir, labLogFile), tailOf(filepath.Join(dir, labLogFile), 2000))
				case <-deadline:
					return fmt.Errorf("lab up: not ready after %s; see %s", timeout, filepath.Join(dir, labLogFile))
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(200 * time.Millisecond):
				}
			}
			fmt.Fprintf(a.stderr, "lab up in %s\n", time.Since(start).Round(100*time.Millisecond))
			return a.printLabStatus(dir)
		},
	}
	c.Flags().BoolVar(&noDemo, "no-demo", false, "do not create the demo workload")
	c.Flags().StringVar(&addr, "addr", "127.0.0.1:0", "API listen address (127.0.0.1 only)")
	c.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "how long to wait for the lab (the first start builds the guest image)")
	c.Flags().StringVar(&accel, "accel", "tcg", "QEMU accelerator: tcg, kvm, or auto (KVM when a boot proves it works)")
	c.Flags().StringVar(&compute, "compute", "qemu", computeHelp)
	return c
}

func tailOf(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// labRunning reads DIR/lab.pid and tells whether that process lives.
func labRunning(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, labPIDFile))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return pid, false
	}
	return pid, true
}

func (a *app) labDownCmd(labDir func() string) *cobra.Command {
	return &cobra.Command{
		Use:   "down [--dir DIR]",
		Short: "Stop the lab cloud and its guests (the state stays; lab up resumes it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(labDir())
			if err != nil {
				return err
			}
			pid, ok := labRunning(dir)
			if !ok {
				fmt.Fprintf(a.stdout, "no lab running in %s\n", dir)
				return nil
			}
			if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
				return fmt.Errorf("lab down: signal pid %d: %w", pid, err)
			}
			deadline := time.Now().Add(90 * time.Second)
			for time.Now().Before(deadline) {
				if _, ok := labRunning(dir); !ok {
					fmt.Fprintf(a.stdout, "lab in %s stopped\n", dir)
					return nil
				}
				time.Sleep(200 * time.Millisecond)
			}
			return fmt.Errorf("lab down: pid %d still running after 90s", pid)
		},
	}
}

func (a *app) labStatusCmd(labDir func() string) *cobra.Command {
	return &cobra.Command{
		Use:   "status [--dir DIR]",
		Short: "Show whether the lab runs, its API, clouds.yaml and servers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(labDir())
			if err != nil {
				return err
			}
			return a.printLabStatus(dir)
		},
	}
}

type labStatus struct {
	Dir     string           `json:"dir"`
	Running bool             `json:"running"`
	PID     int              `json:"pid,omitempty"`
	URL     string           `json:"url,omitempty"`
	Clouds  string           `json:"clouds_yaml,omitempty"`
	Servers []lab.ServerInfo `json:"servers"`
}

func (a *app) printLabStatus(dir string) error {
	st := labStatus{Dir: dir}
	st.PID, st.Running = labRunning(dir)
	if !st.Running {
		st.PID = 0
	}
	if b, err := os.ReadFile(filepath.Join(dir, labURLFile)); err == nil && st.Running {
		st.URL = strings.TrimSpace(string(b))
	}
	if _, err := os.Stat(filepath.Join(dir, labCloudsFile)); err == nil {
		st.Clouds = filepath.Join(dir, labCloudsFile)
	}
	servers, err := lab.ReadServers(dir)
	if err != nil {
		return fmt.Errorf("lab status: %w", err)
	}
	st.Servers = servers
	if a.format == "json" {
		return a.printJSON(st)
	}
	if st.Running {
		fmt.Fprintf(a.stdout, "lab running (pid %d) in %s\nAPI:    %s/identity/v3\nclouds: %s (clouds %s, %s)\n", st.PID, dir, st.URL, st.Clouds, labAdminCloud, labDemoCloud)
		fmt.Fprintf(a.stdout, "use:    export OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=%s\n", st.Clouds, labAdminCloud)
	} else {
		fmt.Fprintf(a.stdout, "lab not running in %s\n", dir)
	}
	if len(servers) == 0 {
		return nil
	}
	compute := "qemu"
	if b, err := os.ReadFile(filepath.Join(dir, labComputeFile)); err == nil {
		compute = strings.TrimSpace(string(b))
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROJECT\tSERVER\tSTATUS\tHOST\tINSTANCE\tQEMU\tVOLUMES\tID")
	for _, s := range servers {
		proc := "stopped"
		switch {
		case compute == "libvirt":
			proc = "libvirt" // a domain of the system libvirtd: virsh domstate
		case sockAlive(filepath.Join(lab.InstanceDir(dir, s.InstanceRef), "qmp.sock")):
			proc = "running"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", s.Project, s.Name, s.Status, s.Host, s.InstanceRef.Name, proc, len(s.Volumes), s.ID)
	}
	return tw.Flush()
}

func sockAlive(path string) bool {
	if _, err := os.Stat(path); err != nil {
		return false
	}
	c, err := net.DialTimeout("unix", path, 200*time.Millisecond)
	if err != nil {
		// A busy single-client monitor refuses; the socket file is there.
		return !errors.Is(err, syscall.ECONNREFUSED)
	}
	c.Close()
	return true
}

// labServeCmd is the lab process itself (started by lab up).
func (a *app) labServeCmd(labDir func() string) *cobra.Command {
	var noDemo bool
	var addr, accel, compute string
	c := &cobra.Command{
		Use:    "serve [--dir DIR]",
		Short:  "Run the lab cloud in the foreground (lab up runs this in the background)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(labDir())
			if err != nil {
				return err
			}
			switch vm.Accel(accel) {
			case vm.AccelTCG, vm.AccelKVM, vm.AccelAuto:
			default:
				return usagef("--accel %q: use tcg, kvm or auto", accel)
			}
			if compute != "qemu" && compute != "libvirt" {
				return usagef("--compute %q: use qemu or libvirt", compute)
			}
			return a.serveLab(cmd.Context(), dir, addr, vm.Accel(accel), compute, !noDemo)
		},
	}
	c.Flags().BoolVar(&noDemo, "no-demo", false, "do not create the demo workload")
	c.Flags().StringVar(&addr, "addr", "127.0.0.1:0", "API listen address")
	c.Flags().StringVar(&accel, "accel", "tcg", "QEMU accelerator: tcg, kvm, or auto")
	c.Flags().StringVar(&compute, "compute", "qemu", computeHelp)
	return c
}

func randomPassword() string {
	var b [18]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// computeHelp describes lab up's --compute.
const computeHelp = `how the lab runs its servers: qemu (QEMU processes, the host worker's socket layout) or libvirt (persistent domains of the system libvirtd, as Nova's libvirt driver runs them, with root disks; one host, lab-host-1; the guests' lock directory is DIR/locks; needs libvirtd: scripts/libvirtd-up.sh)`

// labCompute is the lab's compute backend.
type labCompute interface {
	lab.Compute
	StopAll(context.Context)
}

// labComputeFor builds the compute backend --compute names, and the lab
// options that go with it (libvirt: one host, instance names derived from
// the lab directory so that two labs on one libvirtd do not collide).
func (a *app) labComputeFor(ctx context.Context, dir, compute string, img *vm.Image, accel vm.Accel) (labCompute, lab.Options, func(), error) {
	if compute != "libvirt" {
		return lab.NewQEMUCompute(lab.QEMUOptions{LabDir: dir, Image: *img, Accel: accel, Log: a.log}), lab.Options{}, func() {}, nil
	}
	conn, err := libvirt.Dial(ctx, libvirt.DefaultURI, libvirt.Options{Logger: a.log})
	if err != nil {
		return nil, lab.Options{}, nil, fmt.Errorf("--compute libvirt: %w (start libvirtd with scripts/libvirtd-up.sh)", err)
	}
	h := fnv.New32a()
	h.Write([]byte(dir))
	comp := lab.NewLibvirtCompute(lab.LibvirtOptions{Conn: conn, Image: *img, LockDir: filepath.Join(dir, "locks"), Description: "raksha lab " + dir, Log: a.log})
	opts := lab.Options{Hosts: []string{"lab-host-1"}, FirstInstance: 0x20000000 + int(h.Sum32()&0xfffff)<<4}
	return comp, opts, func() { conn.Close() }, nil
}

func (a *app) serveLab(ctx context.Context, dir, addr string, accel vm.Accel, compute string, withDemo bool) error {
	if host, _, err := net.SplitHostPort(addr); err != nil || (host != "127.0.0.1" && host != "localhost") {
		return usagef("--addr %q: the lab listens on 127.0.0.1 only", addr)
	}
	if pid, ok := labRunning(dir); ok && pid != os.Getpid() {
		return fmt.Errorf("lab serve: a lab already runs in %s (pid %d)", dir, pid)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, labPIDFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	defer func() {
		for _, f := range []string{labPIDFile, labURLFile, labReadyFile} {
			_ = os.Remove(filepath.Join(dir, f))
		}
	}()
	log := a.log
	bctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	img, err := vm.BuildImage(bctx, vm.ImageOptions{})
	cancel()
	if err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	log.Info("lab guest image ready", "key", img.Key, "took", img.BuildDuration.Round(time.Millisecond))
	comp, lopts, closeCompute, err := a.labComputeFor(ctx, dir, compute, img, accel)
	if err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	defer closeCompute()
	defer comp.StopAll(context.WithoutCancel(ctx))
	lopts.Dir, lopts.Addr, lopts.Compute, lopts.FormatDisks, lopts.Log = dir, addr, comp, true, log
	if err := os.WriteFile(filepath.Join(dir, labComputeFile), []byte(compute+"\n"), 0o600); err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	l, err := lab.Start(ctx, lopts)
	if err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	defer l.Close()
	adminPW, demoPW := randomPassword(), randomPassword()
	if _, err := l.EnsureUser(lab.AdminUser, adminPW, lab.AdminProject, "admin"); err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	if _, err := l.EnsureProject("demo"); err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	if _, err := l.EnsureUser(labDemoUser, demoPW, "demo", "member"); err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	// The admin is admin of demo too, so that it can act in that project,
	// and of staging, the project clones go to.
	if _, err := l.EnsureUser(lab.AdminUser, adminPW, "demo", "admin"); err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	if _, err := l.EnsureProject("staging"); err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	if _, err := l.EnsureUser(lab.AdminUser, adminPW, "staging", "admin"); err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	clouds := filepath.Join(dir, labCloudsFile)
	if err := demo.WriteClouds(clouds, l.AuthURL(), adminPW, demoPW); err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, labURLFile), []byte(l.URL()+"\n"), 0o600); err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	if withDemo {
		start := time.Now()
		if err := demo.Ensure(ctx, clouds, log); err != nil {
			return fmt.Errorf("lab serve: demo workload: %w", err)
		}
		log.Info("demo workload ready", "took", time.Since(start).Round(time.Millisecond))
	}
	if err := os.WriteFile(filepath.Join(dir, labReadyFile), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	log.Info("lab ready", "url", l.URL(), "clouds", clouds)
	<-ctx.Done()
	log.Info("lab stopping")
	return nil
}
