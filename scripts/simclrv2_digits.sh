#!/usr/bin/env bash
# SimCLRv2 on the offline digits, three runs chained through their checkpoints:
#   1. pretrain: SimCLR (NT-Xent), no labels          configs/simclr_digits.py
#   2. fine-tune the encoder + a new head on 10 % labels  configs/simclrv2_finetune_digits.py
#   3. distil into a small CNN on unlabelled images,
#      -sum p_T(y|x;tau) log p_S(y|x;tau)                configs/simclrv2_distill_digits.py
# then prints each run's final test metrics.
#
#   scripts/simclrv2_digits.sh [ROOT]         (default ROOT=/tmp/jaxsup/simclrv2)
#   FRACTION=1pct scripts/simclrv2_digits.sh  fine-tune on train[:1%] instead
#   RUNLOCAL=1 scripts/simclrv2_digits.sh     20-step smoke version of every stage
# Re-running resumes / skips finished stages (each run resumes from its workdir).
set -euo pipefail
ROOT=${1:-/tmp/jaxsup/simclrv2}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
args() {  # config-file arg switches: $1 plus "runlocal" when RUNLOCAL is set
  local a=$1
  if [[ -n "${RUNLOCAL:-}" ]]; then a=${a:+$a,}runlocal; fi
  echo "${a:+:$a}"
}
$PY -m jaxsup.train --config "configs/simclr_digits.py$(args "")" --workdir "$ROOT/pretrain"
$PY -m jaxsup.train --config "configs/simclrv2_finetune_digits.py$(args "${FRACTION:-}")" \
  --workdir "$ROOT/finetune" --config.finetune.init_from="$ROOT/pretrain"
$PY -m jaxsup.train --config "configs/simclrv2_distill_digits.py$(args "")" \
  --workdir "$ROOT/distill" --config.distill.teacher.path="$ROOT/finetune"
$PY - "$ROOT" <<'PYEOF'
import json, os, sys
root = sys.argv[1]
for stage in ("pretrain", "finetune", "distill"):
    with open(os.path.join(root, stage, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if any(k.endswith(("top1", "agreement", "kl")) for k in r)]
    last = evals[-1] if evals else {}
    shown = {k: round(v, 4) for k, v in last.items() if k != "step" and not k.endswith(("count", "loss"))}
    print(f"simclrv2 {stage:8s} step {last.get('step')}: {json.dumps(shown)}")
PYEOF
