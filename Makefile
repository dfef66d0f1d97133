# Raksha — build, test, demo, bench, lint.
#
#   make demo    builds everything and runs the demo (installs what it needs)
#   make test    installs what the tests need and runs every test, printing phase times
#   make bench   Raksha side by side with restic and kopia (bench/RESULTS.md)
#   make lint    gofmt, go vet, staticcheck
#   make openstack-up / openstack-down
#                a real all-in-one OpenStack (Debian's Zed) on 127.0.0.1, started
#                and stopped by scripts/openstack-up.sh / openstack-down.sh
#   make openstack-contract
#                the cloud adapter's contract tests against the lab and that
#                real OpenStack (brought up first if it is not)
#
# Debian packages are installed with apt-get (as root) when missing; Go tools are
# installed at pinned versions into ./bin.

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

STATICCHECK_VERSION := v0.8.2
# The temporal CLI (its dev server and Web UI); newer versions do not build
# from the module proxy (see shared notes). A cold build takes ~7 minutes.
TEMPORAL_CLI_VERSION := v1.5.1

# What the tests and the demo need from Debian: a throwaway Ceph cluster with
# radosgw for the S3/Swift backends, librbd/librados for the Ceph build, QEMU
# with the guest agent and busybox for the lab guests, QEMU's rbd driver
# (qemu-block-extra) for the lab's volumes on RBD, GNU time for peak-RSS
# figures, e2fsprogs for ext4 images, fdisk (sfdisk) for partitioned test images,
# fuse3 (fusermount3) for 'raksha mount', xfsprogs (mkfs.xfs) for the XFS images
# that 'raksha restore files' and 'raksha mount' loop-mount (root, loop devices),
# libvirt (the daemon with its QEMU driver, and virsh) for the libvirt host
# driver, as on a Nova compute node. The file-restore appliance
# (scripts/build-appliance.sh) needs qemu-system-x86 and busybox-static, already
# in APT_QEMU. The deployment files are checked offline (no Docker engine runs
# here): docker-compose (Debian's, 1.29) validates docker-compose.yml, systemd's
# systemd-analyze verifies the units in deploy/systemd.
APT_LIBVIRT := libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
APT_QEMU := qemu-system-x86 qemu-utils qemu-guest-agent busybox-static e2fsprogs
APT_DEPLOY := docker-compose systemd
# Debian's headless Chromium for the Web UI test (integration/webui_test.go).
APT_BROWSER := chromium
APT_TEST := ceph-mon ceph-osd ceph-common radosgw librbd-dev librados-dev qemu-block-extra uuid-runtime time curl python3-openstackclient fdisk fuse3 xfsprogs $(APT_LIBVIRT) $(APT_QEMU) $(APT_DEPLOY) $(APT_BROWSER)
APT_DEMO := $(APT_QEMU) $(APT_LIBVIRT)

# Build with Ceph support when librbd is there (test-deps installs it; '=' so
# that it is looked up when used, after test-deps ran).
CEPH_TAGS = $(shell test -e /usr/include/rbd/librbd.h && echo "-tags ceph,pacific")

.PHONY: all build demo test test-deps demo-deps bench lint fuzz chaos clean appliance deploy-check webui-shots openstack-up openstack-down openstack-contract acceptance

all: build

build:
	$(GO) build $(CEPH_TAGS) -o $(BIN)/raksha ./starter
	$(GO) build $(CEPH_TAGS) -o $(BIN)/raksha-worker ./worker
	$(GO) build -o $(BIN)/raksha-api ./apiserver

# What the file-restore appliance costs beside a loop mount (a measurement,
# not a check: a few minutes under TCG; figures in DESIGN.md).
appliance-cost: test-deps
	$(GO) test -tags appliancecost -count=1 -timeout 30m -run '^TestCost$$' -v ./internal/appliance/

# The file-restore appliance (kernel + initramfs) for 'raksha restore files';
# prints dir=DIR for --appliance or RAKSHA_APPLIANCE.
appliance: demo-deps
	scripts/build-appliance.sh

# apt-install PACKAGES: install the Debian packages that are missing.
define apt-install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "need Debian packages:$$missing (run make as root, or apt-get install them)" >&2; exit 1; fi; \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

test-deps:
	$(call apt-install,$(APT_TEST))

demo-deps:
	$(call apt-install,$(APT_DEMO))

$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

# go install keeps the CLI's dependencies out of the project's go.mod.
$(BIN)/temporal:
	GOBIN=$(BIN) $(GO) install -ldflags "-s -w" github.com/temporalio/cli/cmd/temporal@$(TEMPORAL_CLI_VERSION)

demo: demo-deps build $(BIN)/temporal
	scripts/demo.sh

