#!/usr/bin/env bash
# The main job on the embedded default: the shipped Fashion-MNIST EGC model classifies real test
# images and draws a class-balanced grid into ./egc-demo (no data set, no network needed).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec .venv/bin/egc demo --out "${1:-egc-demo}"
