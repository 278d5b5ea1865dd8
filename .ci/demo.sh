#!/usr/bin/env bash
# The README's `make demo`: build the demo store and show it. Arguments: venv bin dir, demo dir, store dir.
set -euo pipefail
BIN=$1 DEMO=$2 STORE=$3

echo "== demo COCO root: $DEMO"
"$BIN/pipeline" make-demo --out "$DEMO"

# No real Depth Anything V2 weights can be downloaded here: the demo uses a tiny RANDOM model in the real
# checkpoint format, so its depth (and the normals made from it) is meaningless noise.
DEPTH_CKPT=$("$BIN/python" -c "from teachers.tiny import save_tiny_checkpoint; \
print(save_tiny_checkpoint('depth-anything-v2', '$DEMO/checkpoints/depth-anything-v2'))")
echo "== NOTE: depth comes from a TINY RANDOM Depth Anything V2 ($DEPTH_CKPT): no real weights offline,"
echo "==       so the depth and normals columns are noise. Text: real RapidOCR (weights ship in its wheel)."
echo "==       Pose, panoptic and captions: the demo's COCO ground truth (pose-gt, panoptic-gt, caption-gt)."

for SPLIT in train2017 val2017; do  # val reuses train's vocabulary, so train goes first
  echo "== build-targets $SPLIT on a local Ray cluster"
  "$BIN/pipeline" build-targets --executor ray --num-cpus 2 --coco-root "$DEMO" --out "$STORE" --split "$SPLIT" \
    --shard-size 8 --device cpu --batch-size 4 \
    --depth-teacher depth-anything-v2 --depth-checkpoint "$DEPTH_CKPT" \
    --panoptic-teacher panoptic-gt --text-teacher rapidocr --caption-teacher caption-gt \
    --glove "$DEMO/glove/glove.demo.300d.txt"
  "$BIN/shards" --shards "$STORE" --split "$SPLIT" verify
done
echo "== distil your own images: a folder of photos without annotations and a short video, model teachers only"
echo "==   (TINY RANDOM ViTPose, Mask2Former and VisionGPT2, so their people, panoptic and captions are noise;"
echo "==   every detection kept, at most 3 people an image, so that the pose column has some; vocabulary: train's)"
POSE_CKPT=$("$BIN/python" -c "from teachers.tiny import save_tiny_checkpoint; \
print(save_tiny_checkpoint('vitpose', '$DEMO/checkpoints/vitpose'))" 2>/dev/null)
PAN_CKPT=$("$BIN/python" -c "from teachers.tiny import save_tiny_checkpoint; \
print(save_tiny_checkpoint('mask2former', '$DEMO/checkpoints/mask2former'))" 2>/dev/null)
CAP_CKPT=$("$BIN/python" -c "from teachers.tiny import save_tiny_checkpoint; \
print(save_tiny_checkpoint('visiongpt2', '$DEMO/checkpoints/visiongpt2'))" 2>/dev/null)
for SPLIT in photos robot; do
  if [ "$SPLIT" = photos ]; then SOURCE=(--images "$DEMO/val2017"); else SOURCE=(--videos "$DEMO/videos" --frame-step 4); fi
  "$BIN/pipeline" build-targets --executor local --out "$STORE" "${SOURCE[@]}" --split "$SPLIT" --shard-size 8 \
    --device cpu --batch-size 4 --depth-teacher depth-anything-v2 --depth-checkpoint "$DEPTH_CKPT" \
    --pose-teacher vitpose --pose-checkpoint "$POSE_CKPT" --pose-param score_threshold=0 --pose-param max_persons=3 \
    --panoptic-teacher mask2former --panoptic-checkpoint "$PAN_CKPT" --text-teacher rapidocr \
    --caption-teacher visiongpt2 --caption-checkpoint "$CAP_CKPT" --glove "$DEMO/glove/glove.demo.300d.txt"
  "$BIN/shards" --shards "$STORE" --split "$SPLIT" verify
done
"$BIN/pipeline" status --out "$STORE" --split train2017  # the other settings come from the last build
"$BIN/shards" --shards "$STORE" --split train2017 show 397133 --out "$STORE/contact-sheet-397133.png"
"$BIN/shards" --shards "$STORE" --split train2017 report --out "$DEMO/report" --no-progress  # open index.html

echo "== student: a short training run of the TINY model on the demo store (CPU)"
"$BIN/student" train --shards "$STORE" --model tiny --epochs 2 --steps-per-epoch 4 --batch-size 4 --workers 2 \
  --device cpu --out "$DEMO/runs/student" --overwrite  # a second `make demo` replaces the first run
"$BIN/student" eval --checkpoint "$DEMO/runs/student/last.pt" --shards "$STORE" --split val2017 \
  --json "$DEMO/eval.json" --no-progress
"$BIN/student" predict --checkpoint "$DEMO/runs/student/last.pt" "$DEMO/val2017/000000000073.jpg" \
  --vocab "$STORE/train2017/vocab.json" --out "$DEMO/predictions" --json
"$BIN/student" export --checkpoint "$DEMO/runs/student/last.pt" --onnx "$DEMO/student.onnx"
echo "== done: contact sheet $STORE/contact-sheet-397133.png, report $DEMO/report/index.html,"
echo "==       prediction panel $DEMO/predictions/000000000073.panel.png"
echo "==       (the tiny student trained for 8 steps: its predictions are noise; train longer on real targets)"
