#!/usr/bin/env bash
# Create .venv and install the project with its test extras. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv --without-pip .venv
# This Python's own pip (22.3 or newer) installs the current pip into .venv: 2.2 s, where ensurepip and an upgrade
# take 5.9 (benchmarks/results/install_steps.md).
python3 -m pip --python .venv/bin/python install --quiet --upgrade pip 2>/dev/null ||
  { .venv/bin/python -m ensurepip --upgrade >/dev/null && .venv/bin/python -m pip install --quiet --upgrade pip; }
# pip compiles every installed module to bytecode on one core; here pip only unpacks (--no-compile) and
# compile_bytecode.py then compiles on every core (measured 2026-12-07 on a 2-core machine: 53 + 33 s with
# compileall -j 0 instead of 100 s; compile_bytecode.py 26.1 s where compileall -j 0 took 34.9). The bytecode must
# exist: where PYTHONDONTWRITEBYTECODE is set, Python would otherwise compile torch anew in every process.
if [ -d /etc/xdg/pip ]; then
  # On machines that keep these releases on disk, take them from there (no multi-GB download).
  .venv/bin/python -m pip install --quiet --no-compile torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/python -m pip install --quiet --no-compile ".[test]"
.venv/bin/python compile_bytecode.py .venv/lib/python3*/site-packages
echo "installed into .venv"
