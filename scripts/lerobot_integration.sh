#!/usr/bin/env bash
# Build (once) a separate virtualenv with LeRobot 0.4.4 + failguard, then run the
# LeRobot integration suite (tests/test_lerobot_real.py) in it.
#
# LeRobot 0.4.4 pins torch < 2.11, so it cannot share failguard's main environment;
# the PyPI build of torch 2.10 it pulls in is the CUDA one (about 8.4 GB, a few
# minutes to install). Everything runs on the CPU and offline once installed.
#
# Usage:
#   scripts/lerobot_integration.sh [extra pytest args...]
# Environment:
#   LEROBOT_VENV   where the venv lives (default: ~/.cache/failguard/lerobot-venv)
#   PYTHON         interpreter used to create it (default: python3; needs >= 3.10)
#   LEROBOT_SPEC   what to install (default: "lerobot[pusht]==0.4.4")
#   FAILGUARD_LEROBOT_TIMINGS  write the wrapped/unwrapped timing table there as JSON
# See docs/LEROBOT.md. Not part of .ci/run: the install alone is ~8.8 GB.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LEROBOT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/failguard/lerobot-venv}"
python="${PYTHON:-python3}"
spec="${LEROBOT_SPEC:-lerobot[pusht]==0.4.4}"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import lerobot, gym_pusht" 2>/dev/null; then
    echo "[lerobot-integration] building $venv with $spec (large download: torch 2.10)" >&2
    start=$(date +%s)
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --upgrade pip >/dev/null
    "$venv/bin/python" -m pip install "$spec" pytest
    echo "[lerobot-integration] venv built in $(( $(date +%s) - start )) s" >&2
fi
# failguard itself, editable from this checkout (its torch>=2.2 is met by LeRobot's torch).
"$venv/bin/python" -m pip install --quiet -e "$repo"
"$venv/bin/python" -m pip check >&2 || true

cd "$repo"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$venv/bin/python" -m pytest -p no:cacheprovider -m lerobot -v -s \
    tests/test_lerobot_real.py "$@"
