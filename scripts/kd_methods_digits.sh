#!/usr/bin/env bash
# docs/methods.md's trilateral-geometry KD and PromptKD rows: teachers once, then every arm x 3 seeds,
# sequentially. Usage: scripts/kd_methods_digits.sh [ROOT=/tmp/jaxsup/kd_methods]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-/tmp/jaxsup/kd_methods}
TRAIN="python -m jaxsup.train"
T="python scripts/seeds_table.py --seeds 0 1 2"
# Trilateral-geometry KD: a strong teacher (CNN, all of train) and a weak one (72 labels, 100 steps).
$TRAIN --config configs/supervised_digits.py --workdir "$ROOT/teacher"
$TRAIN --config configs/supervised_digits.py --workdir "$ROOT/weak_teacher" --config.data.train_split='train[:5%]' \
    --config.total_steps=100 --config.batch_size=64 --config.checkpoint.every=100 --config.evals.test.every=100
for teacher in teacher weak_teacher; do
  $T --root "$ROOT/tgeo_$teacher" --metric test/top1 --metric test/teacher_top1 --set "tgeo.teacher.path=$ROOT/$teacher" \
     --arm "TGeo-KD=configs/tgeo_kd_digits.py" --arm "KD fixed alpha=configs/tgeo_kd_digits.py:fixed" \
     --arm "CE only (alpha 0.001)=configs/tgeo_kd_digits.py:fixed|tgeo.alpha=0.001"
done
$T --root "$ROOT/tgeo_weak_a03" --metric test/top1 --set "tgeo.teacher.path=$ROOT/weak_teacher" \
   --arm "KD fixed alpha 0.3=configs/tgeo_kd_digits.py:fixed|tgeo.alpha=0.3"
$T --root "$ROOT/tgeo_swapped" --metric test/top1 --metric test/teacher_top1 --set "tgeo.teacher.path=$ROOT/teacher" \
   --arm "TGeo-KD=configs/tgeo_kd_digits.py:swapped" --arm "KD fixed alpha=configs/tgeo_kd_digits.py:fixed,swapped" \
   --arm "CE only (alpha 0.001)=configs/tgeo_kd_digits.py:fixed,swapped|tgeo.alpha=0.001"
# PromptKD: the CLIP teacher, its CoOp prompt (3 seeds; seed 0 is the students' teacher), the students.
$TRAIN --config configs/clip_digits.py --workdir "$ROOT/clip"
$T --root "$ROOT/coop" --metric test/top1 --set "promptkd.clip.path=$ROOT/clip" \
   --arm "CoOp=configs/promptkd_digits.py:prompt" --arm "hand prompt=configs/promptkd_digits.py:prompt|total_steps=0"
$T --root "$ROOT/promptkd" --metric test/top1 --metric test/teacher_top1 --metric test/agreement \
   --set "promptkd.clip.path=$ROOT/clip" --set "promptkd.prompt_run=$ROOT/coop/CoOp/seed0" \
   --arm "PromptKD=configs/promptkd_digits.py" \
   --arm "PromptKD zero-shot teacher=configs/promptkd_digits.py|promptkd.prompt_run=" \
   --arm "CE on 72 labels=configs/promptkd_digits.py:supervised"
