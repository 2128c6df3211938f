#!/usr/bin/env bash
# matcraft.deploy testbed: a Docker engine and registry-free systemd images.
#
# Shared by the Makefile, CI (.ci/run) and users. Idempotent: every step checks
# what is already there and reuses it.
#
#   testbed.sh engine   find a running Docker engine, or install (Debian/Ubuntu)
#                       and start one
#   testbed.sh cache    start apt-cacher-ng on the Docker host (optional speed-up)
#   testbed.sh images   build the test images (debootstrap + docker import)
#   testbed.sh tools    host tools the unit tests use (promtool, amtool, mtail,
#                       python3-venv), from the distribution
#   testbed.sh all      tools, engine, cache (unless TESTBED_APT_CACHE=0), images
#   testbed.sh status   print what is there
#
# Environment:
#   TESTBED_SUITES        Debian suites to build (default: "bookworm trixie";
#                         a suite the mirror does not serve is skipped with a note)
#   TESTBED_MIRROR        Debian mirror for debootstrap (default: the first
#                         Debian URI in the host's APT sources, else debootstrap's
#                         own default)
#   TESTBED_EXTRA_CA_DIR  directory of *.crt files the images must trust
#                         (corporate TLS proxies); default: the host's
#                         /usr/local/share/ca-certificates; "" disables
#   TESTBED_APT_CACHE     1 (default) to run apt-cacher-ng on the host and let
#                         the images use it when it answers; 0 to skip
#   TESTBED_REBUILD       1 to rebuild images even if up to date
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGE_REPO=${TESTBED_IMAGE_REPO:-matcraft-testbed/debian}
SUITES=${TESTBED_SUITES:-bookworm trixie}
EXTRA_CA_DIR=${TESTBED_EXTRA_CA_DIR-/usr/local/share/ca-certificates}
APT_CACHE=${TESTBED_APT_CACHE:-1}
STATE_DIR=${TESTBED_STATE_DIR:-/var/lib/matcraft-testbed}
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,procps,ca-certificates,curl,gnupg,openssh-server
# Bump when the image recipe changes: part of the image fingerprint.
RECIPE_VERSION=5

log() { printf '[testbed] %s\n' "$*" >&2; }
die() { printf '[testbed] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "root is needed for: $* (run as root or install sudo)"; fi
}

have_apt() { command -v apt-get >/dev/null 2>&1; }

apt_install() {
  have_apt || die "cannot install $* here: not a Debian/Ubuntu host; install it by hand"
  if [ ! -f "$STATE_DIR/apt-updated" ]; then
    as_root apt-get update -q
    as_root mkdir -p "$STATE_DIR" && as_root touch "$STATE_DIR/apt-updated"
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

engine_up() { docker info >/dev/null 2>&1; }

# Every systemd container takes several inotify instances of the host's user
# limit (128 by default): two scenarios side by side, or a scenario and the
# demo, exhaust it and containers stop booting. Raise it (not persisted).
raise_inotify_limit() {
  local current
  current=$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo 0)
  if [ "$current" -lt 1024 ]; then
    if as_root sysctl -q -w fs.inotify.max_user_instances=1024 >/dev/null 2>&1; then
      log "fs.inotify.max_user_instances raised from $current to 1024"
    else
      log "WARNING: fs.inotify.max_user_instances is $current and cannot be raised here; many systemd containers at once may not boot"
    fi
  fi
}

cmd_engine() {
  raise_inotify_limit
  if engine_up; then log "Docker engine answers"; return 0; fi
  if ! command -v dockerd >/dev/null 2>&1; then
    log "no Docker engine on this host: installing Debian's docker.io"
    apt_install docker.io
  fi
  command -v docker >/dev/null 2>&1 || die "docker client missing after install"
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    log "starting docker.service"
    as_root systemctl start docker || true   # fall through to the direct start below
  fi
  if ! engine_up; then
    log "starting dockerd in the background (log: /var/log/matcraft-dockerd.log)"
    as_root sh -c 'setsid dockerd >/var/log/matcraft-dockerd.log 2>&1 < /dev/null &'
  fi
  for _ in $(seq 1 60); do engine_up && { log "Docker engine answers"; return 0; }; sleep 1; done
  tail -n 30 /var/log/matcraft-dockerd.log >&2 || true   # diagnostics only; die follows
  die "Docker engine did not answer within 60 s"
}