test: test-deps
	@scripts/phase.sh "temporal CLI $(TEMPORAL_CLI_VERSION) (dev server for the integration tests)" $(MAKE) --no-print-directory $(BIN)/temporal
	@scripts/phase.sh "build (plain and with Ceph)" $(MAKE) --no-print-directory build-all
	@scripts/phase.sh "libvirtd (the system instance, as on a compute node; no systemd here)" env LIBVIRTD_OWNER=$(CURDIR) scripts/libvirtd-up.sh
	@scripts/phase.sh "go vet" $(GO) vet ./...
	@scripts/phase.sh "deployment files (docker-compose config, Dockerfile lint, systemd-analyze verify and security, agreement with raksha-worker and raksha, the compose data worker against a dev server)" $(MAKE) --no-print-directory deploy-check
	@scripts/phase.sh "go test (unit; S3, Swift and RBD on a throwaway Ceph; QEMU guests)" $(GO) test $(CEPH_TAGS) -count=1 -timeout 20m $$($(GO) list ./... | grep -v -e /integration -e '/deploy$$')
	@scripts/phase.sh "integration (Temporal dev server, QEMU, lab cloud; one package at a time; CHAOS_ONLY's scenarios are make chaos's)" $(GO) test $(CEPH_TAGS) -count=1 -p 1 -timeout 55m -skip '^($(CHAOS_ONLY))$$' ./integration/...
	@scripts/phase.sh "fuzz targets over their seed corpus (parsers of untrusted bytes; make fuzz fuzzes)" $(GO) test -count=1 -run='^Fuzz' $(FUZZ_PKGS)
	@scripts/phase.sh "CLI end to end (disk-image demo)" scripts/demo-disk.sh --quiet
	@scripts/phase.sh "make demo (Temporal, lab cloud, workers; DEMO_EXIT=1)" env DEMO_EXIT=1 DEMO_TEMPORAL_PORT=17233 DEMO_UI_PORT=18233 $(MAKE) --no-print-directory demo
	@scripts/phase.sh "libvirtd stopped (if make test started it)" env LIBVIRTD_OWNER=$(CURDIR) scripts/libvirtd-down.sh

.PHONY: build-all
build-all:
	$(GO) build ./...
	$(GO) build $(CEPH_TAGS) ./...

# docker-compose.yml, the Dockerfile and deploy/systemd, checked offline
# (never started here: no Docker engine, no image pulls); the TestDeploy
# tests of worker and starter check them against the real binaries' flags,
# configuration keys and variables, and run the compose data service's
# worker as a process against a Temporal dev server. Needs APT_DEPLOY
# (test-deps).
# The Web UI test, saving its screenshots into docs/ (the README shows one).
webui-shots: test-deps $(BIN)/temporal
	RAKSHA_WEBUI_SHOTS=$(CURDIR)/docs $(GO) test -count=1 -timeout 15m -run '^TestWebUIShowsRakshaWorkflows$$' ./integration/

deploy-check: $(BIN)/temporal
	$(GO) test -count=1 -run '^TestDeploy' ./deploy ./worker ./starter ./apiserver

# Timed fuzzing stays out of make test: the engine can overrun -fuzztime
# while minimizing a new input and then reports "context deadline exceeded".
# One target per line: -fuzz must match exactly one target of a package.
# A new input is minimized for at most FUZZMINIMIZETIME (the default, 60s,
# is spent on every new disk image FuzzExt4 finds, a few KiB each).
FUZZTIME ?= 60s
FUZZMINIMIZETIME ?= 10s
FUZZ_PKGS = ./internal/repo/ ./internal/host/libvirt/ ./internal/filerestore/ ./internal/nbd/ ./internal/guest/ ./internal/cloud/ ./policies/
FUZZ = $(GO) test -run=NONE -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZETIME)
fuzz:
	$(FUZZ) -fuzz='^FuzzDecodePage$$' ./internal/repo/
	$(FUZZ) -fuzz='^FuzzLoadManifest$$' ./internal/repo/
	$(FUZZ) -fuzz='^FuzzParseDisks$$' ./internal/host/libvirt/
	$(FUZZ) -fuzz='^FuzzExt4$$' ./internal/filerestore/
	$(FUZZ) -fuzz='^FuzzReadJournal$$' ./internal/filerestore/
	$(FUZZ) -fuzz='^FuzzPartitionTable$$' ./internal/filerestore/
	$(FUZZ) -fuzz='^FuzzConn$$' ./internal/nbd/
	$(FUZZ) -fuzz='^FuzzAgentReplies$$' ./internal/guest/
	$(FUZZ) -fuzz='^FuzzCaptureRecord$$' ./internal/cloud/
	$(FUZZ) -fuzz='^FuzzParseLocator$$' ./internal/cloud/
	$(FUZZ) -fuzz='^FuzzParse$$' ./policies/
	$(FUZZ) -fuzz='^FuzzParseDuration$$' ./policies/

