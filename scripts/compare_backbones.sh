#!/usr/bin/env bash
# Recipe: EfficientNet-Lite0 / Lite1 / Lite2 under one short budget on the release data (the same
# grouped split as scripts/train_release.sh; its steps 1-2 must have run), so that the backbone
# of the release is chosen on validation, not by taste. Each backbone: 224 px, last 12 stages
# fine-tuned, the release augmentations, 2 epochs of MAX_STEPS steps x 32 crops, validation ROC
# AUC after each epoch (the run's history.json) and its wall time.
#
#   scripts/compare_backbones.sh [WORK_DIR]     WORK_DIR as train_release.sh's (runs/release)
#   MAX_STEPS=120 BACKBONES="efficientnet_lite0 efficientnet_lite1 efficientnet_lite2"
set -euo pipefail

WORK=${1:-runs/release}
MAX_STEPS=${MAX_STEPS:-120}
BACKBONES=${BACKBONES:-efficientnet_lite0 efficientnet_lite1 efficientnet_lite2}
export OMP_NUM_THREADS=1

for bb in $BACKBONES; do
    start=$(date +%s)
    torchrun --standalone --nproc-per-node 2 -m pipeline train \
        --model frame --backbone "$bb" --pretrained --manifest-dir "$WORK/manifests" \
        --out-dir "$WORK/compare" --run-name "$bb" --image-size 224 --train-blocks 12 \
        --augment flip color jpeg blur crop rescale compress --epochs 2 --max-steps "$MAX_STEPS" \
        --batch-size 16 --lr 3e-4 --threads 1 --patience 2 \
        --data-description "DFDC face crops (dfdc_faces), backbone comparison"
    echo "$bb: $(( $(date +%s) - start )) s wall" | tee -a "$WORK/compare/times.txt"
done
