#!/usr/bin/env bash
# Boots a real systemd (Debian 12 in systemd-nspawn) and checks eddy's .deb in it: install
# (user, unit, conffile, state directory), `systemd-analyze verify` and `security`, READY
# (Type=notify), SIGKILL → restart by systemd with every acknowledged reading intact,
# SIGHUP reload, upgrade keeping the edited configuration and the data, purge.
#
#   scripts/nspawn-test.sh            (as root; ./scripts/test-all.sh runs it)
#
# Prebuilt packages of another architecture (cross/cross.sh deb-test TARGET does this):
#   EDDY_NSPAWN_DEBS="eddy_1.deb eddy_2.deb" EDDY_NSPAWN_ARCH=arm64 scripts/nspawn-test.sh
# installs the first, upgrades to the second, and runs the same checks. For a foreign
# architecture the container gets that architecture's libc (dpkg --add-architecture, cached in
# its own root file system) and the binary runs through qemu-user, registered in binfmt_misc
# with the F flag on the host; see the qemu drop-in below for the one unit setting it changes.
#
# The container's root file system is built once with debootstrap (about 2.5 min) and
# cached in $EDDY_NSPAWN_CACHE (default /var/tmp/eddy-nspawn); each run boots a copy.
# Needs: root, systemd-nspawn (systemd-container), debootstrap, cargo-deb: installed when
# missing. Prints `ok - …` / `FAIL - …` per check and `nspawn: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

CACHE=${EDDY_NSPAWN_CACHE:-/var/tmp/eddy-nspawn}
ROOTFS=$CACHE/rootfs-bookworm-v1           # bump the suffix when the package list changes
MIRROR=${EDDY_DEBIAN_MIRROR:-http://deb.debian.org/debian}

die() { echo "nspawn-test: $*" >&2; echo "nspawn: 0 passed, 1 failed"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (systemd-nspawn, debootstrap)"

# ---------------------------------------------------------------- tools
need=()
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} (apt-get)"
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; } </dev/null \
    || die "cannot install ${need[*]} with apt-get"
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "== installing cargo-deb (cargo install, about 2 min once)"
  (cd / && cargo install cargo-deb --locked --version 3.8.0) || die "cannot install cargo-deb"
fi

# ---------------------------------------------------------------- the cached root file system
if [ ! -x "$ROOTFS/lib/systemd/systemd" ]; then
  echo "== building the container's root file system in $ROOTFS (debootstrap, once)"
  mkdir -p "$CACHE"
  rm -rf "$ROOTFS.tmp"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps bookworm "$ROOTFS.tmp" "$MIRROR" \
    > "$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log): cannot build the container"; }
  mv "$ROOTFS.tmp" "$ROOTFS"
fi

