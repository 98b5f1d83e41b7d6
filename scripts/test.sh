#!/usr/bin/env bash
# The test suite (fast, CPU-only, tiny networks and tiny data made in the tests). Records the 25 slowest
# tests (--durations). FAST=1 leaves out the tests marked slow in tests/conftest.py; CI runs everything.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ "${FAST:-0}" = 1 ]; then
  exec .venv/bin/python -m pytest -m "not slow" --durations=25 "$@"
fi
exec .venv/bin/python -m pytest --durations=25 "$@"