host_uris() {
  (grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
   grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}') || true  # no such files: no URIs
}

host_mirror() {
  if [ -n "${TESTBED_MIRROR:-}" ]; then echo "$TESTBED_MIRROR"; return; fi
  host_uris | grep -E '/debian/?$' | head -n 1
}

host_security_mirror() {
  if [ -n "${TESTBED_SECURITY_MIRROR:-}" ]; then echo "$TESTBED_SECURITY_MIRROR"; return; fi
  host_uris | grep -E '/debian-security/?$' | head -n 1
}

cache_port=3142
cmd_cache() {
  [ "$APT_CACHE" = 1 ] || { log "apt cache disabled (TESTBED_APT_CACHE=0)"; return 0; }
  have_apt || { log "apt cache: not a Debian host, skipped"; return 0; }
  if ! command -v apt-cacher-ng >/dev/null 2>&1 && [ ! -x /usr/sbin/apt-cacher-ng ]; then
    log "installing apt-cacher-ng"
    echo "apt-cacher-ng apt-cacher-ng/tunnelenable boolean false" | as_root debconf-set-selections
    apt_install apt-cacher-ng
  fi
  # apt-cacher-ng remaps Debian requests to a mirror list of its own; point it
  # at the mirror this host already uses instead.
  local mirror
  mirror=$(host_mirror)
  if [ -n "$mirror" ] && [ ! -s /etc/apt-cacher-ng/backends_debian ]; then
    echo "${mirror%/}/" | as_root tee /etc/apt-cacher-ng/backends_debian >/dev/null
    if pgrep -x apt-cacher-ng >/dev/null; then as_root pkill -x apt-cacher-ng; sleep 1; fi
  fi
  if curl -fsS -o /dev/null "http://127.0.0.1:${cache_port}/acng-report.html" 2>/dev/null; then
    log "apt-cacher-ng answers on :${cache_port}"; return 0
  fi
  if [ -d /run/systemd/system ]; then as_root systemctl start apt-cacher-ng || true; fi  # checked below, started directly otherwise
  if ! curl -fsS -o /dev/null "http://127.0.0.1:${cache_port}/acng-report.html" 2>/dev/null; then
    as_root mkdir -p /var/cache/apt-cacher-ng /var/log/apt-cacher-ng /run/apt-cacher-ng
    # The package's user exists on Debian; elsewhere the daemon runs as root.
    as_root chown apt-cacher-ng: /var/cache/apt-cacher-ng /var/log/apt-cacher-ng /run/apt-cacher-ng 2>/dev/null || true
    as_root sh -c 'setsid /usr/sbin/apt-cacher-ng -c /etc/apt-cacher-ng ForeGround=1 >/var/log/matcraft-acng.log 2>&1 < /dev/null &'
  fi
  for _ in $(seq 1 20); do
    curl -fsS -o /dev/null "http://127.0.0.1:${cache_port}/acng-report.html" 2>/dev/null && {
      log "apt-cacher-ng answers on :${cache_port}"; return 0; }
    sleep 0.5
  done
  log "WARNING: apt-cacher-ng did not start; images will fetch packages directly"
}

ca_files() {
  [ -n "$EXTRA_CA_DIR" ] && [ -d "$EXTRA_CA_DIR" ] || return 0
  find "$EXTRA_CA_DIR" -maxdepth 2 -type f -name '*.crt' | sort
}

fingerprint() {
  local suite=$1
  {
    echo "recipe=$RECIPE_VERSION suite=$suite packages=$PACKAGES cache=$APT_CACHE"
    sed -n '/^# --- image recipe ---$/,/^# --- end recipe ---$/p' "$0"
    for f in $(ca_files); do sha256sum "$f"; done
    sha256sum <"$HERE/ansiballz_pycache.py"
  } | sha256sum | cut -c1-16
}