# ---------------------------------------------------------------- a foreign architecture
host_arch=$(dpkg --print-architecture)
arch=${EDDY_NSPAWN_ARCH:-$host_arch}
base=$ROOTFS
if [ "$arch" != "$host_arch" ]; then
  case $arch in
    arm64) qemu=qemu-aarch64 multiarch=aarch64-linux-gnu ;;
    armhf) qemu=qemu-arm multiarch=arm-linux-gnueabihf ;;
    *) die "EDDY_NSPAWN_ARCH=$arch: only arm64 and armhf are emulated" ;;
  esac
  # F: the kernel opened the interpreter at registration, so it works inside the container.
  grep -q '^flags: .*F' "/proc/sys/fs/binfmt_misc/$qemu" 2>/dev/null \
    || die "$qemu is not registered in binfmt_misc with the F flag: run cross/cross.sh binfmt"
  base=$ROOTFS-$arch
  if [ ! -e "$base/lib/$multiarch/libc.so.6" ]; then
    echo "== adding $arch (libc6:$arch, libgcc-s1:$arch) to a copy of the root file system (once)"
    rm -rf "$base.tmp"
    cp -a --reflink=auto "$ROOTFS" "$base.tmp"
    cp /etc/resolv.conf "$base.tmp/etc/resolv.conf"
    { chroot "$base.tmp" dpkg --add-architecture "$arch" &&
      chroot "$base.tmp" apt-get -qq update &&
      DEBIAN_FRONTEND=noninteractive chroot "$base.tmp" apt-get install -y -qq --no-install-recommends \
        "libc6:$arch" "libgcc-s1:$arch" &&
      chroot "$base.tmp" apt-get clean; } </dev/null >"$CACHE/foreign-$arch.log" 2>&1 \
      || { tail -20 "$CACHE/foreign-$arch.log" >&2; die "cannot add $arch to the container (log: $CACHE/foreign-$arch.log)"; }
    rm -rf "$base.tmp/var/lib/apt/lists"/*
    mv "$base.tmp" "$base"
  fi
fi

# ---------------------------------------------------------------- the packages
work=$(mktemp -d /var/tmp/eddy-nspawn-run.XXXXXX)
nspawn_pid=""
cleanup() {
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid" 2>/dev/null || true        # nspawn: poweroff the container
    for _ in $(seq 1 30); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
  fi
  [ "${EDDY_NSPAWN_KEEP:-0}" = 1 ] && { echo "kept $work"; return; }
  rm -rf "$work"
}
trap cleanup EXIT

# The dev profile by default (test-all.sh has built it; the test is about the package, not the
# optimiser); EDDY_NSPAWN_PROFILE=release checks the package as shipped.
profile=${EDDY_NSPAWN_PROFILE:-dev}
if [ -n "${EDDY_NSPAWN_DEBS:-}" ]; then
  read -r deb1 deb2 rest <<<"$EDDY_NSPAWN_DEBS"
  [ -n "${deb2:-}" ] && [ -z "${rest:-}" ] || die "EDDY_NSPAWN_DEBS: two packages, the installed one and the upgrade"
  for deb in "$deb1" "$deb2"; do
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || die "$deb is not for $arch"
  done
  echo "== prebuilt packages: $deb1, $deb2 ($arch)"
  cp "$deb1" "$work/eddy_1.deb"
  cp "$deb2" "$work/eddy_2.deb"
else
  [ "$arch" = "$host_arch" ] || die "EDDY_NSPAWN_ARCH=$arch needs EDDY_NSPAWN_DEBS (cross/cross.sh deb-test builds them)"
  echo "== building the .deb ($profile profile)"
  # Two revisions of the same build: -1 is installed, -2 is the upgrade.
  cargo deb -p eddy --profile "$profile" --locked --fast --deb-revision 1 -o "$work/eddy_1.deb" >"$work/deb.log" 2>&1 \
    || { tail -20 "$work/deb.log" >&2; die "cargo deb failed"; }
  cargo deb -p eddy --profile "$profile" --locked --fast --no-build --deb-revision 2 -o "$work/eddy_2.deb" >>"$work/deb.log" 2>&1 \
    || { tail -20 "$work/deb.log" >&2; die "cargo deb (revision 2) failed"; }
fi
version1=$(dpkg-deb -f "$work/eddy_1.deb" Version)
version2=$(dpkg-deb -f "$work/eddy_2.deb" Version)
[ "$version1" != "$version2" ] || die "the upgrade must have another version than $version1"

# ---------------------------------------------------------------- boot
root=$work/root
cp -a --reflink=auto "$base" "$root"
cp "$work"/eddy_*.deb "$root/root/"
if [ "$arch" != "$host_arch" ]; then
  # qemu-user translates the ARM code into host code at run time, in memory that is writable
  # and executable: MemoryDenyWriteExecute=yes kills it at its first translation block. The
  # emulator needs nothing else of the unit relaxed. On a real ARM device the unit runs as
  # shipped; only this emulated test adds the drop-in (before the install, which starts eddy).
  mkdir -p "$root/etc/systemd/system/eddy.service.d"
  printf '[Service]\nMemoryDenyWriteExecute=no\n' >"$root/etc/systemd/system/eddy.service.d/qemu-user.conf"
  echo "== $arch: eddy runs through $qemu (binfmt_misc); drop-in for the emulator: MemoryDenyWriteExecute=no"
fi
echo "== booting systemd in the container"
# --register=no --keep-unit: the host need not run systemd/machined (CI does not);
# --private-network: its own loopback, so ports cannot clash with other tests.
systemd-nspawn -D "$root" --boot --private-network --register=no --keep-unit \
  --machine "eddy-test-$$" >"$work/console.log" 2>&1 </dev/null &
nspawn_pid=$!
leader=""
for _ in $(seq 1 100); do
  leader=$(ps -o pid= --ppid "$nspawn_pid" 2>/dev/null | head -1 | tr -d ' ') || true
  [ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ] && break
  leader=""
  kill -0 "$nspawn_pid" 2>/dev/null || break
  sleep 0.2
done
[ -n "$leader" ] || { tail -20 "$work/console.log" >&2; die "systemd-nspawn did not boot the container"; }
in_ct() { nsenter -t "$leader" -m -u -i -n -p -- "$@"; }
# Until systemd has made its private socket, systemctl fails at once: ask again until the
# boot is over (running, or degraded if some unit of the minimal image failed).
state=""
for _ in $(seq 1 180); do
  state=$(timeout 10 nsenter -t "$leader" -m -u -i -n -p -- systemctl is-system-running 2>/dev/null || true)
  case $state in running | degraded) break ;; esac
  kill -0 "$nspawn_pid" 2>/dev/null || break
  sleep 0.5
done
case $state in running | degraded) ;; *) tail -20 "$work/console.log" >&2; die "the container's systemd did not come up in 90 s (state: ${state:-none})" ;; esac

# ---------------------------------------------------------------- checks
passed=0 failed=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@" >"$work/check.out" 2>&1; then
    echo "ok - $name"; passed=$((passed + 1))
  else
    echo "FAIL - $name"; sed 's/^/    /' "$work/check.out" | tail -25; failed=$((failed + 1))
  fi
}
prop() { in_ct systemctl show eddy -p "$1" --value; }
wait_for() { # wait_for SECONDS COMMAND...
  local until=$((SECONDS + $1)); shift
  while ! "$@"; do [ $SECONDS -lt $until ] || return 1; sleep 0.5; done
}

installs() {
  in_ct dpkg -i /root/eddy_1.deb &&
    [ "$(in_ct dpkg-query -W -f='${Architecture}' eddy)" = "$arch" ] &&
    in_ct eddy --version
}
check "dpkg -i installs the package ($arch)" installs

active_and_ready() {
  # Type=notify: "active" only after eddy sent READY=1 (store open, sources up).
  [ "$(in_ct systemctl is-active eddy)" = active ] && [ "$(prop StatusText)" = "Taking readings." ]
}
check "the service is started, active and READY" wait_for 30 active_and_ready

verify_clean() {
  local out; out=$(in_ct systemd-analyze verify /lib/systemd/system/eddy.service 2>&1)
  echo "$out"; [ -z "$out" ]
}
check "systemd-analyze verify prints no warning" verify_clean

exposure_low() {
  local line; line=$(in_ct systemd-analyze security eddy.service 2>&1 | grep 'Overall exposure level')
  echo "$line"
  awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+$/) v = $i } END { exit !(v != "" && v <= 2.0) }' <<<"$line"
}
check "systemd-analyze security: exposure at most 2.0" exposure_low

user_and_dirs() {
  in_ct id eddy | grep -q dialout &&
    [ "$(in_ct stat -c %U /var/lib/eddy)" = eddy ] &&
    in_ct dpkg-query -W -f='${Conffiles}\n' eddy | grep -q /etc/eddy/eddy.toml &&
    [ "$(prop WatchdogUSec)" = 30s ] && [ "$(prop User)" = eddy ]
}
check "user eddy in dialout, /var/lib/eddy owned by it, conffile, watchdog 30s" user_and_dirs

memory_limits() {
  # As the running unit has them, in bytes. (MemoryCurrent is not asserted: in a container the
  # memory controller may not be delegated, which the device's systemd has.)
  local high max; high=$(prop MemoryHigh); max=$(prop MemoryMax)
  echo "MemoryHigh=$high MemoryMax=$max"
  [ "$high" = $((64 * 1024 * 1024)) ] && [ "$max" = $((96 * 1024 * 1024)) ]
}
check "MemoryHigh=64M and MemoryMax=96M are in effect" memory_limits

restart_limits() {
  # Restarts for crashes only, and a crash loop still ends in start-limit-hit: 10 starts in
  # 10 minutes, 5 s apart; an invalid configuration (exit 2) is not restarted.
  echo "Restart=$(prop Restart) RestartUSec=$(prop RestartUSec) StartLimitBurst=$(prop StartLimitBurst)" \
    "StartLimitIntervalUSec=$(prop StartLimitIntervalUSec) RestartPreventExitStatus=$(prop RestartPreventExitStatus)"
  [ "$(prop Restart)" = on-failure ] && [ "$(prop RestartUSec)" = 5s ] &&
    [ "$(prop StartLimitBurst)" = 10 ] && [ "$(prop StartLimitIntervalUSec)" = 10min ] &&
    prop RestartPreventExitStatus | grep -qw 2
}
check "restarts only for crashes; a crash loop still ends in start-limit-hit" restart_limits

status_healthy() { in_ct eddy status --config /etc/eddy/eddy.toml; }
check "eddy status reports HEALTHY" wait_for 15 status_healthy

watchdog_pinged() { [ -n "$(prop WatchdogTimestampMonotonic | grep -v '^0$')" ]; }
check "eddy pings the watchdog while its pipeline moves" wait_for 20 watchdog_pinged

# A configuration whose windows close within seconds, so the count of every reading shows in
# results.jsonl. A tumbling 2 s window over temp_c, sensors idle after 2 s are flushed.
cat >"$root/etc/eddy/eddy.toml" <<'EOF'
device_id = "nspawn"
data_dir = "/var/lib/eddy"
[api]
listen = "127.0.0.1:7879"
[engine]
idle_timeout = "2s"
[[sources]]
kind = "tcp"
listen = "127.0.0.1:7878"
ack = true
[[windows]]
name = "w2s"
length = "2s"
slide = "2s"
lateness = "0s"
aggregates = ["count"]
[[sinks]]
kind = "file"
name = "results"
path = "/var/lib/eddy/results.jsonl"
EOF
restarts() { in_ct systemctl restart eddy && wait_for 30 active_and_ready; }
check "restart with the test configuration" restarts

readings=2000
sends() {
  local out; out=$(in_ct eddy simulate --tcp 127.0.0.1:7878 --sensors 5 --count "$readings" --ack)
  echo "$out"; grep -q "acked $readings," <<<"$out"
}
check "$readings readings sent and acknowledged (durable)" sends

pid_before=$(prop MainPID)
killed_and_restarted() {
  in_ct kill -KILL "$pid_before"
  wait_for 30 sh -c "[ \"\$(nsenter -t $leader -m -u -i -n -p -- systemctl show eddy -p NRestarts --value)\" = 1 ]" &&
    wait_for 30 active_and_ready && [ "$(prop MainPID)" != "$pid_before" ]
}
check "SIGKILL: systemd restarts eddy (NRestarts=1, new pid, READY again)" killed_and_restarted

counted() { # sum of temp_c counts over distinct window ids (delivery is at-least-once)
  python3 - "$root/var/lib/eddy/results.jsonl" <<'PY'
import json, sys
seen = {}
try:
    for line in open(sys.argv[1]):
        r = json.loads(line)
        if r.get("type") == "window" and r.get("field") == "temp_c":
            seen[r["id"]] = r["count"]
except FileNotFoundError:
    pass
print(sum(seen.values()))
PY
}
all_counted() { [ "$(counted)" = "$readings" ]; }
data_intact() { wait_for 40 all_counted || { echo "windows count $(counted) of $readings readings"; return 1; }; }
check "every acknowledged reading is in the windows after the SIGKILL" data_intact

reloads() {
  sed -i 's/^listen = "127.0.0.1:7878"/listen = "127.0.0.1:7880"/' "$root/etc/eddy/eddy.toml"
  printf '[log]\nlevel = "debug"\n' >>"$root/etc/eddy/eddy.toml"
  printf '[[sinks]]\nkind = "file"\nname = "results2"\npath = "/var/lib/eddy/results2.jsonl"\n' >>"$root/etc/eddy/eddy.toml"
  in_ct systemctl reload eddy
  wait_for 10 sh -c "nsenter -t $leader -m -u -i -n -p -- journalctl -u eddy --no-pager | grep -q 'SIGHUP: log level applied'" &&
    wait_for 10 sh -c "nsenter -t $leader -m -u -i -n -p -- journalctl -u eddy --no-pager | grep -qF 'SIGHUP: sinks reloaded: added [results2]'" &&
    in_ct journalctl -u eddy --no-pager | grep 'SIGHUP: these settings changed' | grep -q sources &&
    [ -f "$root/var/lib/eddy/results2.jsonl" ] &&
    [ "$(in_ct systemctl is-active eddy)" = active ]
}
check "SIGHUP applies the log level and a new sink, and names what needs a restart" reloads

upgrades() {
  local before; before=$(md5sum <"$root/etc/eddy/eddy.toml")
  local pid; pid=$(prop MainPID)
  in_ct dpkg -i /root/eddy_2.deb </dev/null &&
    [ "$(in_ct dpkg-query -W -f='${Version}' eddy)" = "$version2" ] &&
    [ "$(md5sum <"$root/etc/eddy/eddy.toml")" = "$before" ] &&
    wait_for 30 active_and_ready && [ "$(prop MainPID)" != "$pid" ] &&
    all_counted && [ -s "$root/var/lib/eddy/db" ]
}
check "upgrade: edited conffile kept, data kept, service restarted" upgrades

purges() {
  in_ct dpkg --purge eddy </dev/null &&
    [ ! -e "$root/usr/bin/eddy" ] && [ ! -e "$root/lib/systemd/system/eddy.service" ] &&
    [ ! -e "$root/usr/lib/systemd/system/eddy.service" ] &&
    [ ! -e "$root/var/lib/eddy" ] && [ ! -e "$root/etc/eddy" ] &&
    ! in_ct systemctl is-active eddy
}
check "purge removes binary, unit, configuration and data" purges

echo "nspawn: $passed passed, $failed failed"
[ "$failed" = 0 ]
