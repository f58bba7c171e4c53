# wisp: the entry points a user types. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := all

TRIPLE      := x86_64-unknown-linux-gnu
TARGET_DIR  := $(CURDIR)/target
AGENT       := $(TARGET_DIR)/$(TRIPLE)/release/wisp-agent
BUILDER     := $(TARGET_DIR)/release/rootfs-builder
KERNEL      := $(TARGET_DIR)/kernel/bzImage
INITRD_DIR  := $(TARGET_DIR)/initrd
INITRD      := $(INITRD_DIR)/wisp.initrd
INITRD_BB   := $(INITRD_DIR)/wisp-busybox.initrd
FLOOR_INIT_DIR := $(TARGET_DIR)/floor-init
# The true floor's /init is its own cargo workspace (no std, no libc, panic=abort even in
# tests' dev builds): every cargo command for it runs in floor-init/ (its .cargo/config.toml).
FLOOR_CARGO := cd floor-init && cargo
CARGO_BIN   := $(HOME)/.cargo/bin
export PATH := $(CARGO_BIN):$(PATH)

# The agent is PID 1 of a VM with no libc: link everything statically, libseccomp
# included. Not position-independent: a static-pie relocates itself at every start,
# which cost a median 60 ms of boot under TCG (docs/design.md). --target keeps these
# flags off build scripts and proc macros.
# opt-level z for the agent only (its own target dir, so the host tools keep "s"):
# 3.25 -> 2.99 MB, inside the 3 MiB budget; the agent is I/O bound.
AGENT_ENV := RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" LIBSECCOMP_LINK_TYPE=static \
             LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu CARGO_PROFILE_RELEASE_OPT_LEVEL=z

APT_PACKAGES := qemu-system-x86 busybox-static linux-source-6.1 linux-image-cloud-amd64 \
  build-essential bc bison flex libelf-dev libssl-dev libseccomp-dev libcap-ng-dev pkg-config \
  patch cpio containerd runc docker.io podman containernetworking-plugins e2fsprogs erofs-utils xz-utils zstd lz4 protobuf-compiler

.PHONY: all help deps agent tools floor-init kernel initrd run test test-unit test-vm test-containerd test-shim test-fuzz fuzz fuzz-build install uninstall bench bench-boot load fmt clippy lint clean

all: agent tools floor-init kernel initrd ## Build every binary (release), the guest kernel and the initrds

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

deps: ## Install what building and testing need (apt-get + cargo install); idempotent
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "deps: Debian packages present"; fi
	@# Patched: third_party/vhost-device-vsock/README.md says why; a no-op once installed.
	@third_party/vhost-device-vsock/install.sh
	@command -v virtiofsd >/dev/null || { echo "deps: cargo install virtiofsd (~4 min)"; cargo install --locked --quiet virtiofsd@1.14.0; }
	@cargo afl --version 2>/dev/null | grep -q '^cargo-afl $(CARGO_AFL_VERSION) ' || { echo "deps: cargo install cargo-afl (~2 min, builds AFL++ with cc)"; cargo install --locked --quiet cargo-afl@$(CARGO_AFL_VERSION); }
	@# AFL++ is built per rustc version; "already built" is the idempotent case.
	@out=$$(cargo afl config --build 2>&1) || echo "$$out" | grep -q 'already built' || { echo "$$out" >&2; exit 1; }

agent: ## Build the static wisp-agent
	$(AGENT_ENV) cargo build --release --target $(TRIPLE) -p wisp-agent
	@if readelf -l $(AGENT) | grep -q INTERP; then echo "wisp-agent is not statically linked" >&2; exit 1; fi

# `wisp-runtime --version` prints the commit it was built from (runc's shape; docker info shows it).
GIT_COMMIT := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)

tools: ## Build the host binaries (shim, wisp CLI, wisp-runtime, rootfs-builder, test and bench drivers)
	WISP_COMMIT=$(GIT_COMMIT) cargo build --release -p rootfs-builder -p wisp-tests -p wisp-shim --bins

floor-init: ## Build the true boot floor's /init (a few KiB, no libc; the bench boots it)
	$(FLOOR_CARGO) build --release --target-dir $(FLOOR_INIT_DIR)
	@if readelf -l $(FLOOR_INIT_DIR)/release/wisp-floor-init | grep -q INTERP; then echo "wisp-floor-init is not statically linked" >&2; exit 1; fi

