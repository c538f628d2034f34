#!/usr/bin/env bash
# The README's "Accuracy frontier" figures: three seeds of each headline experiment, kept
# under results/<experiment>/seed<N> (ignored by git).
#
#     bash benchmarks/frontier.sh [experiment ...]   # default: all of them, about an hour
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
experiments=("$@")
if [ ${#experiments[@]} -eq 0 ]; then
  experiments=(cnn_fast cnn_small cnn_strong fashion_cnn mlp mlp_augment)
fi
for experiment in "${experiments[@]}"; do
  echo "== $experiment"
  "$python" benchmarks/seeds.py --keep "results/$experiment" "+experiment=$experiment"
done
