package integration

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/demo"
	"github.com/raksha-backup/raksha/internal/lab/guestapp"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

// labDemo is the lab cloud with its demo workload (two real guests running
// the in-guest writer, an ephemeral disk and a volume each; on libvirt a
// root disk each too), a
// repository "main", and the activities of a control + host (+ data, with
// RBD) worker. Projects demo and staging exist; the admin has the admin
// role in both.
type labDemo struct {
	t       *testing.T
	ctx     context.Context
	dir     string
	lab     *lab.Lab
	admin   *cloud.Client
	be      *local.Backend
	repoDir string
	hostDir string
	acts    *activities.Activities
	// lv is the libvirt connection when the lab runs on libvirt (nil: the
	// QEMU backend and the socket layout); lockDir its guests' locks.
	lv      *libvirt.Conn
	lockDir string
}

// labEnvOptions vary the lab environment: with RBD the lab keeps its
// volumes in Ceph (lab.Options.RBD) and a data worker with that ceph.conf
// runs too.
type labEnvOptions struct {
	RBD *lab.RBDConfig
	// Libvirt runs the lab's servers as libvirt domains (lab.LibvirtCompute)
	// and the host worker on libvirt (--libvirt-uri), discovery giving
	// libvirt: locators (host driver libvirt), as on a Nova compute node.
	Libvirt bool
	// RBDVolumes is the control worker's rbd_volumes: "host" has the host
	// worker read RBD volumes through libvirt, and the workers get no
	// ceph.conf (a deployment that gives Raksha no Ceph access).
	RBDVolumes string
	// TokenTTL is the lab Keystone's token lifetime (default one hour).
	TokenTTL time.Duration
	// NoSlots runs the lab without taking the machine-wide guest slots
	// (by default it takes them all before its first guest starts): for a
	// test that holds every slot itself (takeAllGuestSlots).
	NoSlots bool
	// Interceptors are added to the in-process workers (newLabEnvWith).
	Interceptors []interceptor.WorkerInterceptor
	// RealSemaphore gives the activities the Temporal client (newLabEnvWith),
	// as raksha-worker does, so that backups take their copy permits from
	// the global copy semaphore (workflows.Semaphore) instead of bypassing
	// it as the other lab tests do.
	RealSemaphore bool
	temporal      client.Client
}

// startLabDemo brings up the lab and the demo workload for the test's
// duration.
func startLabDemo(t *testing.T) *labDemo { return startLabDemoWith(t, labEnvOptions{}) }