kernel: ## Build (or take from ~/.cache/wisp) the minimal guest kernel
	kernel/build.sh

initrd: agent tools ## Build the agent-only initrd and one with a busybox debug shell
	@mkdir -p $(INITRD_DIR)
	@# Uncompressed: the kernel copies a cpio faster than it inflates one, 40-50 ms of
	@# boot under TCG for 1.6 MiB more on disk (make bench, configs q35 and q35-gzip).
	$(BUILDER) initrd --agent $(AGENT) --compress none -o $(INITRD)
	$(BUILDER) initrd --agent $(AGENT) --busybox -o $(INITRD_BB)
	@# Debian's cloud kernel needs its virtio/vsock modules in the initrd (VM tests, bench).
	kver=$$(ls /lib/modules 2>/dev/null | grep -- '-cloud-amd64$$' | sort -V | tail -n 1); \
	if [ -n "$$kver" ]; then \
	  $(BUILDER) initrd --agent $(AGENT) --modules-from /lib/modules/$$kver -o $(INITRD_DIR)/wisp-cloud.initrd; \
	else echo "initrd: no Debian cloud kernel installed; skipping wisp-cloud.initrd (make deps)"; fi

run: deps all ## Boot the VM, print what the agent answered and the boot timeline
	$(TARGET_DIR)/release/wisp-run

test: deps all test-unit test-fuzz test-containerd test-vm test-shim ## Everything CI runs: unit, protocol, fuzz, containerd and VM tests

test-unit: ## Unit and protocol tests (no VM, unprivileged)
	cargo test --workspace
	$(FLOOR_CARGO) test --target-dir $(FLOOR_INIT_DIR)

test-containerd: tools ## ctr and docker tests against a private containerd / dockerd (root; runc bundles, imported and loaded images)
	cargo test -p wisp-tests --features containerd-tests -- --test-threads=1

test-vm: ## VM tests: boot QEMU with our kernel and initrd (needs `make all`)
	cargo test -p wisp-tests --features vm-tests -- --test-threads=1

test-shim: all ## The shim under a private containerd, VMs included: q35/pc, microvm, CRI pods, block volumes, a hostile guest, confinement, namespaces, a console flood, injected faults, a short load, wisp-runtime under dockerd and podman, sandboxes cloned from a VM template (root; ctr run --runtime io.containerd.wisp.v2)
	cargo test -p wisp-tests --features containerd-tests,vm-tests --test shim_ctr --test microvm_ctr --test cri_pods --test volumes_ctr --test rootfs_block_ctr --test identity_ctr --test confine_ctr --test hostile_guest_ctr --test console_ctr --test faults_ctr --test load_ctr --test runtime_docker --test runtime_docker_exec --test runtime_podman --test template_ctr -- --test-threads=1

# Fuzzing (docs/testing.md): AFL++ through cargo-afl on stable Rust, one target at a time on
# one core. The instrumented build has a target dir of its own (its RUSTFLAGS differ) and no
# LTO (the workspace's release profile is tuned for the agent's size, not for build time).
CARGO_AFL_VERSION := 0.18.2
FUZZ_TARGETS := agent_rpc oci_from_pb oci_to_pb shim_config direct_volume layer_apply kernel_modules
FUZZ_SECONDS ?= 60
FUZZ_TEST_SECONDS ?= 15
# agent_rpc is left out of the short run until it is seen to run under afl-fuzz with the
# fork-server fix (fuzz/src/agent_rpc.rs, detach_from_afl); its seeds replay in test-unit.
FUZZ_TEST_TARGETS ?= $(filter-out agent_rpc,$(FUZZ_TARGETS))
FUZZ_ENV := CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_STRIP=none \
            CARGO_PROFILE_RELEASE_DEBUG=line-tables-only

fuzz-build: ## Build the AFL++-instrumented fuzz targets (target/afl/release/)
	$(FUZZ_ENV) cargo afl build --release -p wisp-fuzz --features afl --bins --target-dir $(TARGET_DIR)/afl

# FUZZ_SECONDS per target (default 60), FUZZ_TARGETS to choose: `make fuzz FUZZ_SECONDS=300 FUZZ_TARGETS=agent_rpc`.
fuzz: fuzz-build ## Fuzz every target FUZZ_SECONDS s (one core each in turn); fails on a crash
	fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

