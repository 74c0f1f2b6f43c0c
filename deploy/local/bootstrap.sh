#!/usr/bin/env bash
# Installs what the two README commands need from Debian's packages, only when missing:
# python3-venv (for the virtualenv) and prometheus (which ships promtool); with --test also
# docker-compose, whose `config` validates the compose file without a Docker engine.
set -euo pipefail

need=()
if [ "${1:-}" = "--test" ]; then
  command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
fi
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "drm-exporter needs Debian packages: ${need[*]}" >&2
  echo "Install them as root: apt-get install -y ${need[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "drm-exporter needs ${need[*]}, and this is not a Debian-like system (no apt-get)." >&2
  echo "Install Prometheus 2.x (prometheus and promtool on PATH) and python3 venv support." >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
# policy-rc.d keeps the package from starting a system-wide Prometheus service on :9090.
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
  echo "apt-get could not install ${need[*]}; install them by hand and run again." >&2
  exit 1
fi
