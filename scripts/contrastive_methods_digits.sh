#!/usr/bin/env bash
# docs/methods.md's CACR and G-SimCLR rows: every arm x 3 seeds (all labels, then 72 labels by
# re-evaluating the same runs), the pseudo-classes, the geometry. About 35 min on 2 busy CPU cores.
# Usage: scripts/contrastive_methods_digits.sh [ROOT=/tmp/jaxsup/contrastive_methods]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-/tmp/jaxsup/contrastive_methods}
T="python scripts/seeds_table.py --seeds 0 1 2 --metric linear_probe/top1 --metric knn/top1"
FEW=(--set "evals.linear_probe.train_split=train[:5%]" --set "evals.knn.train_split=train[:5%]")
CACR_ARMS=(--arm "SimCLR=configs/cacr_digits.py:ntxent,views=2" --arm "CACR 2 views=configs/cacr_digits.py:views=2"
           --arm "NT-Xent 4 views=configs/cacr_digits.py:ntxent" --arm "CACR 4 views=configs/cacr_digits.py"
           --arm "random init=configs/cacr_digits.py:ntxent,views=2|total_steps=0")
$T --root "$ROOT/cacr" "${CACR_ARMS[@]}"
python scripts/cacr_geometry.py --root "$ROOT/cacr" "${CACR_ARMS[@]:0:8}"
# G-SimCLR: pseudo-classes from the SimCLR run above (seed 0), k-means and the true classes.
python scripts/gsimclr_pseudo_classes.py --config configs/gsimclr_digits.py --run "$ROOT/cacr/SimCLR/seed0" \
    --out "$ROOT/guide_kmeans.npz" --k 10
python scripts/gsimclr_pseudo_classes.py --config configs/gsimclr_digits.py --run "$ROOT/cacr/SimCLR/seed0" \
    --out "$ROOT/guide_true.npz" --oracle
G_ARMS=(--arm "SimCLR random batches=configs/gsimclr_digits.py"
        --arm "G-SimCLR k-means=configs/gsimclr_digits.py:guide=$ROOT/guide_kmeans.npz"
        --arm "G-SimCLR true classes=configs/gsimclr_digits.py:guide=$ROOT/guide_true.npz")
$T --root "$ROOT/gsimclr" "${G_ARMS[@]}"
# 72 labels: the same runs re-evaluated (finished runs only evaluate).
$T --root "$ROOT/cacr" "${FEW[@]}" "${CACR_ARMS[@]}"
$T --root "$ROOT/gsimclr" "${FEW[@]}" "${G_ARMS[@]}"
