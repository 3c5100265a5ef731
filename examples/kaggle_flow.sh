#!/usr/bin/env bash
# The Kaggle paddy flow with the cropdoc command: data -> model -> submission.
#
#   examples/kaggle_flow.sh [SOURCE] [WORK]
#
# SOURCE: kaggle:paddy-disease-classification (needs cropdoc[kaggle] and a token) or the
# competition's zip, downloaded by hand. ARCH, EPOCHS, SIZE, BS override the defaults (the
# blog post's resnet26d, 5 epochs, 128 px).
set -euo pipefail
source=${1:-kaggle:paddy-disease-classification}
work=${2:-paddy-work}
arch=${ARCH:-resnet26d}
epochs=${EPOCHS:-5}
size=${SIZE:-128}
bs=${BS:-64}
extra=${EXTRA:-}   # e.g. --no-pretrained offline

cropdoc fetch "$source" --dest "$work/data"
cropdoc scan "$work/data"
cropdoc train "$work/data" --arch "$arch" --epochs "$epochs" --size "$size" --bs "$bs" \
    --out "$work/run" $extra
cropdoc evaluate "$work/run" --tta
cropdoc export "$work/run"
cropdoc predict "$work/run/model.onnx" --runtime onnx \
    --submission "$work/data/sample_submission.csv" --images "$work/data/test_images" \
    --out "$work/submission.csv"
echo "submission: $work/submission.csv ($(($(wc -l <"$work/submission.csv") - 1)) photos)"