test-fuzz: fuzz-build ## The short fuzz run of `make test`: FUZZ_TEST_SECONDS (15) s per target
	FUZZ_CRASHES_FAIL=0 fuzz/run.sh $(FUZZ_TEST_SECONDS) $(FUZZ_TEST_TARGETS)

PREFIX ?= /usr/local
install: all ## Put containerd-shim-wisp-v2, wisp, wisp-runtime, virtiofsd and vhost-device-vsock in $(PREFIX)/bin, the kernel and initrd in $(PREFIX)/share/wisp
	install -D -m 0755 $(TARGET_DIR)/release/containerd-shim-wisp-v2 $(DESTDIR)$(PREFIX)/bin/containerd-shim-wisp-v2
	install -D -m 0755 $(TARGET_DIR)/release/wisp $(DESTDIR)$(PREFIX)/bin/wisp
	install -D -m 0755 $(TARGET_DIR)/release/wisp-runtime $(DESTDIR)$(PREFIX)/bin/wisp-runtime
	@# The helpers `make deps` built with cargo install: the shim's configured default paths.
	@for helper in virtiofsd vhost-device-vsock; do 	  if [ -x $(CARGO_BIN)/$$helper ]; then install -D -m 0755 $(CARGO_BIN)/$$helper $(DESTDIR)$(PREFIX)/bin/$$helper; 	  else echo "install: $(CARGO_BIN)/$$helper missing (make deps); the shim falls back without it"; fi; 	done
	install -D -m 0644 $(KERNEL) $(DESTDIR)$(PREFIX)/share/wisp/bzImage
	install -D -m 0644 $(INITRD) $(DESTDIR)$(PREFIX)/share/wisp/wisp.initrd
	@if [ -f $(TARGET_DIR)/kernel/vmlinux ]; then install -D -m 0644 $(TARGET_DIR)/kernel/vmlinux $(DESTDIR)$(PREFIX)/share/wisp/vmlinux; fi
	@echo "installed: ctr run --runtime io.containerd.wisp.v2 ... (check the host with: wisp check)"

uninstall: ## Remove what `make install` put in $(PREFIX)
	rm -f $(DESTDIR)$(PREFIX)/bin/containerd-shim-wisp-v2 $(DESTDIR)$(PREFIX)/bin/wisp $(DESTDIR)$(PREFIX)/bin/wisp-runtime
	rm -f $(DESTDIR)$(PREFIX)/bin/virtiofsd $(DESTDIR)$(PREFIX)/bin/vhost-device-vsock
	rm -rf $(DESTDIR)$(PREFIX)/share/wisp

# BENCH_ARGS: e.g. `make bench BENCH_ARGS=--quick` or `BENCH_ARGS="--runs 10 --all"`.
bench bench-boot: deps all ## Boot-time, size and container benchmarks: tables, target/bench/boot.{json,svg}
	$(TARGET_DIR)/release/wisp bench boot $(BENCH_ARGS)
	$(TARGET_DIR)/release/wisp-bench-containers
	$(TARGET_DIR)/release/wisp-bench-ctr
	$(TARGET_DIR)/release/wisp-bench-ctr --template
	$(TARGET_DIR)/release/wisp-bench-runtimes

LOAD_AT_ONCE ?= 20
LOAD_CYCLES ?= 200
load: all ## The full load: LOAD_AT_ONCE (20) sandboxes at once, LOAD_CYCLES (200) ctr run cycles; leak counts and timings
	WISP_LOAD_AT_ONCE=$(LOAD_AT_ONCE) WISP_LOAD_CYCLES=$(LOAD_CYCLES) cargo test -p wisp-tests --features containerd-tests,vm-tests --test load_ctr -- --test-threads=1 --nocapture

fmt: ## Format the code
	cargo fmt --all
	$(FLOOR_CARGO) fmt --all

clippy lint: ## Lint as CI does
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features -- -D warnings
	$(FLOOR_CARGO) fmt --all -- --check
	$(FLOOR_CARGO) clippy --all-targets --target-dir $(FLOOR_INIT_DIR) -- -D warnings

clean: ## Remove build outputs (the kernel cache in ~/.cache/wisp stays)
	cargo clean
