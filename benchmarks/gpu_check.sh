#!/usr/bin/env bash
# One command for a lent GPU (at most ~8 minutes on one H100/H200): every system's training
# step at paper width in float32 and bfloat16 (benchmarks/gpu_check.py: step time, peak memory,
# MFU), then the PyTorch references' steps where benchmarks/train_step_*.py has one, at the
# same sizes. Run from the repository root after `make setup` (torch: pip install -e '.[hf]').
#
#   benchmarks/gpu_check.sh [FRAMES]      (frames per video, default 128; the papers' clips
#                                          are longer: say so when reporting)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
frames="${1:-128}"
"$python" benchmarks/gpu_check.py --frames="$frames" --steps=5
# The PyTorch references at the sizes they share with sltjax's own side of each script.
"$python" benchmarks/train_step_mmtlb.py --batch=8 --frames="$frames" --image=224 --layers=12 \
    --dtypes=float32,bfloat16 --steps=3
"$python" benchmarks/train_step_c2rl.py --batch=64 --frames="$frames" --image=224 --steps=3
