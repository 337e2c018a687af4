"""qcnn-run: classify images with a .qcnn model, using the preprocessing and labels stored in it."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from qcnn import QcnnFormatError


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _ends_in_softmax(model) -> bool:
    return bool(model.layers) and model.layers[-1]["op"] == "Softmax"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="qcnn-run", description=__doc__)
    p.add_argument("model", help="a .qcnn file")
    p.add_argument("images", nargs="+", help="image files (JPEG/PNG/BMP)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--lut", choices=["int8", "float"], default="int8", help="look-up table precision")
    args = p.parse_args(argv)

    from qcnn.runtime import Model

    try:
        model = Model(args.model, lut=args.lut)
    except (QcnnFormatError, OSError, MemoryError) as exc:
        print(f"qcnn-run: error: {exc}", file=sys.stderr)
        return 2
    results = []
    with model:
        for path in args.images:
            try:
                x = model.preprocess([path])
            except MemoryError:
                print(f"qcnn-run: error: {path}: image too large to decode", file=sys.stderr)
                return 2
            except Exception as exc:  # Pillow raises many types (incl. DecompressionBombError)
                print(f"qcnn-run: error: {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                      file=sys.stderr)
                return 2
            y = np.asarray(model.run(x)).reshape(1, -1)
            probs = y if _ends_in_softmax(model) else _softmax(y)
            order = np.argsort(-probs[0])[: max(1, args.top)]
            labels = model.labels or []
            top = [{"index": int(i), "label": labels[i] if i < len(labels) else str(int(i)),
                    "probability": float(probs[0, i])} for i in order]
            results.append({"image": path, "top": top})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(r["image"])
            for t in r["top"]:
                print(f"  {t['probability']:7.2%}  {t['label']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