# The chaos suite (tests named TestChaos*): make test runs each scenario with
# its default (small) number of rounds; make chaos runs them with
# CHAOS_ROUNDS rounds each and writes the report integration/CHAOS.md.
CHAOS_ROUNDS ?= 5
# The slowest scenarios, which make test leaves to make chaos to keep CI
# under 50 minutes on 2 cores (each boots its own lab and waits out a
# fault): the load (20 guests), Keystone tokens expiring mid-backup, an
# activity's completion lost with the server, the restore worker killed, and
# the Temporal server killed during a clone's hooks. make test still runs
# every other scenario: the Temporal server, the control, data and host
# workers killed (host on QEMU and on libvirt, mid-copy and while frozen),
# the server killed during a restore's writes, and the internal packages'
# ones (ENOSPC, S3 faults, gc interleavings).
CHAOS_ONLY = TestChaosLoad|TestChaosKeystoneTokenExpires|TestChaosActivityCompletionLostWithServer|TestChaosRestoreWorkerKilled|TestChaosTemporalServerKilledDuringCloneHooks
chaos: test-deps build $(BIN)/temporal
	@env LIBVIRTD_OWNER=$(CURDIR) scripts/libvirtd-up.sh
	rm -f $(CURDIR)/.chaos.jsonl
	RAKSHA_CHAOS_REPORT=$(CURDIR)/.chaos.jsonl RAKSHA_CHAOS_ROUNDS=$(CHAOS_ROUNDS) \
	  $(GO) test $(CEPH_TAGS) -count=1 -p 1 -timeout 90m -run '^TestChaos' ./internal/... ./integration/...
	$(GO) run ./internal/testenv/chaos/report $(CURDIR)/.chaos.jsonl "$$(nproc) cores, $$(awk '/MemTotal/{printf "%.0f GiB", $$2/1048576}' /proc/meminfo), $$(uname -r)" > integration/CHAOS.md
	@echo "chaos report: integration/CHAOS.md"

# bench/libvirt.sh: the libvirt pull-export path beside the file path of the
# same image (bench/RESULTS-libvirt.md); BENCH_LIBVIRT=0 skips it.
BENCH_LIBVIRT ?= 1
bench: test-deps build
	bench/run.sh
	if [ "$(BENCH_LIBVIRT)" = 1 ]; then bench/libvirt.sh; fi

# The real OpenStack tier (issue 14): scripts/openstack-up.sh installs the
# Debian packages it needs (apt-get, as root), is idempotent, and prints
# where its clouds.yaml is (OPENSTACK_DIR, default /var/tmp/raksha-openstack).
# Heavy (about 3.5 GiB of services): stop it with make openstack-down.
OPENSTACK_DIR ?= /var/tmp/raksha-openstack
export OPENSTACK_DIR
openstack-up:
	scripts/openstack-up.sh

openstack-down:
	scripts/openstack-down.sh

# make acceptance: the acceptance tests of issue 14 (integration/openstack_test.go,
# integration/acceptance_test.go; build tags openstack and ceph) against the real
# OpenStack, brought up first when it is not (openstack-up returns at once when it
# is). Not part of make test: see the README for how long it takes.
acceptance: openstack-up $(BIN)/temporal
	RAKSHA_OPENSTACK_CLOUDS=$(OPENSTACK_DIR)/clouds.yaml $(GO) test -tags openstack,ceph,pacific -count=1 -p 1 -timeout 45m \
	  -run '^(TestOpenStackBackupAndIncremental|TestAcceptance)$$' -v ./integration/

# RAKSHA_OPENSTACK_CLOUDS names the clouds.yaml the contract suites run
# against besides the lab (internal/lab/contract_*_test.go).
openstack-contract: openstack-up
	RAKSHA_OPENSTACK_CLOUDS=$(OPENSTACK_DIR)/clouds.yaml $(GO) test -count=1 -timeout 20m -run '^TestAPI(Contract|Behaviour)' -v ./internal/lab/
	RAKSHA_OPENSTACK_CLOUDS=$(OPENSTACK_DIR)/clouds.yaml $(GO) test -tags openstack -count=1 -timeout 10m -run '^TestTenantAPIOnRealKeystone$$' -v ./api/

lint: $(BIN)/staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet $(CEPH_TAGS) ./...
	# the real OpenStack tier's tests (make openstack-contract, the acceptance
	# tests) compile only with their tags: vet them so they do not rot
	$(GO) vet -tags openstack,ceph,pacific ./integration/ ./internal/lab/ ./api/
	$(GO) vet -tags appliancecost ./internal/appliance/
	# builds without cgo write zstd with the pure-Go encoder (internal/repo/zstdenc_nocgo.go)
	CGO_ENABLED=0 $(GO) vet ./internal/repo/
	$(BIN)/staticcheck ./...
	$(GO) mod tidy -diff

clean:
	rm -rf $(BIN)/raksha
