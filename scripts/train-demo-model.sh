#!/usr/bin/env bash
# Train the shipped demo UNETR ("demo — not for clinical use") with bm-train on synthetic patients.
#
# Reproducible: fixed phantom seed, training seed and settings; resumable (re-running continues from
# runs/demo/last.pt). The best model so far is exported after every validation into
# segmentation/models/demo-unetr/ as a complete model directory (config.json + weights.pt + MODEL_CARD.md).
#
# On a shared CPU machine run it in the background, niced, with one thread:
#   nohup nice -n 19 scripts/train-demo-model.sh > runs/demo/stdout.log 2>&1 &
# Environment: THREADS (default 1), MAX_MINUTES (default 180), DEVICE (auto|cpu|cuda, default auto),
# RUN_DIR (default runs/demo), EXPORT (default segmentation/models/demo-unetr; point it elsewhere to keep
# the shipped model untouched until a run is judged). Extra arguments are passed on to bm-train.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${RUN_DIR:-runs/demo}"
mkdir -p "$RUN_DIR"
export OMP_NUM_THREADS="${THREADS:-1}" MKL_NUM_THREADS="${THREADS:-1}"
exec .venv/bin/python -m segmentation.train \
  --phantoms 100 --phantom-seed 1000 --seed 0 \
  --demo-spacing 2.0 --demo-patch 48 \
  --run-dir "$RUN_DIR" --export "${EXPORT:-segmentation/models/demo-unetr}" \
  --epochs 1000 --steps-per-epoch 100 --batch-size 4 --lr 1e-3 \
  --loss dicebce --intensity-aug --positive-fraction 0.5 --hard-negative-fraction 0.25 \
  --threads "${THREADS:-1}" --device "${DEVICE:-auto}" --max-minutes "${MAX_MINUTES:-180}" \
  --resume "$@"
