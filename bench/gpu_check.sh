#!/usr/bin/env bash
# The GPU checks, in one run on a machine with one CUDA device and the project's dependencies installed:
# the gpu-marked tests, then bench/student.py (paper network FP32 and bf16 at batch 32, a real training run),
# bench/gpu_pipeline.py (build-targets on Ray with GPU teacher actors) and bench/teachers.py at published
# sizes. Logs go to ${OUT:-gpu-check}/.
#
#   bash bench/gpu_check.sh            # python3 on PATH holds torch with CUDA
set -uo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

status=0
timeout 240 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_student_gpu.py 2>&1 | tee "$out/tests.log" \
    || status=1
timeout 240 "$py" bench/student.py --device cuda 2>&1 | tee "$out/student.log" || status=1
timeout 240 "$py" bench/gpu_pipeline.py 2>&1 | tee "$out/pipeline.log" || status=1
timeout 150 "$py" bench/teachers.py --device cuda --dtype float16 --batch-size 32 \
    --teachers depth-anything-v2,dptext-detr,visiongpt2 2>&1 | tee "$out/teachers.log" || status=1
exit $status
