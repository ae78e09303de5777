#!/usr/bin/env bash
# cross.sh - eddy for ARM gateways, built on a Debian 12 x86_64 machine without rustup targets.
#
#   cross/cross.sh setup                 # once, as root: apt (Debian's rustc-web 1.96, its arm64
#                                        # std and source, cross gcc, qemu-user-static), and for
#                                        # musl zig (PyPI ziglang, a venv) + cargo-zigbuild; ~5 min
#   cross/cross.sh build TARGET          # release build: target/cross/TARGET/release/eddy
#   cross/cross.sh test  [TARGET]        # the core suite under qemu: cargo test -p eddy --lib
#                                        # (engine, storage, ingest, config) and -p eddy-sensors
#                                        # (parsers, framing, sources); default aarch64-unknown-linux-gnu
#   cross/cross.sh deb   TARGET          # .deb (arm64 / armhf) from the build: target/cross/debian/
#   cross/cross.sh binfmt                # as root: qemu-user in binfmt_misc (F flag), for deb-test
#   cross/cross.sh deb-test TARGET       # as root: the .deb of the build under a real systemd
#                                        # (scripts/nspawn-test.sh, ARM binary through qemu-user):
#                                        # install, READY, SIGKILL + restart, data, upgrade, purge
#   cross/cross.sh size  TARGET          # stripped size of the built binary, bytes
#   cross/cross.sh smoke TARGET          # the built binary under qemu: --version, check-config,
#                                        # a short `eddy run` of the default configuration
#   cross/cross.sh env   TARGET          # the exports, for your own cargo commands
#
# TARGET: aarch64-unknown-linux-gnu (Raspberry Pi 3/4/5, 64-bit OS) or
#         armv7-unknown-linux-gnueabihf (Raspberry Pi 2/3/4, 32-bit Raspberry Pi OS), or
#         static (musl, no libc needed on the device): aarch64-unknown-linux-musl,
#         armv7-unknown-linux-musleabihf, x86_64-unknown-linux-musl (x86 gateways; runs here
#         without qemu), or x86_64-unknown-linux-gnu: the x86 gateway build against glibc, made
#         like the ARM ones (std built without its symbolizer, no unwind tables), where a plain
#         `cargo build --release` links rustup's prebuilt std. deb and deb-test take the gnu
#         targets only.
#
# How: rustup cannot download targets here, so the compiler is Debian's rustc-web/cargo-web
# (/usr/bin/rustc, /usr/bin/cargo; rustup's toolchain stays first on PATH and is not used).
# aarch64's std is Debian's prebuilt libstd-rust-web-dev:arm64; armv7's std is built from
# rust-web-src with -Zbuild-std (RUSTC_BOOTSTRAP=1), because the armhf std package could not be
# installed from the mirror (see ../../shared/cross/NOTES.md, where this recipe was verified).
# Linkers: the Debian cross gcc. musl: std built with -Zbuild-std too, zig (PyPI `ziglang`)
# links and compiles ring's C through cargo-zigbuild, rustc's self-contained crt objects off.
# qemu-user-static runs the test binaries (cargo's runner).
# Artifacts go to target/cross (CARGO_TARGET_DIR), apart from rustup's 1.95 builds.
# The release profile is the workspace's ([profile.release]: opt-level "s", cold crates "z", fat LTO,
# one codegen unit, strip, panic=abort).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'cross: %s\n' "$*" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/cross}
XC_HOME=${XC_HOME:-/opt/xc-cross}            # zig's venv and cargo-zigbuild (musl)
ZIGLANG_VERSION=0.17.1 ZIGBUILD_VERSION=0.24.1

