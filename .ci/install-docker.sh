#!/usr/bin/env bash
# Make a Docker engine, with gVisor as its "runsc" runtime, available on a Debian (bookworm) CI
# machine, idempotently.
#
#   1. install docker.io + iptables, and gVisor's runsc, from Debian packages when missing;
#   2. check that runsc can run a sandbox here (`runsc do /bin/true`), and if so register it in
#      /etc/docker/daemon.json as runtime "runsc" (merged into what the file already holds);
#   3. start `dockerd` in the background (log: /tmp/dockerd.log) if `docker info` fails, or make a
#      running one reload its configuration (SIGHUP: running containers are not touched);
#   4. wait up to 30 s for `docker info` to answer (and to list runsc when it was registered).
#
# gVisor is optional here: when runsc cannot be installed or cannot run, the script says why and
# goes on with runc only. The tests then skip their gVisor variant with that reason, unless
# RLM_REQUIRE_GVISOR=1 (set by .ci/run) makes it a failure.
#
# runsc's flags: --network=none (Debian's 2022 build runs containers with no network or the host's;
# the sandbox has none) and --host-uds=open (the runner may connect to the broker's unix socket,
# bind-mounted read-only at /rlm; it cannot create host sockets).
#
# No image registry is needed: `rlm docker build-image` builds the sandbox image locally.
# Run as root (or with sudo). Safe to run again: each step is skipped when already done.
set -euo pipefail

log() { printf '[install-docker] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    log "must run as root (or with sudo available)"
    exit 1
  fi
fi

DAEMON_JSON=/etc/docker/daemon.json
RUNSC=/usr/bin/runsc

packages=()
command -v dockerd >/dev/null 2>&1 || packages+=(docker.io iptables)
[ -x "$RUNSC" ] || packages+=(runsc)
if [ "${#packages[@]}" -gt 0 ]; then
  log "installing ${packages[*]} from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  if ! $SUDO apt-get install -y -q --no-install-recommends "${packages[@]}"; then
    # Docker is required; gVisor is not: retry without runsc before giving up.
    log "apt-get install ${packages[*]} failed; retrying without runsc (gVisor variant off)"
    without=()
    for package in "${packages[@]}"; do
      [ "$package" = runsc ] || without+=("$package")
    done
    if [ "${#without[@]}" -gt 0 ]; then
      $SUDO apt-get install -y -q --no-install-recommends "${without[@]}"
    fi
  fi
fi

# Registers runsc in daemon.json when it can run a sandbox here; prints "changed" when the file
# was written, nothing otherwise.
register_runsc() {
  if [ ! -x "$RUNSC" ]; then
    log "gVisor: $RUNSC is not installed; the docker tests' gVisor variant will not run"
    return 0
  fi
  local probe
  probe=$($SUDO "$RUNSC" --network=none do /bin/true </dev/null 2>&1) || {
    log "gVisor: runsc cannot run a sandbox on this machine, not registering it:"
    printf '%s\n' "$probe" | tail -n 5 | sed 's/^/[install-docker]   /' >&2
    return 0
  }
  $SUDO mkdir -p "$(dirname "$DAEMON_JSON")"
  $SUDO python3 - "$DAEMON_JSON" "$RUNSC" <<'PY'
import json, os, sys

path, runsc = sys.argv[1], sys.argv[2]
config = {}
if os.path.exists(path) and os.path.getsize(path):
    with open(path) as handle:
        config = json.load(handle)
entry = {"path": runsc, "runtimeArgs": ["--network=none", "--host-uds=open"]}
if config.get("runtimes", {}).get("runsc") != entry:
    config.setdefault("runtimes", {})["runsc"] = entry
    with open(path + ".tmp", "w") as handle:
        json.dump(config, handle, indent=2)
        handle.write("\n")
    os.replace(path + ".tmp", path)
    print("changed")
PY
}

engine_has_runsc() {
  docker info --format '{{range $name, $_ := .Runtimes}}{{$name}} {{end}}' 2>/dev/null |
    tr ' ' '\n' | grep -qx runsc
}

changed=$(register_runsc) || {
  log "gVisor: could not update $DAEMON_JSON; going on without runsc"
  changed=""
}
want_runsc=0
if [ -x "$RUNSC" ] && grep -q '"runsc"' "$DAEMON_JSON" 2>/dev/null; then
  want_runsc=1
fi

if docker info >/dev/null 2>&1; then
  if [ "$want_runsc" = 1 ] && { [ -n "$changed" ] || ! engine_has_runsc; }; then
    log "docker engine running: reloading its configuration for runsc (SIGHUP)"
    $SUDO kill -HUP "$(pgrep -xo dockerd)"
  else
    log "docker engine already running"
  fi
elif ! pgrep -x dockerd >/dev/null 2>&1; then
  log "starting dockerd (log: /tmp/dockerd.log)"
  # setsid + nohup: the daemon must outlive this script and the CI step's shell.
  $SUDO setsid nohup dockerd >/tmp/dockerd.log 2>&1 </dev/null &
fi

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1 && { [ "$want_runsc" = 0 ] || engine_has_runsc; }; then
    runtimes=$(docker info --format '{{range $name, $_ := .Runtimes}}{{$name}} {{end}}')
    log "docker engine ready ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'); runtimes: ${runtimes% })"
    # Let a non-root CI user use the socket without sudo.
    if [ -n "$SUDO" ]; then
      $SUDO chmod 666 /var/run/docker.sock || true
    fi
    exit 0
  fi
  sleep 0.5
done

if docker info >/dev/null 2>&1; then
  log "docker engine ready but runsc is not among its runtimes after 30 s: gVisor variant off"
  exit 0
fi
log "docker info still failing after 30 s; last lines of /tmp/dockerd.log:"
tail -n 40 /tmp/dockerd.log >&2 || true
exit 1
