"""qcnn-inspect: what a .qcnn file holds, layer by layer, from the file alone.

For every operator: kind, output shape and, for conv / fully-connected layers, how the weights are
stored (C's = sub-vector length, K = codewords per codebook, M = subspaces, index bits) and the bytes
of each part (codebooks, packed indices, bias, dense weights). Theoretical FLOPs use the formulas of
Table 1 in Wu et al., "Quantized Convolutional Neural Networks for Mobile Devices" (CVPR 2016, §3.4),
which count one multiply-add as one FLOP and only conv / fully-connected layers:

  conv  original  d_t^2 * C_t * d_k^2 * C_s          Q-CNN  d_s^2 * C_s * K + d_t^2 * C_t * d_k^2 * M
  fc    original  C_s * C_t                          Q-CNN  C_s * K + C_t * M

with C_s / C_t the input / output channels, d_s / d_t the input / output spatial size (d^2 is taken
as H*W for non-square maps), d_k^2 = KH*KW. The paper has no groups; for a conv with G groups we
apply the formulas to each group (C_s/G inputs, C_t/G outputs, M subspaces per group) and add the
groups up, which gives  d_t^2 * C_t * d_k^2 * C_s / G  and  d_s^2 * C_s * K + d_t^2 * C_t * d_k^2 * M.
A conv / fc layer left dense in the file costs its original FLOPs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Dict, List, Optional

from qcnn import QcnnFormatError
from qcnn.schema import ir

FORMULA_NOTE = ("FLOPs: theoretical multiply-adds of conv/fc layers, formulas of Table 1 in Wu et al. "
                "(CVPR 2016, §3.4), applied per group")


def _hw(shape) -> int:
    """Spatial size d^2 of a (C, H, W) shape (H*W)."""
    return int(shape[1]) * int(shape[2])


def conv_flops(op: ir.Conv, in_shape, out_shape) -> Dict[str, int]:
    """Paper Table 1 conv FLOPs, original and (if the weights are quantized) Q-CNN."""
    kh, kw = op.kernel
    g = op.groups
    c_s, c_t = op.cin, op.cout
    original = _hw(out_shape) * c_t * kh * kw * (c_s // g)
    w = op.weights
    if isinstance(w, ir.QuantizedWeights):
        # per group: d_s^2 (C_s/G) K + d_t^2 (C_t/G) d_k^2 M; summed over G groups
        quantized = _hw(in_shape) * c_s * w.ncode + _hw(out_shape) * c_t * kh * kw * w.nsub
    else:
        quantized = original
    return {"flops_original": original, "flops_quantized": quantized}


def fc_flops(op: ir.Gemm) -> Dict[str, int]:
    original = op.in_features * op.out_features
    w = op.weights
    if isinstance(w, ir.QuantizedWeights):
        quantized = op.in_features * w.ncode + op.out_features * w.nsub
    else:
        quantized = original
    return {"flops_original": original, "flops_quantized": quantized}


def _nbytes(a) -> int:
    return 0 if a is None else int(a.nbytes)


def layer_rows(model: ir.Model) -> List[dict]:
    """One dict per operator with shapes, storage and FLOPs (conv / fc only for the last two)."""
    shapes = {t.name: tuple(t.shape) for t in model.tensors}
    shapes[model.input_name] = tuple(model.input_shape)
    rows = []
    for op in model.operators:
        row = {"name": op.name, "op": type(op).__name__, "output_shape": list(shapes[op.outputs[0]])}
        if isinstance(op, (ir.Conv, ir.Gemm)):
            w = op.weights
            if isinstance(op, ir.Conv):
                n_weights = op.cout * (op.cin // op.groups) * op.kernel[0] * op.kernel[1]
                row.update(kernel=list(op.kernel), groups=op.groups, cin=op.cin, cout=op.cout)
                row.update(conv_flops(op, shapes[op.inputs[0]], shapes[op.outputs[0]]))
            else:
                n_weights = op.in_features * op.out_features
                row.update(cin=op.in_features, cout=op.out_features)
                row.update(fc_flops(op))
            bias = _nbytes(op.bias)
            if isinstance(w, ir.QuantizedWeights):
                packed = w.packed_indices if w.packed_indices is not None else None
                from qcnn.schema import packing

                idx_bytes = _nbytes(packed) if packed is not None else \
                    packing.packed_nbytes(int(math.prod(w.index_shape)), w.index_bits)
                row.update(quantized=True, subvec=w.subvec, ncode=w.ncode, nsub=w.nsub, index_bits=w.index_bits,
                           bytes_codebooks=_nbytes(w.codebooks), bytes_indices=idx_bytes, bytes_bias=bias,
                           bytes_dense=0)
            else:
                row.update(quantized=False, subvec=None, ncode=None, nsub=None, index_bits=None,
                           bytes_codebooks=0, bytes_indices=0, bytes_bias=bias, bytes_dense=_nbytes(w))
            row["bytes"] = row["bytes_codebooks"] + row["bytes_indices"] + row["bytes_bias"] + row["bytes_dense"]
            row["bytes_original"] = 4 * n_weights + bias  # float32 weights + bias before conversion
            row["speedup"] = row["flops_original"] / row["flops_quantized"] if row["flops_quantized"] else None
            row["compression"] = row["bytes_original"] / row["bytes"] if row["bytes"] else None
        rows.append(row)
    return rows


def totals(rows: List[dict], file_bytes: int) -> dict:
    wl = [r for r in rows if "flops_original" in r]
    t = {k: sum(r[k] for r in wl) for k in ("flops_original", "flops_quantized", "bytes_codebooks",
                                            "bytes_indices", "bytes_bias", "bytes_dense", "bytes",
                                            "bytes_original")}
    t["speedup"] = t["flops_original"] / t["flops_quantized"] if t["flops_quantized"] else None
    t["compression"] = t["bytes_original"] / t["bytes"] if t["bytes"] else None
    t["file_bytes"] = file_bytes
    t["quantized_layers"] = sum(1 for r in wl if r["quantized"])
    t["weight_layers"] = len(wl)
    return t


def describe(path) -> dict:
    """Everything qcnn-inspect reports, as a JSON-ready dict."""
    from qcnn.schema.reader import open_qcnn

    # Verifies the whole file, codes < K included: that check needs the indices unpacked (the
    # table itself only needs their sizes), so a file the runtime would refuse is refused here too.
    f = open_qcnn(path, unpack_indices=True)
    try:
        m = f.model
        rows = layer_rows(m)
        report = m.metadata.get("qcnn.report")
        try:
            report = json.loads(report) if report else None
        except ValueError:
            pass  # not JSON: keep the string
        pre = m.preprocessing
        info = {
            "file": str(path),
            "version": m.version,
            "producer": m.producer,
            "source_sha256": m.source_sha256,
            "input": {"name": m.input_name, "shape": list(m.input_shape)},
            "outputs": list(m.outputs),
            "preprocessing": None if pre is None else {
                "mean": list(pre.mean), "std": list(pre.std), "scale": pre.scale,
                "channel_order": pre.channel_order, "resize_shorter": pre.resize_shorter, "crop": list(pre.crop)},
            "labels": 0 if not m.labels else len(m.labels),
            "metadata": {k: v for k, v in m.metadata.items() if k != "qcnn.report"},
            "report": report,
            "layers": rows,
            "totals": totals(rows, f.nbytes),
            "flops_note": FORMULA_NOTE,
        }
    finally:
        m = pre = None  # drop our references to views of the mapping before closing it
        try:
            f.close()
        except BufferError:  # a view is still referenced somewhere; the GC unmaps later
            pass
    return info


def _fmt_int(n: Optional[int]) -> str:
    return "-" if n is None else f"{n:,}"


def _fmt_flops(n: int) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_text(info: dict) -> str:
    from qcnn.tools.common import human_bytes

    out = [f"{info['file']}: .qcnn version {info['version']}, producer {info['producer'] or '?'}",
           f"source sha256: {info['source_sha256'] or '?'}",
           f"input {info['input']['name']} {tuple(info['input']['shape'])}, outputs {', '.join(info['outputs'])}, "
           f"labels: {info['labels'] or 'none'}"]
    p = info["preprocessing"]
    if p:
        out.append(f"preprocessing: {p['channel_order']}, resize shorter side to {p['resize_shorter'] or '-'}, "
                   f"crop {p['crop'][0]}x{p['crop'][1]}, x = (pixel * {p['scale']:.6g} - mean) / std, "
                   f"mean {[round(v, 4) for v in p['mean']]}, std {[round(v, 4) for v in p['std']]}")
    else:
        out.append("preprocessing: none stored")
    for k, v in info["metadata"].items():
        out.append(f"metadata {k}: {v if len(v) < 200 else v[:200] + '...'}")
    out.append("")
    head = ["#", "name", "op", "output", "C's", "K", "M", "bits", "codebooks", "indices", "bias", "dense",
            "FLOPs orig", "FLOPs Q", "speed-up"]
    table = []
    for i, r in enumerate(info["layers"]):
        shape = "x".join(map(str, r["output_shape"]))
        if "flops_original" in r:
            table.append([str(i), r["name"], r["op"], shape, _fmt_int(r["subvec"]), _fmt_int(r["ncode"]),
                          _fmt_int(r["nsub"]), _fmt_int(r["index_bits"]), _fmt_int(r["bytes_codebooks"]),
                          _fmt_int(r["bytes_indices"]), _fmt_int(r["bytes_bias"]), _fmt_int(r["bytes_dense"]),
                          _fmt_flops(r["flops_original"]), _fmt_flops(r["flops_quantized"]),
                          f"{r['speedup']:.2f}x"])
        else:
            table.append([str(i), r["name"], r["op"], shape] + [""] * 11)
    t = info["totals"]
    table.append(["", "total", "", "", "", "", "", "", _fmt_int(t["bytes_codebooks"]), _fmt_int(t["bytes_indices"]),
                  _fmt_int(t["bytes_bias"]), _fmt_int(t["bytes_dense"]), _fmt_flops(t["flops_original"]),
                  _fmt_flops(t["flops_quantized"]), f"{t['speedup']:.2f}x" if t["speedup"] else "-"])
    widths = [max(len(row[j]) for row in table + [head]) for j in range(len(head))]
    left = {1, 2, 3}
    for row in [head] + table:
        out.append("  ".join(c.ljust(w) if j in left else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
    out.append("")
    comp = f"{t['compression']:.2f}x" if t["compression"] else "-"
    out.append(f"{t['quantized_layers']} of {t['weight_layers']} conv/fc layers quantized; weights+bias "
               f"{human_bytes(t['bytes'])} stored vs {human_bytes(t['bytes_original'])} as float32 "
               f"(compression {comp}); file {human_bytes(t['file_bytes'])}")
    out.append(info["flops_note"] + "; speed-up = original / quantized.")
    rep = info["report"]
    if rep is not None:
        out.append("")
        out.append("converter report (metadata qcnn.report):")
        out.extend("  " + ln for ln in format_report(rep))
    return "\n".join(out)


def format_report(rep) -> List[str]:
    """Readable lines for the converter's report: summary fields, then one line per layer."""
    if not isinstance(rep, dict):
        text = rep if isinstance(rep, str) else json.dumps(rep)
        return text.splitlines()[:60]
    lines = []
    for key in ("tool", "method", "calibration", "seconds"):
        if rep.get(key) is not None:
            lines.append(f"{key}: {rep[key]}")
    for key in ("settings", "total", "network"):
        if isinstance(rep.get(key), dict):
            items = ", ".join(f"{k}={_short(v)}" for k, v in rep[key].items())
            lines.append(f"{key}: {items}")
    for layer in rep.get("layers") or []:
        if not isinstance(layer, dict):
            continue
        desc = [f"{layer.get('name', '?')}:"]
        if layer.get("quantized"):
            desc.append(f"{layer.get('subvec')}/{layer.get('ncode')}")
        else:
            desc.append("dense" + (f" ({layer['reason']})" if layer.get("reason") else ""))
        if layer.get("error") is not None:
            desc.append(f"response error {_short(layer['error'])}")
        if layer.get("seconds") is not None:
            desc.append(f"{_short(layer['seconds'])} s")
        lines.append("  ".join(desc))
    extra = sorted(set(rep) - {"tool", "method", "calibration", "seconds", "settings", "total", "network", "layers"})
    for key in extra:
        lines.append(f"{key}: {_short(rep[key])}")
    return lines


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        text = json.dumps(v)
        return text if len(text) < 80 else text[:77] + "..."
    return str(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="qcnn-inspect", description="Per-layer storage and theoretical FLOPs of a .qcnn file.")
    p.add_argument("model", help="a .qcnn file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    try:
        info = describe(args.model)
    except (QcnnFormatError, FileNotFoundError) as exc:
        print(f"qcnn-inspect: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