setup() {
  [ "$(id -u)" = 0 ] || die "setup needs root (apt-get, dpkg --add-architecture)"
  export DEBIAN_FRONTEND=noninteractive
  dpkg --add-architecture arm64
  apt-get update || echo "cross: apt-get update reported errors; checking what is needed anyway" >&2
  local v pol
  v=$(apt-cache policy rustc-web | awk '/Candidate:/ {print $2}')
  [ -n "$v" ] && [ "$v" != "(none)" ] || die "no rustc-web candidate (is bookworm-security in the apt sources?)"
  pol=$(apt-cache policy libstd-rust-web-dev:arm64)
  grep -qF "$v" <<<"$pol" || die "libstd-rust-web-dev:arm64=$v is not in the arm64 index"
  # rustc-web, its arm64 std and its source must be the very same version.
  apt-get install -y --no-install-recommends \
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross \
    qemu-user-static "rustc-web=$v" "cargo-web=$v" "rust-web-src=$v" "libstd-rust-web-dev:arm64=$v" </dev/null
  /usr/bin/rustc --version
  # musl: zig as C compiler and linker (PyPI wheel, no apt package in bookworm) through
  # cargo-zigbuild, both pinned to the versions the recipe was verified with.
  mkdir -p "$XC_HOME"
  [ -x "$XC_HOME/venv/bin/python3" ] || python3 -m venv "$XC_HOME/venv"
  "$XC_HOME/venv/bin/pip" install -q "ziglang==$ZIGLANG_VERSION"
  echo "zig $("$XC_HOME/venv/bin/python3" -m ziglang version)"
  if [ "$("$XC_HOME/bin/cargo-zigbuild" --version 2>/dev/null || true)" != "cargo-zigbuild $ZIGBUILD_VERSION" ]; then
    # rustup's cargo builds the tool, outside the project (its rust-toolchain.toml).
    (cd / && CARGO_TARGET_DIR=$XC_HOME/build CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} \
      nice -n 10 cargo install --locked "cargo-zigbuild@$ZIGBUILD_VERSION" --root "$XC_HOME")
    rm -rf "$XC_HOME/build"
  fi
  "$XC_HOME/bin/cargo-zigbuild" --version
}

