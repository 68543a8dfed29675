#!/usr/bin/env bash
# Virtual environments for the provider SDKs that cannot share one environment
# (e2b needs connectrpc>=0.12.1,<0.13; prime-sandboxes needs connectrpc<0.12), each with the
# provider stand-ins (standins/) its suite runs against.
set -euo pipefail
cd "$(dirname "$0")/.."
for provider in e2b prime; do
  venv=".venv-${provider}"
  if [ ! -x "${venv}/bin/python" ]; then
    python3 -m venv "${venv}"
  fi
  "${venv}/bin/python" -m pip install -q -e ".[dev,${provider}]" -e ./standins
done

# The framework integrations, each in a venv of its own: verifiers pins openai<3 and pulls
# prime-sandboxes (whose connectrpc pin conflicts with e2b); dspy pulls litellm and gepa.
# tests/integrations/test_isolated_integrations.py runs their suites there.
for integration in dspy verifiers; do
  venv=".venv-${integration}"
  if [ ! -x "${venv}/bin/python" ]; then
    python3 -m venv "${venv}"
  fi
  "${venv}/bin/python" -m pip install -q -e ".[${integration},docker]" "pytest>=8" "pytest-timeout>=2.3"
done
