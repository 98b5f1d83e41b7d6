#!/usr/bin/env bash
# Headless Chromium and its driver for tests/test_serve_browser.py (Debian packages; skipped when present).
# Called by .ci/run before the test suite so CI always runs the browser test.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "scripts/browser.sh: no apt-get here: install chromium and its chromedriver yourself (the browser test is skipped without them)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# A registry hiccup must not turn the whole suite red: the browser test then skips and says why.
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
  echo "scripts/browser.sh: apt-get could not install chromium chromium-driver: tests/test_serve_browser.py will be skipped" >&2
  exit 0
fi
/usr/bin/chromium --version
