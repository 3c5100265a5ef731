#!/usr/bin/env bash
# The prepared GPU check (issue #13): one run on a lent GPU machine, under 8 minutes, one
# summary at the end. It works where only torch (>= 2.6), timm, torchvision, onnxruntime and
# accelerate are installed: cropdoc goes in with `pip install --no-deps -e .`, and what the
# machine lacks travels as wheels in .whl/ (grad-cam, python-multipart, fastai and its
# needs; see the device README). Results go to $OUT (or ./gpu-check) and docs/benchmarks.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its log and status
    local name=$1 limit=$2
    shift 2
    echo "== $name" | tee -a "$out/summary.txt"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local status=$?
    tail -n 15 "$out/$name.log" | tee -a "$out/summary.txt"
    echo "   ($name: exit $status)" | tee -a "$out/summary.txt"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/summary.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" \
    >>"$out/summary.txt"
data=$(mktemp -d)/demo
python3 -m cropdoc demo-data "$data" --per-class 40 --json >/dev/null
step cuda-tests 150 python3 -m pytest -q -m cuda tests/test_cuda.py
step train-bf16 150 python3 benchmarks/gpu_train.py --arch convnext_tiny --size 224 --bs 64 --steps 40
step compile 150 python3 benchmarks/gpu_train.py --arch convnext_tiny --size 224 --bs 64 \
    --steps 40 --compile --cropdoc-only
step loader-224 60 python3 benchmarks/loader.py --device cuda --batches 20
step epoch-480x640 90 python3 -m cropdoc train "$data" --arch convnext_tiny --no-pretrained \
    --epochs 1 --freeze-epochs 0 --bs 32 --cache-size 640 --item-size 640x480 --size 640x480 \
    --out "$(dirname "$data")/run480" --json
step onnx-cuda 60 python3 benchmarks/onnx_cuda.py --arch convnext_tiny --size 224
echo "== done: $out/summary.txt"
cat "$out/summary.txt"
