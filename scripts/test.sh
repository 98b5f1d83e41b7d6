#!/usr/bin/env bash
# The test suite (fast, CPU-only, tiny networks and tiny data made in the tests).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec .venv/bin/python -m pytest "$@"
