#!/usr/bin/env bash
# The GPU checks, in one run on a machine with one CUDA device and the project's dependencies installed:
#   tests     the gpu-marked tests (FP32/bf16 training, resume, CPU agreement, the speed options' loss curves)
#   student   bench/student.py: the paper network at batch 32, FP32 and bf16, plain and channels-last, with its
#             model FLOP utilisation, and a real training run per dtype
#   compile   bf16 with channels-last + torch.compile (minutes of compilation)
#   predict   bench/predict.py: the paper's batch-1 FP32 experiment (frames/s, peak memory, convolution share),
#             then predict end to end, eager against the fast path (CUDA graph, FP32 and bf16)
#   predict-compile  the same with the fast path also under torch.compile (minutes of compilation)
#   pipeline  bench/gpu_pipeline.py: build-targets on Ray with GPU teacher actors
#   busy      bench/gpu_pipeline.py --busy: 1000 photos with the five teachers at published sizes (float16), the
#             GPU's busy fraction during the build and the build against the teachers' standalone times
#   teachers  bench/teachers.py at published sizes, float16, the model teachers (detectron2 must be installed)
# Device time is scarce: name the sections a check needs (default all; together they may take 30 minutes). In a
# 15-minute budget, `tests predict busy` first (the fast path's GPU test and frames/s, the build's GPU busy share),
# then `student compile predict-compile` in another.
# Logs go to ${OUT:-gpu-check}/.
#
#   bash bench/gpu_check.sh [tests] [student] [compile] [predict] [predict-compile] [pipeline] [busy] [teachers]
set -uo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
py=${PYTHON:-python3}
sections=" ${*:-tests student compile predict predict-compile pipeline busy teachers} "
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

status=0
want() { [[ $sections == *" $1 "* ]]; }
if want tests; then
  timeout 300 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_student_gpu.py 2>&1 | tee "$out/tests.log" \
      || status=1
fi
if want student; then
  timeout 300 "$py" bench/student.py --device cuda --variants plain,channels_last 2>&1 | tee "$out/student.log" \
      || status=1
fi
if want compile; then
  timeout 420 "$py" bench/student.py --device cuda --rounds 1 --amp bf16 --variants channels_last+compile 2>&1 \
      | tee "$out/student-compile.log" || status=1
fi
if want predict; then
  timeout 240 "$py" bench/predict.py --device cuda 2>&1 | tee "$out/predict.log" || status=1
fi
if want predict-compile; then
  timeout 480 "$py" bench/predict.py --device cuda --compile --skip-experiment --frames 5 2>&1 \
      | tee "$out/predict-compile.log" || status=1
fi
if want pipeline; then
  timeout 240 "$py" bench/gpu_pipeline.py 2>&1 | tee "$out/pipeline.log" || status=1
fi
if want busy; then
  timeout 540 "$py" bench/gpu_pipeline.py --busy --dtype float16 2>&1 | tee "$out/busy.log" || status=1
fi
if want teachers; then
  timeout 180 "$py" bench/teachers.py --device cuda --dtype float16 --batch-size 32 \
      --teachers vitpose,detectron2-keypoint-rcnn,depth-anything-v2,dptext-detr,visiongpt2 2>&1 \
      | tee "$out/teachers.log" || status=1
fi
exit $status
