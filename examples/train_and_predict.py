"""Train a model and diagnose photos through cropdoc's Python API (no notebook, no CLI).

    python examples/train_and_predict.py DATA [--arch resnet26d] [--epochs 5] [--out runs/api]

DATA is any layout cropdoc reads (class folders, Kaggle paddy, a CSV manifest). The script
scans it, trains, evaluates with test-time augmentation, and prints a verdict per test photo.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cropdoc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--arch", default="resnet26d")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", default="128")
    parser.add_argument("--pretrained", action="store_true", help="hub weights (online)")
    parser.add_argument("--out", type=Path, default=Path("runs/api"))
    args = parser.parse_args()
    cropdoc.show_output()  # progress lines on stderr, as the command line shows them

    dataset = cropdoc.discover(args.data)
    print(f"{len(dataset.labelled)} labelled photos in {len(dataset.classes)} classes")
    config = cropdoc.TrainConfig(
        data=str(args.data),
        arch=args.arch,
        epochs=args.epochs,
        pretrained=args.pretrained,
        from_scratch=not args.pretrained,
        item_size=args.size,
        size=args.size,
        bs=16,
        out=str(args.out),
    )
    summary = cropdoc.train(config)
    print(f"best epoch {summary['best']['epoch']}: error rate {summary['best']['error_rate']:.3f}")
    report = cropdoc.evaluate(args.out, tta=True)
    print(f"with test-time augmentation: {report['error_rate_tta']:.3f}")

    photos = [item.path for item in dataset.unlabelled] or [dataset.labelled[0].path]
    predictions = cropdoc.predict([args.out], photos)
    for row in predictions.top(2):
        print(
            f"{Path(row['path']).name}: {row['verdict']} {row['top'][0]['label']} "
            f"({row['confidence']:.2f})"
        )


if __name__ == "__main__":
    main()
