#!/usr/bin/env bash
# Create .venv and install the project with its test extras. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ -d /etc/xdg/pip ]; then
  # On machines that keep these releases on disk, take them from there (no multi-GB download).
  .venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/python -m pip install --quiet ".[test]"
echo "installed into .venv"