suite_served() {
  local mirror=$1 suite=$2
  [ -e "/usr/share/debootstrap/scripts/$suite" ] || return 1
  # Without a known mirror, debootstrap's own default is used and tells itself.
  [ -n "$mirror" ] || return 0
  curl -fsS -o /dev/null "${mirror%/}/dists/$suite/Release" 2>/dev/null
}

# --- image recipe ---
build_image() {
  local suite=$1 fp=$2 mirror=$3
  local root
  root=$(mktemp -d "${TMPDIR:-/tmp}/testbed-$suite.XXXXXX")
  log "debootstrap $suite (about a minute)"
  # shellcheck disable=SC2086  # mirror may be empty: debootstrap then uses its default
  as_root debootstrap --variant=minbase --include="$PACKAGES" "$suite" "$root" $mirror >"$root.log" 2>&1 ||
    { tail -n 40 "$root.log" >&2; die "debootstrap $suite failed (full log: $root.log)"; }
  # Package sources like a cloud image's: release, updates and security.
  local security used
  security=$(host_security_mirror)
  used=$(awk '/^deb /{print $2; exit}' "$root/etc/apt/sources.list")
  {
    echo "deb $used $suite main"
    echo "deb $used $suite-updates main"
    [ -z "$security" ] || echo "deb $security $suite-security main"
  } | as_root tee "$root/etc/apt/sources.list" >/dev/null
  # Extra CA certificates of the host (TLS-intercepting proxies): trusted inside too.
  local f n=0
  for f in $(ca_files); do
    as_root cp "$f" "$root/usr/local/share/ca-certificates/testbed-host-$(basename "$f")"; n=$((n + 1))
  done
  [ "$n" -eq 0 ] || { as_root chroot "$root" update-ca-certificates >/dev/null; log "trusting $n extra CA certificate(s)"; }
  # Use the host's apt-cacher-ng when it answers, go direct otherwise.
  if [ "$APT_CACHE" = 1 ]; then
    as_root tee "$root/usr/local/sbin/testbed-apt-proxy" >/dev/null <<'PROXY'
#!/bin/sh
# Prints the testbed apt cache URL when it answers, DIRECT otherwise.
gw=$(ip route show default 2>/dev/null | awk '{print $3; exit}')
if [ -n "$gw" ] && timeout 1 bash -c "exec 3<>/dev/tcp/$gw/3142" 2>/dev/null; then
  echo "http://$gw:3142"
else
  echo DIRECT
fi
PROXY
    as_root chmod 0755 "$root/usr/local/sbin/testbed-apt-proxy"
    echo 'Acquire::http::Proxy-Auto-Detect "/usr/local/sbin/testbed-apt-proxy";' |
      as_root tee "$root/etc/apt/apt.conf.d/01testbed-proxy" >/dev/null
  fi
  # SSH as on a cloud image: each host makes its own host keys at first boot
  # (none are baked in), keys only, no root login. The login user and its
  # key come at create time (molecule/_shared/create.yml, as cloud-init
  # does). pam_loginuid cannot write the audit login uid in a container.
  as_root rm -f "$root"/etc/ssh/ssh_host_*
  as_root mkdir -p "$root/etc/systemd/system/ssh.service.d"
  printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' |
    as_root tee "$root/etc/systemd/system/ssh.service.d/testbed-host-keys.conf" >/dev/null
  printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\nUseDNS no\n' |
    as_root tee "$root/etc/ssh/sshd_config.d/testbed.conf" >/dev/null
  as_root sed -i 's/^session\s\+required\s\+pam_loginuid.so/session optional pam_loginuid.so/' "$root/etc/pam.d/sshd"
  # Ansible's modules compiled once per host, not at every run (about a third
  # of a module run's CPU; tests/testbed/ansiballz_pycache.py says how).
  as_root install -m 0644 "$HERE/ansiballz_pycache.py" "$root/usr/lib/python3/dist-packages/testbed_ansiballz_pycache.py"
  echo 'import testbed_ansiballz_pycache' | as_root tee "$root/usr/lib/python3/dist-packages/testbed-ansiballz-pycache.pth" >/dev/null
  # systemd makes / a shared mount at boot on a VM but not in a container,
  # where Docker leaves it a slave: a unit's credentials (LoadCredential*=,
  # mounted in a child namespace) then never reach the service and
  # $CREDENTIALS_DIRECTORY stays empty. Do what systemd does on a VM.
  printf '%s\n' '[Unit]' \
    'Description=Make / a shared mount, as systemd does outside containers (service credentials)' \
    'DefaultDependencies=no' 'Before=sysinit.target local-fs-pre.target' '' \
    '[Service]' 'Type=oneshot' 'RemainAfterExit=yes' 'ExecStart=/bin/mount --make-rshared /' '' \
    '[Install]' 'WantedBy=sysinit.target' |
    as_root tee "$root/etc/systemd/system/testbed-shared-root.service" >/dev/null
  as_root chroot "$root" systemctl enable testbed-shared-root.service >/dev/null 2>&1
  # No consoles in a container; keep the boot quiet and fast.
  as_root chroot "$root" systemctl mask getty.target console-getty.service systemd-firstboot.service \
    systemd-udevd.service systemd-modules-load.service sys-kernel-debug.mount >/dev/null 2>&1 || true  # a unit a suite lacks needs no mask
  as_root rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
  as_root touch "$root/etc/machine-id"
  as_root chroot "$root" apt-get clean
  as_root rm -rf "$root/var/lib/apt/lists/"*
  as_root tar -C "$root" -c . | docker import \
    -c 'CMD ["/lib/systemd/systemd"]' -c 'ENV container=docker' \
    -c "LABEL matcraft.testbed.fingerprint=$fp" - "$IMAGE_REPO:$suite" >/dev/null
  as_root rm -rf "$root" "$root.log"
  log "built $IMAGE_REPO:$suite ($fp)"
}
# --- end recipe ---

