#!/usr/bin/env bash
# The wheel, not an editable install, gives a working proxy-compose: it finds its conf/, recipes/ and the tiny
# family models from site-packages. Builds from a copy of the tree (no build/ left in the checkout), installs
# into a venv that reuses the system's torch, and runs from a folder outside the checkout.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 PIP_DISABLE_PIP_VERSION_CHECK=1

mkdir "$work/src"
tar -C "$repo" --exclude=./.git --exclude=./build --exclude='*.egg-info' --exclude=./outputs --exclude=./multirun \
  --exclude=./.venv -cf - . | tar -C "$work/src" -xf -
python -m venv --system-site-packages --without-pip "$work/venv"  # the system pip and setuptools build it
"$work/venv/bin/python" -m pip install -q --no-deps --no-build-isolation "$work/src"
rm -rf "$work/src"

cd "$work"
"$work/venv/bin/python" - <<'PY'
import composer, experts.family, sys
for module in (composer, experts.family):
    assert module.__file__.startswith(sys.prefix), f"{module.__name__} comes from {module.__file__}, not the wheel"
PY
"$work/venv/bin/proxy-compose" validate
"$work/venv/bin/proxy-compose" hydra.run.dir="$work/run" decoding.max_new_tokens=16
test "$(wc -l < "$work/run/completions.jsonl")" -eq 4
"$work/venv/bin/proxy-compose" -m hydra.sweep.dir="$work/sweep" objectives.code.weight=0,1 decoding.max_new_tokens=8 \
  'prompts=["Write a function add(a, b) that returns the sum of a and b."]'
"$work/venv/bin/proxy-compose" report "$work/sweep" > /dev/null
test -s "$work/sweep/pareto.png"
echo "wheel check passed"
