#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py): run from the repository root on a machine with an NVIDIA GPU.
# Uses .venv/bin/python when the README's set-up made one, else $PYTHON or python3.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$([ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python3)}"
cd "$root"
exec timeout 300 "$py" scripts/gpu_check.py "$@"
