#!/usr/bin/env bash
# The README's "Accuracy frontier" figures: three seeds of each headline experiment, kept
# under results/<experiment>/seed<N> (ignored by git); then `ensemble` evaluates the three
# cnn_strong models with test-time augmentation, and as ensembles (alone and with the three
# cnn_small models), without and with TTA.
#
#     bash benchmarks/frontier.sh [stage ...]   # default: every stage, about 80 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
stages=("$@")
if [ ${#stages[@]} -eq 0 ]; then
  stages=(cnn_fast cnn_small cnn_strong fashion_cnn mlp mlp_augment ensemble)
fi
for stage in "${stages[@]}"; do
  echo "== $stage"
  if [ "$stage" = ensemble ]; then
    strong=(results/cnn_strong/seed*/model.pt)
    small=(results/cnn_small/seed*/model.pt)
    for model in "${strong[@]}"; do
      "$python" -m mnist_sweep.evaluate "$model" --tta
    done
    for tta in "" --tta; do
      "$python" -m mnist_sweep.evaluate "${strong[@]}" $tta
      "$python" -m mnist_sweep.evaluate "${strong[@]}" "${small[@]}" $tta \
        --out results/ensemble6$tta
    done
  else
    "$python" benchmarks/seeds.py --keep "results/$stage" "+experiment=$stage"
  fi
done
