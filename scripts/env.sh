# Sourced by scripts/demo.sh and scripts/test.sh: create (or reuse) .venv and install egc into it.
# Re-running is cheap: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "egc needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python
# torch first and pinned: on a CPU-only machine this picks the CPU build; a range that admits
# newer releases could pull a multi-GB CUDA build. GPU users install their own torch before this.
if ! $VPY -c 'import torch' 2>/dev/null; then
  $VPY -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
stamp=.venv/.egc-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  $VPY -m pip install --quiet --disable-pip-version-check -e ".[test]"
  touch "$stamp"
fi