func startLabDemoWith(t *testing.T, o labEnvOptions) *labDemo {
	t.Helper()
	img := vmtest.Image(t)
	ctx := context.Background()
	dir := vmtest.LabDir(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var comp interface {
		lab.Compute
		StopAll(context.Context)
	}
	var lvc *libvirt.Conn
	lockDir := filepath.Join(dir, "locks")
	if !o.NoSlots {
		// The lab's guests (its two, and those a restore, clone or drill
		// adds) run in the machine's guest slots, all taken at once before
		// the first guest starts: a test that took two and waited for a
		// third could wait for ever on another process doing the same.
		release, err := vmtest.AcquireSlots(ctx, vmtest.MaxGuests())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(release)
	}
	if o.Libvirt {
		lvc = libvirttest.Conn(t)
		comp = lab.NewLibvirtCompute(lab.LibvirtOptions{Conn: lvc, Image: img, Description: libvirttest.Owner(), LockDir: lockDir, WriterInterval: 100 * time.Millisecond, Log: quiet})
	} else {
		// StartVM nil: vm.Start, no slot of its own (the lab holds them).
		comp = lab.NewQEMUCompute(lab.QEMUOptions{LabDir: dir, Image: img, WriterInterval: 100 * time.Millisecond, Log: quiet})
	}
	first, labLog := 0, quiet
	if o.Libvirt {
		// The lab on libvirt is newer: its warnings and errors go to the
		// test's log.
		first = libvirttest.FirstInstance()
		labLog = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	l, err := lab.Start(ctx, lab.Options{Dir: dir, Compute: comp, FormatDisks: true, Hosts: []string{"h1"}, RBD: o.RBD, Log: labLog, FirstInstance: first, TokenTTL: o.TokenTTL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { comp.StopAll(context.Background()); l.Close() })
	for _, u := range []struct{ user, project, role string }{{lab.AdminUser, lab.AdminProject, "admin"}, {demo.DemoUser, "demo", "member"},
		{lab.AdminUser, "demo", "admin"}, {lab.AdminUser, "staging", "admin"}} {
		if _, err := l.EnsureProject(u.project); err != nil {
			t.Fatal(err)
		}
		if _, err := l.EnsureUser(u.user, "pw-"+u.user, u.project, u.role); err != nil {
			t.Fatal(err)
		}
	}
	clouds := filepath.Join(dir, "clouds.yaml")
	if err := demo.WriteClouds(clouds, l.AuthURL(), "pw-"+lab.AdminUser, "pw-"+demo.DemoUser); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := demo.Ensure(ctx, clouds, quiet); err != nil {
		t.Fatal(err)
	}
	disks := "an ephemeral disk and a volume"
	if o.Libvirt {
		disks = "a root disk, an ephemeral disk and a volume"
	}
	t.Logf("lab with the demo workload (2 guests, each with %s) up in %v", disks, time.Since(start).Round(time.Millisecond))
	hostDriver := ""
	if o.Libvirt {
		hostDriver = "libvirt"
	}
	admin, err := cloud.Connect(ctx, cloud.Config{Cloud: demo.AdminCloud, CloudsFile: clouds, PollInterval: 200 * time.Millisecond, HostDriver: hostDriver,
		RBDVolumes: o.RBDVolumes})
	if err != nil {
		t.Fatal(err)
	}
	d := &labDemo{t: t, ctx: ctx, dir: dir, lab: l, admin: admin, repoDir: filepath.Join(dir, "repo"), hostDir: guest.HostDir(dir, "h1"), lv: lvc, lockDir: lockDir}
	if o.Libvirt {
		d.hostDir = ""
	}
	pwFile := filepath.Join(dir, "repo-pw")
	if err := os.WriteFile(pwFile, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if d.be, err = local.Open(d.repoDir); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Init(ctx, d.be, repo.InitOptions{Password: "secret"}, repo.Options{}); err != nil {
		t.Fatal(err)
	}
	cephConf := ""
	if o.RBD != nil && o.RBDVolumes != "host" {
		cephConf = o.RBD.CephConf
	}
	d.acts = activities.New(activities.Config{
		Repos:   map[string]activities.RepoConfig{"main": {URL: "file://" + d.repoDir, PasswordFile: pwFile}},
		HostDir: d.hostDir, WorkDir: filepath.Join(dir, "work"),
		Log:        slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Discoverer: &activities.CloudDiscoverer{Client: admin}, CephConf: cephConf,
		Libvirt: lvc, LockDir: lockDir, Temporal: o.temporal,
		// The lab's instance directories and volume files.
		WriteRoots: []string{filepath.Join(dir, "hosts"), filepath.Join(dir, "volumes")},
	})
	t.Cleanup(func() { activities.Shutdown(context.Background(), d.acts) })
	return d
}

// agent opens a lab guest's agent: through libvirt when the lab runs on
// libvirt, else its socket.
func (d *labDemo) agent(ctx context.Context, instance string) (*guest.Client, error) {
	if d.lv != nil {
		return libvirt.OpenAgent(ctx, d.lv, instance, libvirt.AgentOptions{LockDir: d.lockDir, Guest: guest.Options{Owner: "test"}})
	}
	return guest.Dial(ctx, filepath.Join(guest.InstanceDir(d.hostDir, instance), guest.AgentSocketName), guest.Options{Owner: "test"})
}

// assertThawed fails the test if a guest of the lab is frozen.
func (d *labDemo) assertThawed(t *testing.T) {
	t.Helper()
	d.frozenGuests(t) // reports each frozen guest as an error
}

// labEnv is labDemo with a real Temporal dev server and in-process workers
// (control and host h1; data too with RBD).
type labEnv struct {
	*labDemo
	temporal client.Client
}

func newLabEnv(t *testing.T) *labEnv { return newLabEnvWith(t, labEnvOptions{}) }

func newLabEnvWith(t *testing.T, o labEnvOptions) *labEnv {
	c, _ := startTemporal(t)
	if o.RealSemaphore {
		o.temporal = c
	}
	d := startLabDemoWith(t, o)
	queues := []string{activities.ControlQueue, activities.HostQueue("h1")}
	if o.RBD != nil && o.RBDVolumes != "host" {
		queues = append(queues, activities.DataQueue)
	}
	startWorkersWith(t, c, d.acts, o.Interceptors, queues...)
	return &labEnv{labDemo: d, temporal: c}
}

// restoreAndCheck restores the backed-up disk manifest (size bytes) of a
// demo guest into out and checks it as the guest's data disk: e2fsck finds
// the file system clean, and every record file the writer keeps is intact
// with at least one good record. It removes out and returns the restore's
// figures and the number of record files.
func restoreAndCheck(ctx context.Context, t *testing.T, r *repo.Repository, manifest string, size int64, out string) (repo.RestoreStats, int) {
	t.Helper()
	defer os.Remove(out)
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	st, err := r.RestoreDisk(ctx, manifest, f, repo.RestoreOptions{})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if msg, err := exec.Command("e2fsck", "-fn", out).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn on restored %s: %v\n%s", manifest, err, msg)
	}
	reps, err := guestapp.CheckImage(ctx, out, guestapp.CheckOptions{})
	if err != nil {
		t.Fatalf("check records on restored %s: %v", manifest, err)
	}
	for _, rep := range reps {
		if !rep.OK() || rep.Good == 0 {
			t.Errorf("restored %s: %s", manifest, rep)
		}
	}
	return st, len(reps)
}
