#!/usr/bin/env bash
# The README's commands:  ./run.sh demo       (set up, then the demo on the embedded default)
#                         ./run.sh test       (set up, then the test suite)
#                         ./run.sh test-ros   (set up, then the ROS 2 install tests over ../shared/ros2-overlay)
# Set-up is idempotent: a local .venv/ at the repository root, reinstalled only when setup.py or
# constraints.txt change, then the pinned third-party assets (`vltseg setup`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"
venv="$root/.venv"
stamp="$venv/.vltseg-installed"
want="$(cat setup.py constraints.txt | sha256sum | cut -d' ' -f1)"

setup_env() {
  if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating $venv"
    python3 -m venv "$venv"
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing vltseg and its dependencies into $venv (first time: several minutes)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[all]"
    echo "$want" > "$stamp"
  fi
  "$venv/bin/vltseg" setup
}

cmd="${1:-}"
shift || true
case "$cmd" in
  demo)
    setup_env
    exec "$venv/bin/vltseg" demo "$@"
    ;;
  test)
    setup_env
    exec "$venv/bin/python" -m pytest test "$@"
    ;;
  test-ros)
    setup_env
    exec scripts/test_ros_install.sh "$venv" "$@"
    ;;
  setup)
    setup_env
    ;;
  *)
    echo "usage: ./run.sh demo|test|test-ros|setup [args...]" >&2
    exit 2
    ;;
esac