# Exports the compiler, linker, runner and std settings for $1.
xc_env() {
  local t=$1 T cc="" q sys="" ld="" rv
  T=$(printf '%s' "$t" | tr 'a-z-' 'A-Z_')
  XC_ZIG=0
  case $t in
    aarch64-unknown-linux-gnu) cc=aarch64-linux-gnu-gcc; q=qemu-aarch64-static; sys=/usr/aarch64-linux-gnu; ld=/lib/ld-linux-aarch64.so.1 ;;
    armv7-unknown-linux-gnueabihf) cc=arm-linux-gnueabihf-gcc; q=qemu-arm-static; sys=/usr/arm-linux-gnueabihf; ld=/lib/ld-linux-armhf.so.3 ;;
    aarch64-unknown-linux-musl) q=qemu-aarch64-static; XC_ZIG=1 ;;
    armv7-unknown-linux-musleabihf) q=qemu-arm-static; XC_ZIG=1 ;;
    # x86 gateways: runs here natively, no emulator.
    x86_64-unknown-linux-musl) q=""; XC_ZIG=1 ;;
    x86_64-unknown-linux-gnu) cc=gcc; q="" ;;
    *) die "unsupported target $t (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf, aarch64-unknown-linux-musl, armv7-unknown-linux-musleabihf, x86_64-unknown-linux-musl, x86_64-unknown-linux-gnu)" ;;
  esac
  [ -x /usr/bin/rustc ] || die "Debian's rustc-web is missing: run cross/cross.sh setup"
  [ -z "$q" ] || command -v "$q" >/dev/null || die "$q is missing: run cross/cross.sh setup"
  export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc CARGO=/usr/bin/cargo
  # armv7-musl is built in Thumb-2 (T32), std too, for build and test alike (the tests must run
  # the code that ships): 4.3 MB instead of 5.6 MB in A32 (BENCHMARKS.md, session 5). It is the
  # instruction set Debian's own armhf packages are compiled in: the port requires Thumb-2
  # (wiki.debian.org/ArmHardFloatPort) and its gcc is configured --with-mode=thumb
  # (`arm-linux-gnueabihf-gcc -Q --help=target` shows -mthumb enabled). Every ARMv7-A core
  # runs it. rustc calls the flag unstable and warns once per crate; the compiler is pinned
  # (rustc-web 1.96). The gnu armv7 build stays A32: it was built and smoked in Thumb-2
  # (4,389,752 bytes), but its core suite has not run in Thumb-2 yet.
  # XC_ARMV7_THUMB=0 builds A32, to compare.
  XC_MODE_RUSTFLAGS=""
  case $t in
    armv7-unknown-linux-musleabihf) [ "${XC_ARMV7_THUMB:-1}" = 0 ] || XC_MODE_RUSTFLAGS="-C target-feature=+thumb-mode" ;;
  esac
  if [ "$XC_ZIG" = 1 ]; then
    # Static binaries, so no sysroot for qemu. zig (through cargo-zigbuild) compiles ring's C
    # and links against its own musl; rustc must not add its self-contained crt objects
    # (crt1.o, ...), which only rustup's rust-std ships.
    [ -x "$XC_HOME/bin/cargo-zigbuild" ] || die "cargo-zigbuild is missing: run cross/cross.sh setup"
    export CARGO_ZIGBUILD_PYTHON_PATH=$XC_HOME/venv/bin/python3
    # XC_EXTRA_RUSTFLAGS: the release build's own flags (see `build`); std gets them too.
    [ -z "$q" ] || export "CARGO_TARGET_${T}_RUNNER=$q"
    export "CARGO_TARGET_${T}_RUSTFLAGS=-C link-self-contained=no${XC_MODE_RUSTFLAGS:+ $XC_MODE_RUSTFLAGS}${XC_EXTRA_RUSTFLAGS:+ $XC_EXTRA_RUSTFLAGS}"
  else
    command -v "$cc" >/dev/null || die "$cc is missing: run cross/cross.sh setup"
    export "CARGO_TARGET_${T}_LINKER=$cc" "CC_${t//-/_}=$cc" "AR_${t//-/_}=${cc%gcc}ar"
    # XC_EXTRA_RUSTFLAGS: the release build's own flags (see `build`); Debian's prebuilt std
    # keeps its own.
    if [ -n "${XC_MODE_RUSTFLAGS}${XC_EXTRA_RUSTFLAGS:-}" ]; then
      export "CARGO_TARGET_${T}_RUSTFLAGS=${XC_MODE_RUSTFLAGS}${XC_MODE_RUSTFLAGS:+${XC_EXTRA_RUSTFLAGS:+ }}${XC_EXTRA_RUSTFLAGS:-}"
    fi
    # qemu must see one consistent glibc: the multiarch one when installed (libc6:arm64 comes
    # with the arm64 std; with -L the cross ld.so mixes two glibc builds and hangs in the
    # first pthread_create), else the cross sysroot. x86_64 runs natively.
    if [ -z "$q" ]; then :
    elif [ -e "$ld" ]; then export "CARGO_TARGET_${T}_RUNNER=$q"; else export "CARGO_TARGET_${T}_RUNNER=$q -L $sys"; fi
  fi
  rv=CARGO_TARGET_${T}_RUNNER
  XC_RUNNER_CMD=${!rv:-}
  BUILD_STD=()
  # x86_64-gnu: Debian ships its std prebuilt (the host's), built with unwind tables and the
  # symbolizer; the device build builds its own, as for the other targets without one.
  if [ ! -d "/usr/lib/rustlib/$t/lib" ] || [ "$t" = x86_64-unknown-linux-gnu ]; then
    export RUSTC_BOOTSTRAP=1
    # test too, so that build and test share one std and all dependencies.
    BUILD_STD=(-Zbuild-std=std,panic_abort,test)
    # XC_STD_FEATURES (set by `build` for musl): std's cargo features; unset, cargo's default
    # (panic-unwind, backtrace).
    if [ -n "${XC_STD_FEATURES+x}" ]; then BUILD_STD+=("-Zbuild-std-features=$XC_STD_FEATURES"); fi
  fi
}

