#!/usr/bin/env bash
# docs/methods.md's SLA, co-teaching and LOOK rows: every arm x 3 seeds, sequentially (about 45 min on
# 2 busy CPU cores). Usage: scripts/supervision_methods_digits.sh [ROOT=/tmp/jaxsup/methods]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-/tmp/jaxsup/methods}
T="python scripts/seeds_table.py --seeds 0 1 2"
SLA_M="--metric test/top1 --metric test_single/top1 --metric test_sd/top1"
$T --root "$ROOT/sla_full" $SLA_M --arm "SLA=configs/sla_digits.py" \
   --arm "rotation augmentation=configs/sla_digits.py:augment" --arm "plain CE=configs/sla_digits.py:plain"
$T --root "$ROOT/sla_few" $SLA_M --arm "SLA=configs/sla_digits.py:few" \
   --arm "rotation augmentation=configs/sla_digits.py:few,augment" --arm "plain CE=configs/sla_digits.py:few,plain"
for setting in "sym20:noise=0.2" "sym40:noise=0.4" "pair20:pair,noise=0.2" "pair40:pair,noise=0.4"; do
  name=${setting%%:*}; arg=${setting#*:}
  $T --root "$ROOT/coteaching_$name" --metric test/top1 --metric test_2/top1 \
     --arm "co-teaching=configs/coteaching_digits.py:$arg" --arm "CE=configs/coteaching_digits.py:ce,$arg"
done
for setting in "sym40:noise=0.4" "pair40:pair,noise=0.4"; do
  name=${setting%%:*}; arg=${setting#*:}
  $T --root "$ROOT/coteaching_dropout_$name" --metric test/top1 --metric test_2/top1 \
     --arm "co-teaching + dropout=configs/coteaching_digits.py:dropout,$arg" \
     --arm "CE + dropout=configs/coteaching_digits.py:ce,dropout,$arg"
done
$T --root "$ROOT/look" --metric new_probe/top1 --metric new_knn/top1 --metric old_knn/top1 \
   --arm "LOOK=configs/look_digits.py" --arm "CE=configs/look_digits.py:ce" \
   --arm "random init=configs/look_digits.py:ce|total_steps=0"
