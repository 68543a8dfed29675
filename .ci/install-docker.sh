#!/usr/bin/env bash
# Make a Docker engine available on a Debian (bookworm) CI machine, idempotently.
#
#   1. install docker.io + iptables from Debian packages if `dockerd` is missing;
#   2. start `dockerd` in the background (log: /tmp/dockerd.log) if `docker info` fails;
#   3. wait up to 30 s for `docker info` to answer.
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

if ! command -v dockerd >/dev/null 2>&1; then
  log "dockerd not found: installing docker.io and iptables from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends docker.io iptables
fi

if docker info >/dev/null 2>&1; then
  log "docker engine already running"
  exit 0
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  log "starting dockerd (log: /tmp/dockerd.log)"
  # setsid + nohup: the daemon must outlive this script and the CI step's shell.
  $SUDO setsid nohup dockerd >/tmp/dockerd.log 2>&1 </dev/null &
fi

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    log "docker engine ready ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    # Let a non-root CI user use the socket without sudo.
    if [ -n "$SUDO" ]; then
      $SUDO chmod 666 /var/run/docker.sock || true
    fi
    exit 0
  fi
  sleep 0.5
done

log "docker info still failing after 30 s; last lines of /tmp/dockerd.log:"
tail -n 40 /tmp/dockerd.log >&2 || true
exit 1