xc_cargo() { # xc_cargo SUBCOMMAND TARGET [args]
  local sub=$1 t=$2; shift 2
  xc_env "$t"
  if [ "$XC_ZIG" = 1 ]; then
    # `cargo zigbuild test` is not accepted: the binary takes the subcommand itself, and runs
    # $CARGO (Debian's, set above), not rustup's first cargo on PATH.
    [ "$sub" = build ] && sub=zigbuild
    "$XC_HOME/bin/cargo-zigbuild" "$sub" --target "$t" ${BUILD_STD[@]+"${BUILD_STD[@]}"} "$@"
  else
    /usr/bin/cargo "$sub" --target "$t" ${BUILD_STD[@]+"${BUILD_STD[@]}"} "$@"
  fi
}

# binfmt_misc: lets the kernel run ARM binaries through qemu-user-static, so that dpkg's
# maintainer scripts and systemd in a container can start the ARM eddy. The F flag makes the
# kernel open the interpreter now, so it need not exist inside the container.
binfmt() {
  [ "$(id -u)" = 0 ] || die "binfmt needs root"
  local dir=/proc/sys/fs/binfmt_misc name spec magic mask interp flags
  [ -e "$dir/register" ] || mount -t binfmt_misc binfmt_misc "$dir" \
    || die "cannot mount binfmt_misc (a container without it? run the test on a VM or host)"
  for name in qemu-aarch64 qemu-arm; do
    spec=/usr/share/binfmts/$name
    [ -f "$spec" ] || die "$spec is missing: run cross/cross.sh setup (qemu-user-static)"
    if grep -q '^flags: .*F' "$dir/$name" 2>/dev/null; then echo "$name: registered"; continue; fi
    [ -e "$dir/$name" ] && echo -1 >"$dir/$name"    # registered without F: replace it
    magic=$(awk '$1 == "magic" {print $2}' "$spec")
    mask=$(awk '$1 == "mask" {print $2}' "$spec")
    interp=$(awk '$1 == "interpreter" {print $2}' "$spec")
    flags=F; grep -q '^preserve yes' "$spec" && flags=${flags}P
    # The spec writes the bytes as \xNN, which the kernel's register format takes as is.
    printf '%s' ":$name:M::$magic:$mask:$interp:$flags" >"$dir/register"
    echo "$name: registered ($interp, flags $flags)"
  done
}

no_musl() {
  case $1 in *-musl*) die "deb and deb-test take the gnu targets: $1 is a static binary, copy it as is" ;; esac
}

deb_arch() {
  case $1 in aarch64-*) echo arm64 ;; armv7-*) echo armhf ;; x86_64-*) echo amd64 ;; *) die "no Debian architecture for $1" ;; esac
}

# smoke TARGET: the release binary of TARGET under qemu-user: --version, check-config of the
# default configuration, then `eddy run` on it (ten simulated thermostats, results on the
# console) for a few seconds in a throwaway directory, stopped by SIGTERM; it must drain and
# exit 0 after printing at least one window result.
smoke() {
  local t=$1 bin d pid rc=0 secs=${EDDY_SMOKE_SECS:-25}
  xc_env "$t"
  bin=$CARGO_TARGET_DIR/$t/release/eddy
  [ -x "$bin" ] || die "build it first: $0 build $t"
  $XC_RUNNER_CMD "$bin" --version
  d=$(mktemp -d /tmp/eddy-smoke.XXXXXX)
  $XC_RUNNER_CMD "$bin" print-default-config > "$d/eddy.toml"
  $XC_RUNNER_CMD "$bin" check-config --config "$d/eddy.toml"
  ( cd "$d" && exec $XC_RUNNER_CMD "$bin" run --config "$d/eddy.toml" ) > "$d/out" 2> "$d/err" &
  pid=$!
  sleep "$secs"
  kill -TERM "$pid"; wait "$pid" || rc=$?
  echo "--- stdout (last lines)"; tail -n 15 "$d/out"; echo "--- stderr (last lines)"; tail -n 5 "$d/err"
  [ "$rc" = 0 ] || die "eddy run exited $rc after SIGTERM ($d)"
  grep -q '^type=' "$d/out" || die "eddy run printed no result in ${secs}s ($d)"
  grep -q 'eddy stopped cleanly' "$d/err" || die "eddy run did not drain and stop cleanly ($d)"
  echo "smoke $t: ok (results: $(grep -c '^type=batch' "$d/out") batches, $(grep -c '^type=window' "$d/out") windows; exit 0 after SIGTERM)"
  rm -rf "$d"
}

