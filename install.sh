#!/usr/bin/env bash
# Create .venv and install the project with its test extras. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# pip compiles every installed module to bytecode on one core; here pip only unpacks (--no-compile) and compileall
# then compiles on every core (measured 2026-12-07 on a 2-core machine: 53 + 33 s instead of 100 s). The bytecode
# must exist: where PYTHONDONTWRITEBYTECODE is set, Python would otherwise compile torch anew in every process.
if [ -d /etc/xdg/pip ]; then
  # On machines that keep these releases on disk, take them from there (no multi-GB download).
  .venv/bin/python -m pip install --quiet --no-compile torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/python -m pip install --quiet --no-compile ".[test]"
# -qq and `|| true`: like pip, skip the few files written for other Python versions (they never import here); -x:
# skip the packages' own test suites (a sixth of the source; nothing here imports them; measured: 10-11 s instead of
# 12-13 s on a 2-core machine)
.venv/bin/python -m compileall -qq -j 0 -x '/tests?/' .venv/lib/python3*/site-packages || true
echo "installed into .venv"