cmd_images() {
  engine_up || die "no Docker engine: run '$0 engine' first"
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  local mirror suite fp have
  mirror=$(host_mirror)
  for suite in $SUITES; do
    fp=$(fingerprint "$suite")
    # Empty when the image does not exist yet.
    have=$(docker image inspect -f '{{ index .Config.Labels "matcraft.testbed.fingerprint" }}' "$IMAGE_REPO:$suite" 2>/dev/null || true)
    if [ "$have" = "$fp" ] && [ "${TESTBED_REBUILD:-0}" != 1 ]; then
      log "$IMAGE_REPO:$suite is up to date ($fp)"; continue
    fi
    if ! suite_served "$mirror" "$suite"; then
      log "NOTE: suite $suite is not served by the mirror or unknown to debootstrap: image not built"
      continue
    fi
    build_image "$suite" "$fp" "$mirror"
  done
}

# Host tools: command -> Debian package.
HOST_TOOLS="promtool:prometheus amtool:prometheus-alertmanager mtail:mtail debootstrap:debootstrap make:make"
cmd_tools() {
  local pair cmd pkg missing=""
  for pair in $HOST_TOOLS; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $pkg"
  done
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then missing="$missing python3-venv"; fi
  if [ -z "$missing" ]; then log "host tools present"; return 0; fi
  log "installing host tools:$missing"
  # shellcheck disable=SC2086
  apt_install $missing
  # The packages may start services where systemd runs; the tests need only the binaries.
}

cmd_status() {
  engine_up && log "engine: up" || log "engine: down"
  docker image ls "$IMAGE_REPO"
}

case "${1:-all}" in
  engine) cmd_engine ;;
  cache) cmd_cache ;;
  images) cmd_images ;;
  tools) cmd_tools ;;
  all) cmd_tools; cmd_engine; cmd_cache; cmd_images ;;
  status) cmd_status ;;
  *) die "usage: $0 {tools|engine|cache|images|all|status}" ;;
esac