cmd=${1:-}; shift || true
case $cmd in
  setup) setup ;;
  build)
    [ $# -ge 1 ] || die "usage: $0 build TARGET"
    t=$1; shift
    # No unwind tables (.eh_frame, ~565 KB of aarch64-musl; aarch64-gnu: eddy's code only,
    # Debian's prebuilt std keeps its own; every target that builds std loses std's too). The release profile aborts on panic, so nothing unwinds; a
    # panic still prints its message and location, only a backtrace's frames are lost. Build
    # only: the test harness unwinds (a failing test is reported and the run goes on) and a
    # test binary's size does not matter. XC_EXTRA_RUSTFLAGS= (empty) keeps them.
    # musl: std without its `backtrace` feature (-Zbuild-std-features= with none; panic-unwind
    # is not needed with panic=abort either): no symbolizer (addr2line, gimli, object,
    # miniz_oxide; aarch64: -113,480 bytes, 2.2 %). Without unwind tables a backtrace had no
    # frames anyway; a panic still prints its message and location (std's hook and eddy's,
    # daemon/src/ops/panic.rs), only RUST_BACKTRACE prints nothing more. Nothing else in std
    # depends on the feature (but for the two one-call wrappers around a thread's start, which
    # may now be inlined). XC_STD_FEATURES=panic-unwind,backtrace,default: cargo's default.
    # x86_64-gnu also packs its relative relocations (DT_RELR, `-z pack-relative-relocs`:
    # .rela.dyn 252,120 -> ~6,000 bytes of a PIE binary, ASLR kept). glibc 2.36 (Debian 12,
    # Ubuntu 24.04) loads it; an older one refuses it at start (GLIBC_ABI_DT_RELR not found):
    # there, the static x86_64-unknown-linux-musl build.
    xc_default_flags="-C force-unwind-tables=no"
    [ "$t" = x86_64-unknown-linux-gnu ] && xc_default_flags="$xc_default_flags -C link-arg=-Wl,-z,pack-relative-relocs"
    XC_EXTRA_RUSTFLAGS=${XC_EXTRA_RUSTFLAGS-$xc_default_flags}
    case $t in
      *-musl*|x86_64-unknown-linux-gnu) XC_STD_FEATURES=${XC_STD_FEATURES-} ;;
    esac
    xc_cargo build "$t" --release --locked -p eddy --bin eddy "$@"
    bin=$CARGO_TARGET_DIR/$t/release/eddy
    file -L "$bin"
    echo "size: $(stat -c %s "$bin") bytes ($bin)"
    ;;
  test)
    t=${1:-aarch64-unknown-linux-gnu}; [ $# -ge 1 ] && shift
    # The tests' hang guards (20 s natively) are far too short for a debug build emulated by
    # qemu on a busy machine: armv7 ran 16 times slower than aarch64 did on a quiet one.
    export EDDY_TEST_PROMPTLY_SECS=${EDDY_TEST_PROMPTLY_SECS:-300}
    xc_cargo test "$t" --locked -p eddy --lib "$@"
    # The serial tests open pseudo-terminals, and under qemu-user 7.2 (bookworm) the open of
    # /dev/pts/N by serialport fails with ENOSYS ("Function not implemented"): a tty ioctl it
    # uses is not emulated. They run natively in scripts/test-all.sh; here they are skipped
    # by name, and the skip is printed.
    echo "cross: skipping the pseudo-terminal tests (serial::tests, simulator::serial_client::tests) under qemu" >&2
    xc_cargo test "$t" --locked -p eddy-sensors --lib "$@" -- \
      --skip serial::tests:: --skip simulator::serial_client::tests::
    ;;
  deb)
    [ $# -ge 1 ] || die "usage: $0 deb TARGET (after build TARGET)"
    t=$1; no_musl "$t"
    [ -x "$CARGO_TARGET_DIR/$t/release/eddy" ] || die "build it first: $0 build $t"
    # --no-build: the binary above; --no-strip: the release profile strips already (and the
    # host's strip does not know ARM). cargo-deb maps the triple to the Debian architecture.
    variant=()
    [ "$(deb_arch "$t")" = armhf ] && variant=(--variant armhf)   # see daemon/Cargo.toml
    [ "$t" = x86_64-unknown-linux-gnu ] && variant=(--variant amd64-relr)
    cargo deb -p eddy --target "$t" --no-build --no-strip --locked ${variant[@]+"${variant[@]}"} -o "$CARGO_TARGET_DIR/debian/"
    dpkg-deb -f "$(ls -t "$CARGO_TARGET_DIR"/debian/eddy_*_"$(deb_arch "$t")".deb | head -1)" Package Version Architecture Depends
    ;;
  deb-test)
    [ $# -ge 1 ] || die "usage: $0 deb-test TARGET (after build TARGET)"
    t=$1; no_musl "$t"
    [ -x "$CARGO_TARGET_DIR/$t/release/eddy" ] || die "build it first: $0 build $t"
    a=$(deb_arch "$t")
    [ "$a" = amd64 ] || binfmt   # qemu-user for the ARM binaries; amd64 runs natively
    d=$CARGO_TARGET_DIR/debian/deb-test
    rm -rf "$d"; mkdir -p "$d"
    variant=()
    [ "$a" = armhf ] && variant=(--variant armhf)
    [ "$t" = x86_64-unknown-linux-gnu ] && variant=(--variant amd64-relr)
    # Two revisions of the same build: -1 is installed, -2 is the upgrade.
    for rev in 1 2; do
      cargo deb -p eddy --target "$t" --no-build --no-strip --locked ${variant[@]+"${variant[@]}"} \
        --deb-revision "$rev" -o "$d/eddy_$rev.deb" >/dev/null
    done
    EDDY_NSPAWN_ARCH=$a EDDY_NSPAWN_DEBS="$d/eddy_1.deb $d/eddy_2.deb" scripts/nspawn-test.sh
    ;;
  binfmt) binfmt ;;
  smoke)
    [ $# -ge 1 ] || die "usage: $0 smoke TARGET (after build TARGET)"
    smoke "$1"
    ;;
  size)
    [ $# -ge 1 ] || die "usage: $0 size TARGET"
    stat -c %s "$CARGO_TARGET_DIR/$1/release/eddy"
    ;;
  env)
    [ $# -ge 1 ] || die "usage: $0 env TARGET"
    xc_env "$1"
    env | grep -E '^(RUSTC|RUSTDOC|CARGO|RUSTC_BOOTSTRAP|CARGO_ZIGBUILD_PYTHON_PATH|CARGO_TARGET_[A-Z0-9_]+|CC_[a-z0-9_]+|AR_[a-z0-9_]+)=' \
      | sed "s/^\([^=]*\)=\(.*\)$/export \1='\2'/"
    echo "# extra cargo flags: ${BUILD_STD[*]:-none}"
    if [ "$XC_ZIG" = 1 ]; then echo "# cargo: $XC_HOME/bin/cargo-zigbuild zigbuild|test --target $1"; fi
    ;;
  *) sed -n '2,36p' "$0"; exit 2 ;;
esac
