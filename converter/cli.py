"""qcnn-convert: ONNX -> .qcnn with (error-corrected) product quantization.

    qcnn-convert MODEL.onnx -o OUT.qcnn --calib IMAGES/ [--preprocess imagenet] [options]
    qcnn-convert --decode X.qcnn -o X.onnx

Every failure prints one line `qcnn-convert: error: ...` and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from qcnn.schema.writer import write_atomic

from .errors import ConversionError

PROG = "qcnn-convert"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse would also print the usage)
        raise ConversionError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Convert an ONNX CNN to a quantized .qcnn (Q-CNN, Wu et al. CVPR 2016).")
    p.add_argument("model", nargs="?", help="input ONNX model")
    p.add_argument("-o", "--output", help="output .qcnn (or .onnx with --decode)")
    g = p.add_argument_group("calibration data (needed for error correction)")
    g.add_argument("--calib", help="folder of JPEG/PNG/BMP images, or a .npy/.npz (N,C,H,W) float32 array "
                                   "(npz key: x, x_calib, x_train, x_test, data or images)")
    g.add_argument("--calib-count", type=int, default=100, help="number of calibration samples (default 100)")
    g.add_argument("--seed", type=int, default=0, help="seed for sampling and k-means (default 0)")
    g = p.add_argument_group("preprocessing of calibration images (stored in the output)")
    g.add_argument("--preprocess", choices=["imagenet", "caffe", "none"],
                   help="imagenet: RGB/255, ImageNet mean/std; caffe: BGR 0..255 minus 104/117/123; "
                        "both resize the shorter side to 256 and centre-crop to the model input")
    g.add_argument("--mean", help="per-channel mean, comma separated (model channel order)")
    g.add_argument("--std", help="per-channel std, comma separated")
    g.add_argument("--scale", type=float, help="pixel scale applied before mean/std (e.g. 0.00392157)")
    g.add_argument("--size", type=int, help="resize the shorter side to this many pixels")
    g.add_argument("--crop", help="centre crop H,W (must match the model input)")
    g.add_argument("--bgr", action="store_true", help="feed channels in BGR order")
    g = p.add_argument_group(
        "quantization (C/K = sub-vector length C's / codewords K)",
        "Without settings, qcnn-convert plans every layer itself (--plan auto): the fastest choice of C/K or "
        "dense per layer, timed on this CPU, whose layers' summed output error stays within 1%. Giving "
        "--conv, --fc, --last-fc, --layer or --dense-where-faster (or --plan uniform) applies fixed settings "
        "instead, by default the paper's.")
    g.add_argument("--conv", help="conv layers (default 8/128, the paper's AlexNet setting)")
    g.add_argument("--fc", help="fully connected layers (default 4/32)")
    g.add_argument("--last-fc", help="the last fully connected layer (default 1/16)")
    g.add_argument("--layer", action="append", default=[], metavar="NAME=C/K",
                   help="per-layer setting (forces quantization); repeatable")
    g.add_argument("--plan", metavar="auto|uniform|error=E|speed=S|size=X|ms=T",
                   help="auto (the default without settings; = error=0.01): the fastest plan whose summed output "
                        "error is at most E; uniform: the --conv/--fc/--last-fc settings everywhere; speed=S, "
                        "size=X, ms=T: the least error for this measured conv/fc speed-up (add ,cost=flops for "
                        "Table 1 FLOPs), compression or time budget, or a speed/time and a size target together "
                        "(speed=1,size=1.5: no slower than dense, 1.5x smaller). auto needs calibration data "
                        "(without it: uniform)")
    g.add_argument("--plan-lut", choices=["int8", "float"], default="int8",
                   help="runtime table type the --plan timings are measured with (default int8)")
    g.add_argument("--plan-error", choices=["output", "response"], default="output",
                   help="what --plan scores a candidate by: the network output's error with that layer alone "
                        "quantized (default), or the layer's own response error (cheaper)")
    g.add_argument("--skip", action="append", default=[], metavar="NAME", help="keep this layer dense; repeatable")
    g.add_argument("--dense-where-faster", action="store_true",
                   help="time every layer as tables (the C/K above) and dense on this CPU and keep dense those "
                        "that run at least as fast dense (not with --plan, which weighs time itself)")
    g.add_argument("--pad-subspaces", action="store_true",
                   help="zero-pad the last subspace when C's does not divide the channels (default: keep dense)")
    g.add_argument("--no-ec", action="store_true", help="plain Q-CNN: k-means on the weights, no calibration needed")
    g.add_argument("--ec-iters", type=int, default=4, help="error-correction sweeps over the subspaces (default 4)")
    g.add_argument("--ec-ridge", type=float, default=1e-3,
                   help="ridge towards the original weights, relative to the mean input energy (default 1e-3)")
    g.add_argument("--ec-ridge-few", type=float, default=0.3,
                   help="the ridge for layers with fewer calibration rows than inputs, e.g. FC layers (default 0.3)")
    g.add_argument("--ec-tol", type=float, default=1e-3,
                   help="stop a layer's sweeps when the relative response error drops by less (default 1e-3)")
    g.add_argument("--no-multilayer", action="store_true",
                   help="take layer inputs from the original network instead of the quantized one (§3.3.3 off)")
    g.add_argument("--kmeans-iters", type=int, default=30, help="Lloyd iterations (default 30)")
    g = p.add_argument_group("output")
    g.add_argument("--labels", help="class labels: `index wnid name` lines or one label per line")
    g.add_argument("--json", help="write the conversion report as JSON here")
    g.add_argument("--report-plain", action="store_true", help="also report the plain k-means response error")
    g.add_argument("--input-shape", help="N,C,H,W (or N,F) for models with dynamic dimensions")
    g.add_argument("--decode", metavar="QCNN", help="decode a .qcnn to a dense ONNX model (-o X.onnx)")
    g.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (default 1: many small products, faster single-threaded; 0 = numpy default)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or table")
    return p


def _floats(text, flag):
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ConversionError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def _ints(text, flag):
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ConversionError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _check_out_dir(path, flag):
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConversionError(f"{flag} {path} is a directory")
    if not os.path.isdir(folder):
        raise ConversionError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ConversionError(f"cannot write {path}: folder {folder} is not writable")


def _write_text_atomic(path, text):
    write_atomic(path, text.encode())


def run(argv=None) -> int:
    from .convert import DEFAULT_CONV, DEFAULT_FC, DEFAULT_LAST_FC, convert, format_report, parse_ck

    args = build_parser().parse_args(argv)
    if args.decode:
        return _decode(args)
    if not args.model:
        raise ConversionError("no input model given (qcnn-convert MODEL.onnx -o OUT.qcnn)")
    if not os.path.exists(args.model):
        raise ConversionError(f"model file not found: {args.model}")
    if not args.output:
        raise ConversionError("no output given: add -o OUT.qcnn")
    _check_out_dir(args.output, "-o")
    if args.json:
        _check_out_dir(args.json, "--json")
    fixed_settings = [flag for flag, given in (("--conv", args.conv), ("--fc", args.fc), ("--last-fc", args.last_fc),
                                               ("--layer", args.layer), ("--dense-where-faster", args.dense_where_faster))
                      if given]
    plan = args.plan
    if plan is None:
        plan = "uniform" if fixed_settings else "auto"
    if plan != "uniform" and fixed_settings:
        raise ConversionError(f"{fixed_settings[0]} sets fixed settings and --plan {plan} chooses them per layer: "
                              f"give one")
    layers = {}
    for item in args.layer:
        if "=" not in item:
            raise ConversionError(f"--layer expects NAME=C/K, got {item!r}")
        name, ck = item.rsplit("=", 1)
        layers[name] = parse_ck(ck, f"--layer {name}")
    crop = _ints(args.crop, "--crop") if args.crop else None
    if crop is not None and len(crop) == 1:
        crop = crop * 2
    if crop is not None and len(crop) != 2:
        raise ConversionError("--crop expects H,W")
    shape = _ints(args.input_shape, "--input-shape") if args.input_shape else None
    if shape is not None and (len(shape) not in (2, 4) or min(shape) < 1):
        raise ConversionError(f"--input-shape expects N,C,H,W or N,F with positive sizes, got {args.input_shape}")
    if args.calib_count < 1:
        raise ConversionError(f"--calib-count must be >= 1, got {args.calib_count}")
    if args.labels and not os.path.isfile(args.labels):
        raise ConversionError(f"labels file not found: {args.labels}")
    verbose = not args.quiet

    def log(msg):
        if verbose:
            print(msg, file=sys.stderr)

    result = convert(
        args.model, None, calib=args.calib, calib_count=args.calib_count, seed=args.seed,
        preprocess=args.preprocess, mean=_floats(args.mean, "--mean") if args.mean else None,
        std=_floats(args.std, "--std") if args.std else None, scale=args.scale, size=args.size, crop=crop,
        bgr=args.bgr, conv=parse_ck(args.conv, "--conv") if args.conv else DEFAULT_CONV,
        fc=parse_ck(args.fc, "--fc") if args.fc else DEFAULT_FC,
        last_fc=parse_ck(args.last_fc, "--last-fc") if args.last_fc else DEFAULT_LAST_FC, layers=layers, skip=args.skip,
        pad_subspaces=args.pad_subspaces, ec=not args.no_ec, ec_iters=args.ec_iters, ec_ridge=args.ec_ridge,
        ec_ridge_few=args.ec_ridge_few, ec_tol=args.ec_tol,
        multilayer=not args.no_multilayer, kmeans_iters=args.kmeans_iters, labels=args.labels,
        report_plain=args.report_plain, input_shape=shape, progress=verbose and sys.stderr.isatty(), log=log,
        threads=args.threads if args.threads > 0 else None, plan=None if plan == "uniform" else plan, plan_lut=args.plan_lut,
        plan_error=args.plan_error, dense_where_faster=args.dense_where_faster)
    from .convert import write

    nbytes = write(result.model, args.output)
    result.report["output_bytes"] = nbytes
    if args.json:
        try:
            _write_text_atomic(args.json, json.dumps(result.report, indent=2, sort_keys=True))
        except (OSError, ValueError) as exc:
            os.unlink(args.output)
            raise ConversionError(f"cannot write {args.json}: {exc.strerror or exc}") from None
    if verbose:
        print(format_report(result.report))
        src = os.path.getsize(args.model) if isinstance(args.model, str) else 0
        ratio = f" ({src / nbytes:.1f}x smaller than the ONNX file)" if src else ""
        print(f"wrote {args.output}: {nbytes} bytes{ratio} in {result.report['seconds']:.1f} s")
    return 0


def _decode(args) -> int:
    import onnx

    from .decode import decode_to_onnx

    if not args.output:
        raise ConversionError("--decode needs -o OUT.onnx")
    if not os.path.isfile(args.decode):
        raise ConversionError(f"file not found: {args.decode}")
    _check_out_dir(args.output, "-o")
    try:
        proto = decode_to_onnx(args.decode)
    except ValueError as exc:  # QcnnFormatError and friends
        msg = str(exc)  # the reader's messages start with the path already: name it once
        if not msg.startswith(f"{args.decode}: "):
            msg = f"{args.decode}: {msg}"
        raise ConversionError(f"cannot decode {msg}") from None
    write_atomic(args.output, proto.SerializeToString())
    if not args.quiet:
        print(f"wrote {args.output}")
    return 0


def main(argv=None) -> int:
    try:
        code = run(argv)
    except ConversionError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted (no output written)", file=sys.stderr)
        code = 130
    except MemoryError:
        print(f"{PROG}: error: out of memory (try a smaller --calib-count)", file=sys.stderr)
        code = 2
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError):
            msg = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
        else:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        code = 2
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("QCNN_DEBUG"):
            raise
        print(f"{PROG}: error: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              f"(set QCNN_DEBUG=1 for the traceback)", file=sys.stderr)
        code = 2
    return code


if __name__ == "__main__":
    sys.exit(main())
