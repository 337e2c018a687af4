"""Shape rules of the operators (ONNX semantics, shapes without the batch dimension).

Used by the reader to check that a file's tensor shapes are consistent, and by the runtime to size
its activation buffers. Raises ValueError with the reason; callers add where.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from qcnn.schema import ir

# Largest element count of one activation tensor (per image) we accept: keeps every size
# computation far from integer overflow in the compiled code.
MAX_TENSOR_ELEMENTS = 1 << 31


def conv_out(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int) -> int:
    return (size + pad_begin + pad_end - kernel) // stride + 1


def pool_out(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, ceil_mode: bool) -> int:
    span = size + pad_begin + pad_end - kernel
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    # ONNX/PyTorch: the last window must start inside the input or the left padding.
    if (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def _image(shape, op) -> Tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"{type(op).__name__} needs a (C, H, W) input, got shape {tuple(shape)}")
    return tuple(shape)


def _check_spatial(op, kernel, strides, pads):
    if min(kernel) < 1 or min(strides) < 1 or min(pads) < 0:
        raise ValueError(f"kernel {kernel}, strides {strides}, pads {pads} must be positive (pads >= 0)")
    if max(kernel) > 4096 or max(strides) > 4096 or max(pads) > 4096:
        raise ValueError(f"kernel {kernel}, strides {strides} or pads {pads} out of range")


def output_shape(op: ir.Operator, input_shapes: Sequence[Tuple[int, ...]]) -> Tuple[int, ...]:
    """Shape of the operator's single output for the given input shapes."""
    if isinstance(op, ir.Concat):
        if not input_shapes:
            raise ValueError("Concat needs at least one input")
        shapes = [_image(s, op) for s in input_shapes]
        if len({s[1:] for s in shapes}) != 1:
            raise ValueError(f"Concat inputs differ in spatial size: {shapes}")
        return (sum(s[0] for s in shapes),) + shapes[0][1:]
    if isinstance(op, ir.Add):
        if len(input_shapes) != 2 or tuple(input_shapes[0]) != tuple(input_shapes[1]):
            raise ValueError(f"Add needs two inputs of the same shape, got {list(input_shapes)}")
        return tuple(input_shapes[0])
    if len(input_shapes) != 1:
        raise ValueError(f"{type(op).__name__} takes one input, got {len(input_shapes)}")
    shape = tuple(input_shapes[0])
    if isinstance(op, ir.Conv):
        c, h, w = _image(shape, op)
        _check_spatial(op, op.kernel, op.strides, op.pads)
        if c != op.cin:
            raise ValueError(f"input has {c} channels, the conv expects {op.cin}")
        if op.groups < 1 or op.cin % op.groups or op.cout % op.groups:
            raise ValueError(f"groups {op.groups} must divide cin {op.cin} and cout {op.cout}")
        oh = conv_out(h, op.kernel[0], op.strides[0], op.pads[0], op.pads[2])
        ow = conv_out(w, op.kernel[1], op.strides[1], op.pads[1], op.pads[3])
        if oh < 1 or ow < 1:
            raise ValueError(f"kernel {op.kernel} does not fit the padded {h}x{w} input")
        return (op.cout, oh, ow)
    if isinstance(op, (ir.MaxPool, ir.AveragePool)):
        c, h, w = _image(shape, op)
        _check_spatial(op, op.kernel, op.strides, op.pads)
        if op.pads[0] >= op.kernel[0] or op.pads[2] >= op.kernel[0] or op.pads[1] >= op.kernel[1] or op.pads[3] >= op.kernel[1]:
            raise ValueError(f"pads {op.pads} must be smaller than the kernel {op.kernel}")
        oh = pool_out(h, op.kernel[0], op.strides[0], op.pads[0], op.pads[2], op.ceil_mode)
        ow = pool_out(w, op.kernel[1], op.strides[1], op.pads[1], op.pads[3], op.ceil_mode)
        if oh < 1 or ow < 1:
            raise ValueError(f"kernel {op.kernel} does not fit the padded {h}x{w} input")
        return (c, oh, ow)
    if isinstance(op, ir.Gemm):
        n = 1
        for d in shape:
            n *= d
        if len(shape) != 1 or n != op.in_features:
            raise ValueError(f"input shape {shape}, the fully connected layer expects ({op.in_features},)")
        return (op.out_features,)
    if isinstance(op, ir.GlobalAveragePool):
        c, _, _ = _image(shape, op)
        return (c, 1, 1)
    if isinstance(op, ir.Flatten):
        n = 1
        for d in shape:
            n *= d
        return (n,)
    if isinstance(op, ir.LRN):
        _image(shape, op)
        return shape
    if isinstance(op, ir.Softmax):
        if len(shape) != 1:
            raise ValueError(f"Softmax needs a (F,) input, got {shape}")
        return shape
    if isinstance(op, ir.Relu):
        return shape
    raise ValueError(f"unknown operator {type(op).__name__}")


def infer_shapes(model: ir.Model) -> List[Tuple[int, ...]]:
    """Output shape of every operator, checking inputs are defined before use."""
    known = {model.input_name: tuple(model.input_shape)}
    out = []
    for op in model.operators:
        try:
            ins = [known[n] for n in op.inputs]
        except KeyError as exc:
            raise ValueError(f"operator {op.name!r} reads tensor {exc.args[0]!r} before it is computed") from None
        shape = output_shape(op, ins)
        n = 1
        for d in shape:
            n *= d
        if n > MAX_TENSOR_ELEMENTS:
            raise ValueError(f"operator {op.name!r}: output of {n} elements is too large")
        known[op.outputs[0]] = shape
        out.append(shape)
    return out
