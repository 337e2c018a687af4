"""qcnn-compare: run the source ONNX model (onnxruntime) and its .qcnn conversion (qcnn runtime) on the
same inputs and report how far apart they are, how accurate each is, and what each costs.

    qcnn-compare MODEL.onnx MODEL.qcnn --images DIR [--count N] [--labels imagenet-classes.txt] [--json OUT]
    qcnn-compare MODEL.onnx MODEL.qcnn --npz mnist.npz [--count N]

Inputs are preprocessed once, with the preprocessing stored in the .qcnn file, and fed to both
engines, so differences come from the weights and kernels only. Both engines run one image at a
time on one thread (onnxruntime: intra_op_num_threads = inter_op_num_threads = 1); latency is the
median over the images after a warm-up, engines alternating image by image. Peak memory is the
ru_maxrss of a fresh process per engine that loads the model and runs a few images.

Metrics
- top1_agreement: fraction of inputs where both engines' top-1 class is the same.
- top5_overlap: mean over inputs of |top-5 of onnx ∩ top-5 of qcnn| / 5.
- rel_l2: mean over inputs of ||y_qcnn - y_onnx|| / ||y_onnx|| on the first output.
- top1_*/top5_*: accuracy against labels (ImageNet wnid in the file name, or y_test / y in the .npz);
  null without labels.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Optional

import numpy as np

from qcnn.tools import common

JSON_KEYS = ("images", "top1_agreement", "top5_overlap", "rel_l2", "top1_onnx", "top5_onnx", "top1_qcnn",
             "top5_qcnn", "ms_onnx", "ms_qcnn", "bytes_onnx", "bytes_qcnn", "rss_mb_onnx", "rss_mb_qcnn")


def topk(y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries per row, largest first."""
    k = min(k, y.shape[1])
    part = np.argpartition(-y, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(y, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def agreement_metrics(y_onnx: np.ndarray, y_qcnn: np.ndarray, labels: Optional[np.ndarray] = None) -> dict:
    """Agreement between two (N, classes) outputs, and each one's accuracy when labels are given."""
    if y_onnx.shape != y_qcnn.shape:
        raise ValueError(f"outputs differ in shape: onnx {y_onnx.shape}, qcnn {y_qcnn.shape}")
    k = min(5, y_onnx.shape[1])
    t_o, t_q = topk(y_onnx, k), topk(y_qcnn, k)
    overlap = [len(set(a) & set(b)) / k for a, b in zip(t_o.tolist(), t_q.tolist())]
    norms = np.linalg.norm(y_onnx.astype(np.float64), axis=1)
    diffs = np.linalg.norm(y_qcnn.astype(np.float64) - y_onnx.astype(np.float64), axis=1)
    out = {
        "top1_agreement": float(np.mean(t_o[:, 0] == t_q[:, 0])),
        "top5_overlap": float(np.mean(overlap)),
        "rel_l2": float(np.mean(diffs / np.maximum(norms, 1e-30))),
        "top1_onnx": None, "top5_onnx": None, "top1_qcnn": None, "top5_qcnn": None,
    }
    if labels is not None:
        labels = np.asarray(labels).reshape(-1, 1)
        for name, t in (("onnx", t_o), ("qcnn", t_q)):
            out[f"top1_{name}"] = float(np.mean(t[:, 0] == labels[:, 0]))
            out[f"top5_{name}"] = float(np.mean(np.any(t == labels, axis=1)))
    return out


def model_output_shape(model):
    """Shape (without batch) of a qcnn Model's output (that of its last operator)."""
    return tuple(model.layers[-1]["output_shape"])


def load_inputs(model, images=None, npz=None, labels_file=None, count=None, offset: int = 0):
    """(x float32 (N, ...), labels or None, description) for a loaded qcnn Model."""
    shape = tuple(model.input_shape[1:])
    if (images is None) == (npz is None):
        raise ValueError("give exactly one of --images DIR or --npz FILE")
    if npz is not None:
        x, y = common.load_npz_inputs(npz, shape, None if count is None else offset + count)
        return x[offset:], None if y is None else y[offset:], f"{x.shape[0] - offset} samples from {npz}"
    paths = images if isinstance(images, (list, tuple)) else common.list_images(images)
    paths = paths[offset:] if count is None else paths[offset : offset + count]
    if not paths:
        raise ValueError("no images left to compare (check --count / the folder)")
    if model.preprocessing is None:
        print("qcnn-compare: warning: the .qcnn stores no preprocessing; images are fed as raw 0..255 pixels",
              file=sys.stderr)
    x = common.preprocess_images(paths, model.preprocessing, shape)
    classes = labels_file or common.find_classes_file(os.path.dirname(paths[0]))
    y = common.labels_from_names(paths, common.read_imagenet_classes(classes)) if classes else None
    classes_out = int(np.prod(model_output_shape(model)))
    if y is not None and int(y.max()) >= classes_out:
        print(f"qcnn-compare: note: the model has {classes_out} outputs, fewer than the ImageNet labels of "
              f"the images: accuracy not reported", file=sys.stderr)
        y = None
    return x, y, f"{len(paths)} images from {os.path.dirname(paths[0]) or '.'}"


def run_both(run_onnx: Callable, run_qcnn: Callable, x: np.ndarray, warmup: int = 3):
    """Outputs of both engines on every input (batch 1) and their per-input latencies in seconds.

    Engines alternate input by input (and which goes first alternates too), so a slow spell of the
    shared machine hits both alike.
    """
    for i in range(min(warmup, x.shape[0])):
        run_onnx(x[i : i + 1])
        run_qcnn(x[i : i + 1])
    ys = {"onnx": [], "qcnn": []}
    ts = {"onnx": [], "qcnn": []}
    engines = [("onnx", run_onnx), ("qcnn", run_qcnn)]
    for i in range(x.shape[0]):
        for name, fn in (engines if i % 2 == 0 else engines[::-1]):
            xi = x[i : i + 1]
            holder = []
            ts[name].append(common.time_call(lambda: holder.append(fn(xi))))
            ys[name].append(holder[0])
    return np.concatenate(ys["onnx"]), np.concatenate(ys["qcnn"]), ts["onnx"], ts["qcnn"]


def compare(onnx_path, qcnn_path, images=None, npz=None, labels_file=None, count: Optional[int] = None,
            offset: int = 0, lut: str = "int8", isa: str = "auto", warmup: int = 3, rss: bool = True,
            rss_inputs: int = 3, dense: str = "auto") -> dict:
    """All qcnn-compare numbers as a dict with exactly JSON_KEYS."""
    from qcnn.runtime import Model

    with Model(qcnn_path, lut=lut, isa=isa, dense=dense) as model:
        x, y, _ = load_inputs(model, images, npz, labels_file, count, offset)
        sess = common.ort_session(str(onnx_path), threads=1)
        y_o, y_q, t_o, t_q = run_both(common.ort_runner(sess), common.qcnn_runner(model), x, warmup)
        del sess
    res = {"images": int(x.shape[0])}
    res.update(agreement_metrics(y_o, y_q, y))
    res.update(ms_onnx=1e3 * common.median(t_o), ms_qcnn=1e3 * common.median(t_q),
               bytes_onnx=common.file_size(onnx_path), bytes_qcnn=common.file_size(qcnn_path),
               rss_mb_onnx=None, rss_mb_qcnn=None)
    if rss:
        few = x[: max(1, rss_inputs)]
        res["rss_mb_onnx"] = common.measure_rss("onnx", onnx_path, few)["rss_mb"]
        res["rss_mb_qcnn"] = common.measure_rss("qcnn", qcnn_path, few, lut=lut, isa=isa, dense=dense)["rss_mb"]
    return {k: res[k] for k in JSON_KEYS}


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def format_table(r: dict, machine: dict, onnx_path, qcnn_path) -> str:
    hb = common.human_bytes

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "n/a"

    rss_o = "n/a" if r["rss_mb_onnx"] is None else f"{r['rss_mb_onnx']:.0f} MB"
    rss_q = "n/a" if r["rss_mb_qcnn"] is None else f"{r['rss_mb_qcnn']:.0f} MB"
    rows = [
        ("", "onnxruntime", "qcnn", "ratio"),
        ("file", os.path.basename(str(onnx_path)), os.path.basename(str(qcnn_path)), ""),
        ("size", hb(r["bytes_onnx"]), hb(r["bytes_qcnn"]), ratio(r["bytes_onnx"], r["bytes_qcnn"]) + " smaller"),
        ("latency (median, 1 thread)", f"{r['ms_onnx']:.2f} ms", f"{r['ms_qcnn']:.2f} ms",
         ratio(r["ms_onnx"], r["ms_qcnn"]) + " speed-up"),
        ("peak RSS (load + run)", rss_o, rss_q,
         ratio(r["rss_mb_onnx"], r["rss_mb_qcnn"]) + " less" if r["rss_mb_onnx"] else ""),
        ("top-1 accuracy", _pct(r["top1_onnx"]), _pct(r["top1_qcnn"]), ""),
        ("top-5 accuracy", _pct(r["top5_onnx"]), _pct(r["top5_qcnn"]), ""),
    ]
    w = [max(len(row[j]) for row in rows) for j in range(4)]
    lines = ["  ".join(c.ljust(w[j]) if j == 0 else c.rjust(w[j]) for j, c in enumerate(row)).rstrip() for row in rows]
    lines += [
        f"agreement on {r['images']} inputs: top-1 {_pct(r['top1_agreement'])}, top-5 overlap "
        f"{_pct(r['top5_overlap'])}, relative L2 of outputs {r['rel_l2']:.4f}",
        common.machine_line(machine),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="qcnn-compare", description="Compare a .qcnn model with its source ONNX model.")
    p.add_argument("onnx", help="source ONNX model")
    p.add_argument("qcnn", help="converted .qcnn model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images (ImageNet names <wnid>_<name>.JPEG give labels)")
    src.add_argument("--npz", help=".npz with x_test (+ y_test) uint8 (scaled by 1/255), or a float array x (+ y)")
    p.add_argument("--labels", help="ImageNet class list 'index wnid name' (default: imagenet-classes.txt beside "
                                    "the image folder or in ../shared/data)")
    p.add_argument("--count", type=int, help="use the first N inputs")
    p.add_argument("--offset", type=int, default=0, help="skip the first N inputs (e.g. those used for calibration)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT ('-' for stdout only)")
    p.add_argument("--lut", choices=["int8", "float"], default="int8", help="qcnn look-up table precision")
    p.add_argument("--isa", default="auto", help="qcnn kernel ISA (auto, generic, avx2, avx512vbmi)")
    p.add_argument("--dense", choices=["auto", "int8", "fp32"], default="auto",
                   help="precision of the convs the file keeps dense (auto: int8 with int8 tables where it is faster: every conv on AVX-512 VNNI, convs with many MACs per input on AVX2)")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-memory subprocesses")
    args = p.parse_args(argv)
    if args.count is not None and args.count < 1:
        p.error("--count must be >= 1")
    for f in (args.onnx, args.qcnn):
        if not os.path.isfile(f):
            print(f"qcnn-compare: error: no such file: {f}", file=sys.stderr)
            return 2
    from qcnn import QcnnFormatError

    try:
        r = compare(args.onnx, args.qcnn, images=args.images, npz=args.npz, labels_file=args.labels,
                    count=args.count, offset=args.offset, lut=args.lut, isa=args.isa, rss=not args.no_rss,
                    dense=args.dense)
    except (QcnnFormatError, FileNotFoundError, ValueError) as exc:
        print(f"qcnn-compare: error: {exc}", file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(r, indent=2))
        return 0
    print(format_table(r, common.machine_info(args.isa), args.onnx, args.qcnn))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
