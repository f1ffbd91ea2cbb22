#!/usr/bin/env bash
# The failguard command line end to end, on synthetic rollout logs in a temporary directory:
# plan -> fit -> evaluate -> report -> health -> calibrate -> export.
# A few seconds at this size. Usage:  bash examples/05_cli_flow.sh [--keep]
# Set PYTHON (default: python) and FAILGUARD (default: failguard) to use another environment.
set -euo pipefail

PYTHON="${PYTHON:-python}"
FAILGUARD="${FAILGUARD:-failguard}"
WORK="$(mktemp -d)"
if [[ "${1:-}" != "--keep" ]]; then trap 'rm -rf "$WORK"' EXIT; fi
echo "working in $WORK"

# 1. Rollout logs. With a real robot they come from failguard.Recorder or a wrapper's
#    record mode; here failguard's synthetic generator stands in.
"$PYTHON" - "$WORK" <<'PY'
import sys
from pathlib import Path
from failguard import write_rollout
from failguard.synthetic import make_rollouts

root = Path(sys.argv[1])
kw = dict(length=40, embedding_dim=16, n_samples=16, horizon=4, action_dim=2)
sets = {
    "train": make_rollouts(40, seed=0, **kw) + make_rollouts(5, kind="failure", seed=1, **kw),
    "test": make_rollouts(12, seed=2, **kw) + make_rollouts(12, kind="failure", seed=3, **kw)
    + make_rollouts(6, kind="ood_benign", seed=4, **kw),
    "new_successes": make_rollouts(20, seed=5, **kw),
    "drifted_successes": make_rollouts(20, kind="ood_benign", seed=6, **kw),
}
for name, rollouts in sets.items():
    for i, r in enumerate(rollouts):
        write_rollout(r, root / name / f"rollout_{i:04d}")
    print(f"{name}: {len(rollouts)} rollouts")
PY

# 2. How many successful calibration rollouts does alpha = 0.1 need?
"$FAILGUARD" plan --alpha 0.1

# 3. Fit the scores on 30 % of the successful training rollouts, calibrate on the rest.
"$FAILGUARD" -q fit "$WORK/train" -o "$WORK/detector" --alpha 0.1 --epochs 5 --window 5 \
    --fit-fraction 0.3

# 4. Evaluate on held-out labelled rollouts (metrics overall and per group, also as JSON).
"$FAILGUARD" -q evaluate "$WORK/detector" "$WORK/test" --json "$WORK/metrics.json"

# 5. One self-contained HTML report (needs failguard[plots]).
"$FAILGUARD" -q report "$WORK/detector" "$WORK/test" -o "$WORK/report.html" --max-traces 4 \
    || { code=$?; [[ $code == 3 ]] && echo "(report skipped: matplotlib missing)" || exit $code; }

# 6. Calibration health on new successes: exit 0 = fine, 4 = recalibrate, 5 = too few to tell.
"$FAILGUARD" -q health "$WORK/detector" "$WORK/new_successes"
set +e
"$FAILGUARD" -q health "$WORK/detector" "$WORK/drifted_successes"
code=$?
set -e
if [[ $code == 4 ]]; then
    # Recalibrate from the new success logs: the fitted scores are kept, no retraining.
    "$FAILGUARD" -q calibrate "$WORK/detector" "$WORK/drifted_successes" -o "$WORK/detector_v2"
elif [[ $code != 0 ]]; then
    exit $code
fi

# 7. Export the monitor to ONNX for failguard.runtime.OnnxMonitor (needs failguard[export]).
"$FAILGUARD" export "$WORK/detector" -o "$WORK/monitor.onnx" \
    || { code=$?; [[ $code == 3 ]] && echo "(export skipped: onnx missing)" || exit $code; }

# 8. Bad input gives a one-line error and exit code 1.
set +e
"$FAILGUARD" evaluate "$WORK/detector" "$WORK/does_not_exist"
code=$?
set -e
[[ $code == 1 ]] || { echo "expected exit code 1, got $code"; exit 1; }
echo "done; artefacts in $WORK"
