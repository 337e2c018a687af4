"""Every field of a .qcnn FlatBuffer with its absolute byte position.

The mutation harness rewrites single fields (a shape, a tensor index, a union type, an offset)
and then re-signs the checksums, so the reader's structural checks are what gets exercised, not
just its CRCs. To know where a field lives we walk the FlatBuffer with the project's own
bounds-checked reader (qcnn.schema.flatbuf) following the table layout of schema/qcnn.fbs.

`walk(meta)` returns Field records:
  kind "scalar"   a scalar field (fmt: struct code), e.g. Conv2DOptions.cin
  kind "elem"     one element of a scalar vector, e.g. Tensor.shape[1], Operator.inputs[0]
  kind "uoffset"  a 4-byte forward offset to a table, vector or string
  kind "veclen"   the 4-byte length prefix of a vector or string
  kind "soffset"  a table's 4-byte signed offset to its vtable
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional

from qcnn.schema import flatbuf
from qcnn.schema.layout import FILE_IDENTIFIER


@dataclass
class Field:
    path: str  # e.g. "Model.graph.operators[1].options.cin"
    pos: int  # absolute position in the FlatBuffer (= in the file)
    fmt: str  # struct code: B b H i I Q f
    kind: str
    value: object = None


# Table layouts: slot -> (name, type). Types: struct codes for scalars, "str", "[i]"/"[f]" scalar
# vectors, "[str]", a table name, "[Table]" vectors of tables, or ("union", type_slot, {type: table}).
_OPTIONS = {1: "Conv2DOptions", 2: "FullyConnectedOptions", 3: "ReluOptions", 4: "LRNOptions",
            5: "Pool2DOptions", 6: "Empty", 7: "Empty", 8: "Empty", 9: "Empty", 10: "AddOptions"}
_WEIGHTS = {1: "QuantizedWeights", 2: "DenseWeights"}
SCHEMA = {
    "Model": {0: ("version", "I"), 1: ("producer", "str"), 2: ("source_sha256", "str"), 3: ("file_size", "Q"),
              4: ("input_name", "str"), 5: ("input_shape", "[i]"), 6: ("input_dtype", "b"),
              7: ("preprocessing", "Preprocessing"), 8: ("labels", "[str]"), 9: ("graph", "Graph"),
              10: ("buffers", "[Buffer]"), 11: ("metadata", "[KeyValue]")},
    "Preprocessing": {0: ("mean", "[f]"), 1: ("std", "[f]"), 2: ("scale", "f"), 3: ("channel_order", "b"),
                      4: ("resize_shorter", "i"), 5: ("crop_h", "i"), 6: ("crop_w", "i")},
    "Graph": {0: ("tensors", "[Tensor]"), 1: ("input", "i"), 2: ("outputs", "[i]"), 3: ("operators", "[Operator]")},
    "Tensor": {0: ("name", "str"), 1: ("shape", "[i]")},
    "Operator": {0: ("kind", "B"), 1: ("name", "str"), 2: ("inputs", "[i]"), 3: ("outputs", "[i]"),
                 4: ("options_type", "B"), 5: ("options", ("union", 4, _OPTIONS))},
    "Conv2DOptions": {0: ("cin", "i"), 1: ("cout", "i"), 2: ("kernel_h", "i"), 3: ("kernel_w", "i"),
                      4: ("stride_h", "i"), 5: ("stride_w", "i"), 6: ("pad_top", "i"), 7: ("pad_left", "i"),
                      8: ("pad_bottom", "i"), 9: ("pad_right", "i"), 10: ("groups", "i"),
                      11: ("weights_type", "B"), 12: ("weights", ("union", 11, _WEIGHTS)), 13: ("bias", "I"),
                      14: ("fused_relu", "B")},
    "FullyConnectedOptions": {0: ("in_features", "i"), 1: ("out_features", "i"), 2: ("weights_type", "B"),
                              3: ("weights", ("union", 2, _WEIGHTS)), 4: ("bias", "I"), 5: ("fused_relu", "B")},
    "ReluOptions": {},
    "Empty": {},
    "LRNOptions": {0: ("size", "i"), 1: ("alpha", "f"), 2: ("beta", "f"), 3: ("bias", "f")},
    "Pool2DOptions": {0: ("kernel_h", "i"), 1: ("kernel_w", "i"), 2: ("stride_h", "i"), 3: ("stride_w", "i"),
                      4: ("pad_top", "i"), 5: ("pad_left", "i"), 6: ("pad_bottom", "i"), 7: ("pad_right", "i"),
                      8: ("ceil_mode", "B"), 9: ("count_include_pad", "B")},
    "AddOptions": {0: ("fused_relu", "B")},
    "QuantizedWeights": {0: ("subvec", "i"), 1: ("nsub", "i"), 2: ("ncode", "i"), 3: ("index_bits", "i"),
                         4: ("codebooks", "I"), 5: ("indices", "I")},
    "DenseWeights": {0: ("buffer", "I")},
    "Buffer": {0: ("offset", "Q"), 1: ("size", "Q"), 2: ("crc32", "I")},
    "KeyValue": {0: ("key", "str"), 1: ("value", "str")},
}


def _u32(buf, pos):
    return struct.unpack_from("<I", buf, pos)[0]


def _walk_table(buf, size, t: flatbuf.Table, tname: str, path: str, out: List[Field]):
    out.append(Field(path + ".<vtable>", t.pos, "i", "soffset", struct.unpack_from("<i", buf, t.pos)[0]))
    layout = SCHEMA[tname]
    for slot, (name, typ) in layout.items():
        fpath = f"{path}.{name}"
        if isinstance(typ, str) and len(typ) == 1:
            at = t._field(slot, struct.calcsize("<" + typ), name)
            if at is not None:
                out.append(Field(fpath, at, typ, "scalar", struct.unpack_from("<" + typ, buf, at)[0]))
            continue
        at = t._field(slot, 4, name)
        if at is None:
            continue
        out.append(Field(fpath, at, "I", "uoffset", _u32(buf, at)))
        target = at + _u32(buf, at)
        if isinstance(typ, tuple):  # union: pick the table type from the type slot
            utype = t.u8(typ[1], "type")
            sub = typ[2].get(utype)
            if sub is not None:
                _walk_table(buf, size, flatbuf.Table(buf, size, target, fpath), sub, fpath, out)
        elif typ == "str":
            out.append(Field(fpath + ".<len>", target, "I", "veclen", _u32(buf, target)))
        elif typ.startswith("["):
            n = _u32(buf, target)
            out.append(Field(fpath + ".<len>", target, "I", "veclen", n))
            elem = typ[1:-1]
            for i in range(n):
                ep = target + 4 + 4 * i
                if elem in ("i", "f"):
                    out.append(Field(f"{fpath}[{i}]", ep, elem, "elem", struct.unpack_from("<" + elem, buf, ep)[0]))
                else:
                    out.append(Field(f"{fpath}[{i}]", ep, "I", "uoffset", _u32(buf, ep)))
                    etarget = ep + _u32(buf, ep)
                    if elem == "str":
                        out.append(Field(f"{fpath}[{i}].<len>", etarget, "I", "veclen", _u32(buf, etarget)))
                    else:
                        _walk_table(buf, size, flatbuf.Table(buf, size, etarget, f"{fpath}[{i}]"), elem,
                                    f"{fpath}[{i}]", out)
        else:
            _walk_table(buf, size, flatbuf.Table(buf, size, target, fpath), typ, fpath, out)


def walk(meta: bytes) -> List[Field]:
    """Fields of a valid FlatBuffer (raises QcnnFormatError on a broken one)."""
    root = flatbuf.root(meta, len(meta), FILE_IDENTIFIER)
    out = [Field("Model.<root>", 0, "I", "uoffset", _u32(meta, 0))]
    _walk_table(meta, len(meta), root, "Model", "Model", out)
    return out


def flatbuffer_of(data: bytes) -> Optional[bytes]:
    """The FlatBuffer part of a .qcnn file, as its footer says (None if the footer is unusable)."""
    if len(data) < 24:
        return None
    fb_size = _u32(data, len(data) - 12)
    if not 8 <= fb_size <= len(data) - 16:
        return None
    return data[:fb_size]


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description="List every FlatBuffer field of a .qcnn file with its byte position")
    ap.add_argument("path")
    args = ap.parse_args(argv)
    with open(args.path, "rb") as f:
        data = f.read()
    fb = flatbuffer_of(data)
    if fb is None:
        raise SystemExit("footer unusable")
    for fld in walk(fb):
        print(f"{fld.pos:8d} {fld.kind:8s} {fld.fmt} {fld.path} = {fld.value!r}")


if __name__ == "__main__":
    main()
