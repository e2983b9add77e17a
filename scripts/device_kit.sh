#!/usr/bin/env bash
# Prepare the GPU training benchmark for a machine that has a GPU but no internet and no espeak-ng
# (for example a cloud GPU image with Python 3.12 and torch, transformers, accelerate, numba,
# numpy, pyyaml, tqdm already installed).
#
#   bash scripts/device_kit.sh            # here: wheels into .whl/, shards into .devdata/ (both git-ignored)
#
# Then, on the GPU machine, in the repo root (carry .whl and .devdata), one command:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 || exit; nvidia-smi -L; \
#   python3 benchmarks/bench_train.py --device cuda --model base --steps 200 --work .devdata \
#       --json $OUT/bench_train_cuda.json 2>&1 | tee $OUT/bench_train_cuda.log
#
# It trains a wav2vec2-base-sized model from scratch in fp16 with train.py and with the HF Trainer
# recipe, same shards and padded-seconds cap, and prints audio-s/s, steps/s and peak GPU memory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

# What train.py and the benchmark import that the GPU image lacks (pure Python or manylinux wheels).
PACKAGES=(soundfile==0.14.0 soxr==1.1.0 webdataset==1.0.2 braceexpand==0.1.7 jiwer==4.0.0 rapidfuzz==3.14.6)
rm -rf .whl && mkdir -p .whl
for pkg in "${PACKAGES[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .whl "$pkg"
done

"$PY" benchmarks/bench_train.py --prepare-only --work .devdata --utterances 600
rm -rf .devdata/corpus  # the shards are all the benchmark reads; the corpus is 70 MB of WAVs
du -sh .whl .devdata
