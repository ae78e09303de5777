#!/usr/bin/env bash
# cross.sh - eddy for ARM gateways, built on a Debian 12 x86_64 machine without rustup targets.
#
#   cross/cross.sh setup                 # once, as root: apt (Debian's rustc-web 1.96, its arm64
#                                        # std and source, cross gcc, qemu-user-static); ~2 min
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
#   cross/cross.sh env   TARGET          # the exports, for your own cargo commands
#
# TARGET: aarch64-unknown-linux-gnu (Raspberry Pi 3/4/5, 64-bit OS) or
#         armv7-unknown-linux-gnueabihf (Raspberry Pi 2/3/4, 32-bit Raspberry Pi OS).
#
# How: rustup cannot download targets here, so the compiler is Debian's rustc-web/cargo-web
# (/usr/bin/rustc, /usr/bin/cargo; rustup's toolchain stays first on PATH and is not used).
# aarch64's std is Debian's prebuilt libstd-rust-web-dev:arm64; armv7's std is built from
# rust-web-src with -Zbuild-std (RUSTC_BOOTSTRAP=1), because the armhf std package could not be
# installed from the mirror (see ../../shared/cross/NOTES.md, where this recipe was verified).
# Linkers: the Debian cross gcc. qemu-user-static runs the test binaries (cargo's runner).
# Artifacts go to target/cross (CARGO_TARGET_DIR), apart from rustup's 1.95 builds.
# The release profile is the workspace's ([profile.release]: opt-level "s", cold crates "z", fat LTO,
# one codegen unit, strip, panic=abort).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'cross: %s\n' "$*" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/cross}

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
}

# Exports the compiler, linker, runner and std settings for $1.
xc_env() {
  local t=$1 T cc q sys ld
  T=$(printf '%s' "$t" | tr 'a-z-' 'A-Z_')
  case $t in
    aarch64-unknown-linux-gnu) cc=aarch64-linux-gnu-gcc; q=qemu-aarch64-static; sys=/usr/aarch64-linux-gnu; ld=/lib/ld-linux-aarch64.so.1 ;;
    armv7-unknown-linux-gnueabihf) cc=arm-linux-gnueabihf-gcc; q=qemu-arm-static; sys=/usr/arm-linux-gnueabihf; ld=/lib/ld-linux-armhf.so.3 ;;
    *) die "unsupported target $t (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" ;;
  esac
  [ -x /usr/bin/rustc ] || die "Debian's rustc-web is missing: run cross/cross.sh setup"
  command -v "$cc" >/dev/null || die "$cc is missing: run cross/cross.sh setup"
  command -v "$q" >/dev/null || die "$q is missing: run cross/cross.sh setup"
  export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc CARGO=/usr/bin/cargo
  export "CARGO_TARGET_${T}_LINKER=$cc" "CC_${t//-/_}=$cc" "AR_${t//-/_}=${cc%gcc}ar"
  # qemu must see one consistent glibc: the multiarch one when installed (libc6:arm64 comes
  # with the arm64 std; with -L the cross ld.so mixes two glibc builds and hangs in the
  # first pthread_create), else the cross sysroot.
  if [ -e "$ld" ]; then export "CARGO_TARGET_${T}_RUNNER=$q"; else export "CARGO_TARGET_${T}_RUNNER=$q -L $sys"; fi
  BUILD_STD=()
  if [ ! -d "/usr/lib/rustlib/$t/lib" ]; then
    export RUSTC_BOOTSTRAP=1
    # test too, so that build and test share one std and all dependencies.
    BUILD_STD=(-Zbuild-std=std,panic_abort,test)
  fi
}

xc_cargo() { # xc_cargo SUBCOMMAND TARGET [args]
  local sub=$1 t=$2; shift 2
  xc_env "$t"
  /usr/bin/cargo "$sub" --target "$t" ${BUILD_STD[@]+"${BUILD_STD[@]}"} "$@"
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

deb_arch() {
  case $1 in aarch64-*) echo arm64 ;; armv7-*) echo armhf ;; *) die "no Debian architecture for $1" ;; esac
}

cmd=${1:-}; shift || true
case $cmd in
  setup) setup ;;
  build)
    [ $# -ge 1 ] || die "usage: $0 build TARGET"
    t=$1; shift
    xc_cargo build "$t" --release --locked -p eddy --bin eddy "$@"
    bin=$CARGO_TARGET_DIR/$t/release/eddy
    file "$bin"
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
    t=$1
    [ -x "$CARGO_TARGET_DIR/$t/release/eddy" ] || die "build it first: $0 build $t"
    # --no-build: the binary above; --no-strip: the release profile strips already (and the
    # host's strip does not know ARM). cargo-deb maps the triple to the Debian architecture.
    variant=()
    [ "$(deb_arch "$t")" = armhf ] && variant=(--variant armhf)   # see daemon/Cargo.toml
    cargo deb -p eddy --target "$t" --no-build --no-strip --locked ${variant[@]+"${variant[@]}"} -o "$CARGO_TARGET_DIR/debian/"
    dpkg-deb -f "$(ls -t "$CARGO_TARGET_DIR"/debian/eddy_*_"$(deb_arch "$t")".deb | head -1)" Package Version Architecture Depends
    ;;
  deb-test)
    [ $# -ge 1 ] || die "usage: $0 deb-test TARGET (after build TARGET)"
    t=$1
    [ -x "$CARGO_TARGET_DIR/$t/release/eddy" ] || die "build it first: $0 build $t"
    a=$(deb_arch "$t")
    binfmt
    d=$CARGO_TARGET_DIR/debian/deb-test
    rm -rf "$d"; mkdir -p "$d"
    variant=()
    [ "$a" = armhf ] && variant=(--variant armhf)
    # Two revisions of the same build: -1 is installed, -2 is the upgrade.
    for rev in 1 2; do
      cargo deb -p eddy --target "$t" --no-build --no-strip --locked ${variant[@]+"${variant[@]}"} \
        --deb-revision "$rev" -o "$d/eddy_$rev.deb" >/dev/null
    done
    EDDY_NSPAWN_ARCH=$a EDDY_NSPAWN_DEBS="$d/eddy_1.deb $d/eddy_2.deb" scripts/nspawn-test.sh
    ;;
  binfmt) binfmt ;;
  size)
    [ $# -ge 1 ] || die "usage: $0 size TARGET"
    stat -c %s "$CARGO_TARGET_DIR/$1/release/eddy"
    ;;
  env)
    [ $# -ge 1 ] || die "usage: $0 env TARGET"
    xc_env "$1"
    env | grep -E '^(RUSTC|RUSTDOC|CARGO|RUSTC_BOOTSTRAP|CARGO_TARGET_[A-Z0-9_]+|CC_[a-z0-9_]+|AR_[a-z0-9_]+)=' \
      | sed "s/^\([^=]*\)=\(.*\)$/export \1='\2'/"
    echo "# extra cargo flags: ${BUILD_STD[*]:-none}"
    ;;
  *) sed -n '2,29p' "$0"; exit 2 ;;
esac
