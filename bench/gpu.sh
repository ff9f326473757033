#!/usr/bin/env bash
# Every chapter in the `full` profile on this machine's GPU: per-chapter wall time, peak GPU memory (and whether it
# fits a 16 GB T4) and every check's measured value, into bench/results-PROFILE-HOST.json, and a table on stdout.
# Without a GPU it runs the `fast` profile on the CPU (that is how the test suite checks it). Extra arguments go to
# tools/bench.py: --chapters 01 06, --profile fast, --out FILE, --timeout SECONDS.
#
#   bash bench/gpu.sh                       # all chapters, full on a GPU
#   bash bench/gpu.sh --chapters 06 07      # two of them
#   bash bench/gpu.sh --train               # also time `python -m genbook train` for each family (2000 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
ARGS=()
TRAIN=0
for a in "$@"; do
  if [ "$a" = "--train" ]; then TRAIN=1; else ARGS+=("$a"); fi
done
STATUS=0
"$PY" tools/bench.py "${ARGS[@]}" || STATUS=$?
if [ "$TRAIN" = 1 ]; then
  OUT=$(mktemp -d)
  for family in vae gan flow pixelcnn diffusion flow-matching; do
    "$PY" -m genbook train "$family" --steps "${BENCH_TRAIN_STEPS:-2000}" --out "$OUT" --sample-every 0 --quiet || STATUS=1
  done
  "$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
print("\n| family | steps | seconds | steps/s | peak GPU MB | val loss |\n|---|---|---|---|---|---|")
for f in sorted(Path(sys.argv[1]).glob("*.json")):
    d = json.loads(f.read_text())
    val = d["val_loss"][-1][1] if d["val_loss"] else None
    print(f"| {d['config']['family']} | {d['steps']} | {d['seconds']} | {d['steps_per_second']} | {d['peak_memory_mb']} | {val if val is None else round(val, 4)} |")
PYEOF
fi
exit $STATUS
