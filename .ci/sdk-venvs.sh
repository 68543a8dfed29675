#!/usr/bin/env bash
# Virtual environments for the provider SDKs that cannot share one environment
# (e2b needs connectrpc>=0.12.1,<0.13; prime-sandboxes needs connectrpc<0.12).
set -euo pipefail
cd "$(dirname "$0")/.."
for provider in e2b prime; do
  venv=".venv-${provider}"
  if [ ! -x "${venv}/bin/python" ]; then
    python3 -m venv "${venv}"
  fi
  "${venv}/bin/python" -m pip install -q -e ".[dev,${provider}]"
done
