"""qcnn-demo: the whole pipeline on AlexNet in a few minutes.

1. build AlexNet (the ONNX model-zoo graph shipped in the onnx wheel, seeded random weights; qcnn.models);
2. convert it to .qcnn with error-corrected product quantization, calibrated on the first
   --calib-count images of ../shared/data/imagenet-samples (or synthetic images when that folder is
   missing: the demo needs nothing but the installed package);
3. run the .qcnn with the qcnn runtime and the ONNX with onnxruntime on held-out images (the
   next --eval-count ones) and print sizes, compression, agreement, latency and speed-up.

Everything goes to ./qcnn-demo-out/ (the built and converted models are reused by later runs).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qcnn.tools import common


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="qcnn-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="qcnn-demo-out", help="output folder (default ./qcnn-demo-out)")
    p.add_argument("--images", help="image folder (default ../shared/data/imagenet-samples if present)")
    p.add_argument("--calib-count", type=int, default=100, help="calibration images (default 100)")
    p.add_argument("--eval-count", type=int, default=50, help="held-out images to compare on (default 50)")
    p.add_argument("--lut", choices=["int8", "float"], default="int8")
    p.add_argument("--isa", default="auto")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-ec", action="store_true", help="plain k-means quantization instead of error correction")
    args = p.parse_args(argv)
    if args.calib_count < 1 or args.eval_count < 1:
        p.error("--calib-count and --eval-count must be >= 1")

    from qcnn.converter.calibration import make_preprocessing
    from qcnn.models.build import write_model
    from qcnn.tools import bench, compare, inspect as qinspect

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    machine = common.machine_info(args.isa)
    log(common.machine_line(machine))

    # 1. the model
    onnx_path = out / "alexnet.onnx"
    if not onnx_path.is_file():
        log("building AlexNet (ONNX model-zoo graph, seeded random weights)")
        write_model("alexnet", str(onnx_path))
    shape = bench.onnx_input_shape(onnx_path)

    # 2. images: calibration first, held-out after
    folder = args.images
    if folder is None:
        sd = common.shared_dir()
        if sd is not None and (sd / "data" / "imagenet-samples").is_dir():
            folder = str(sd / "data" / "imagenet-samples")
    if folder is not None:
        paths = common.list_images(folder)
        source = folder
    else:
        log("no image folder found (../shared/data/imagenet-samples): using synthetic smooth-noise images")
        paths = common.write_synthetic_images(out / "synthetic-images", args.calib_count + args.eval_count)
        source = "synthetic images"
    calib_paths = paths[: args.calib_count]
    eval_paths = paths[args.calib_count : args.calib_count + args.eval_count]
    if not eval_paths:
        log(f"note: only {len(paths)} images, none left after calibration: comparing on calibration images")
        eval_paths = paths[: args.eval_count]
    log(f"images: {len(calib_paths)} for calibration, {len(eval_paths)} held out for comparison ({source})")

    # 3. conversion (cached by source, settings and calibration data)
    prep = make_preprocessing("imagenet", shape)
    cal = common.preprocess_images(calib_paths, prep, shape)
    settings = {"conv": "8/128", "fc": "4/32", "last_fc": "1/16", "ec": not args.no_ec, "calib_count": len(calib_paths)}
    method = "plain k-means" if args.no_ec else "error correction"
    log(f"converting with {method} (conv C's/K 8/128, fc 4/32, last fc 1/16)...")
    cached, secs = bench.convert_cached("alexnet", onnx_path, cal, {"preprocess": "imagenet"}, settings,
                                        out / "cache", log)
    qcnn_path = out / "alexnet.qcnn"
    qcnn_path.write_bytes(cached.read_bytes())
    log(f"conversion {'reused from cache' if secs == 0 else f'took {secs:.0f} s'}: {qcnn_path}")

    # 4. compare on held-out images
    log(f"running onnxruntime and qcnn on {len(eval_paths)} held-out images (1 thread, batch 1)...")
    r = compare.compare(onnx_path, qcnn_path, images=eval_paths, lut=args.lut, isa=args.isa, rss=not args.no_rss)
    with open(out / "compare.json", "w") as f:
        json.dump(r, f, indent=2)
        f.write("\n")
    info = qinspect.describe(qcnn_path)
    with open(out / "inspect.txt", "w") as f:
        f.write(qinspect.format_text(info) + "\n")

    hb = common.human_bytes
    t = info["totals"]
    print()
    print(f"qcnn demo: AlexNet (seeded random weights), Q-CNN with {method}")
    print(f"  size         ONNX {hb(r['bytes_onnx'])}  ->  .qcnn {hb(r['bytes_qcnn'])}   "
          f"({r['bytes_onnx'] / r['bytes_qcnn']:.1f}x smaller)")
    print(f"  agreement    top-1 {100 * r['top1_agreement']:.1f}%, top-5 overlap {100 * r['top5_overlap']:.1f}%, "
          f"relative L2 {r['rel_l2']:.3f}  on {r['images']} held-out images")
    print(f"  latency      onnxruntime {r['ms_onnx']:.1f} ms, qcnn {r['ms_qcnn']:.1f} ms  "
          f"(speed-up {r['ms_onnx'] / r['ms_qcnn']:.2f}x; paper FLOPs predict {t['speedup']:.2f}x)")
    if r["rss_mb_onnx"] is not None:
        print(f"  peak memory  onnxruntime {r['rss_mb_onnx']:.0f} MB, qcnn {r['rss_mb_qcnn']:.0f} MB")
    print(f"  {common.machine_line(machine)}")
    print(f"  weights are random (no trained AlexNet ships offline), so agreement with the float model is "
          f"the accuracy measure here")
    print(f"  files in {out}/: alexnet.onnx, alexnet.qcnn, compare.json, inspect.txt "
          f"(try: qcnn-inspect {qcnn_path})")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
