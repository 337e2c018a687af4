"""qcnn.runtime.Model: load a .qcnn (mmap + verify) and run it with look-up-table kernels.

Execution plan, built once at load:
- every operator becomes a step bound to a compiled kernel from qcnn.runtime._core;
- activations are float32 channels-last (H, W, C) per image; the graph input is transposed from
  NCHW once per image, Flatten transposes back so fully-connected weights keep ONNX's order;
- activation buffers are assigned by liveness (a tensor's buffer is reused once its last reader
  ran), sized once per input shape and kept per thread, so `run` is safe on many threads.

numpy is the only Python dependency; no BLAS is called (numpy here only copies and transposes).
"""
from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from qcnn import QcnnFormatError
from qcnn.runtime import _core
from qcnn.schema import ir, shapes
from qcnn.schema.reader import open_qcnn


def _unpacked_indices(w: ir.QuantizedWeights, what: str) -> np.ndarray:
    count = int(np.prod(w.index_shape))
    out = np.empty(count, dtype=np.uint8)
    largest = _core.unpack_indices(w.packed_indices, w.index_bits, count, out)
    if count and largest >= w.ncode:
        raise QcnnFormatError(f"{what}: index {largest} >= K={w.ncode}")
    return out.reshape(w.index_shape)


def _private(a: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """A C-contiguous float32 copy that does not live in the file mapping."""
    return None if a is None else np.array(a, dtype=np.float32, order="C", copy=True)


class _Step:
    """One operator bound to its kernel: reads buffers `inputs`, writes buffer `output`."""

    __slots__ = ("op", "kind", "kernel", "in_shapes", "out_shape", "inputs", "output", "scratch_nbytes",
                 "concat_into", "pool_into", "lrn_into", "fused")

    def __init__(self, op, kind, kernel, in_shapes, out_shape):
        self.op, self.kind, self.kernel = op, kind, kernel
        self.in_shapes, self.out_shape = in_shapes, out_shape
        self.inputs: List[int] = []
        self.output = -1
        self.scratch_nbytes = 0
        self.concat_into = None  # (concat step, channel offset): this conv writes into the concat's output
        self.pool_into = None  # the MaxPool step this conv runs fused with (it writes the pool's output)
        self.lrn_into = None  # the LRN step between this conv and that MaxPool, run fused too
        self.fused = False  # a Concat whose inputs were written in place by their producers, or a
        # MaxPool (or LRN) run by the conv before it


_DENSE = (_core.DenseConvKernel, _core.ConvMaxPoolKernel, _core.DenseFcKernel)  # layers kept dense


def _hwc(shape):
    """(C, H, W) -> the (H, W, C) buffer shape; vectors stay as they are."""
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else tuple(shape)


def dense_precision(lut: str = "int8", isa: str = "auto", dense: str = "auto", conv=None) -> str:
    """What Model(lut=, isa=, dense=) runs a layer kept dense (conv or fully connected) in:
    "int8" or "fp32".

    "auto" picks int8 only where it is faster, and only with int8 tables (lut="float" keeps every
    layer in floats). With AVX-512 VNNI (vpdpbusd: 64 MACs per instruction) int8 wins on every
    conv (~3.4x). With AVX2 only, int8 multiplies 16-bit copies (vpmaddwd), ~1.6x the MAC rate
    of fp32 FMAs but with a fixed cost per input pixel (quantizing it, widening it to 16 bits),
    so it pays only on convs doing many MACs per input value and little zero padding of the
    4-channel quads (measured, benchmarks/bench_qkernels.py: AlexNet conv1 1.27x, SqueezeNet
    3x3 expands 1.2-1.6x, conv10 1.4x, VGG conv3_2 1.55x; SqueezeNet 1x1 squeeze/expand and
    3-channel conv0 0.6x). `conv` is the ir.Conv or ir.Gemm (None: the answer for a typical conv).
    """
    if dense != "auto":
        return dense
    if lut != "int8":
        return "fp32"
    resolved = _core.isa_selected() if isa == "auto" else isa
    if isinstance(conv, ir.Gemm):
        # A dense FC streams its weights once per image: int8 ones are a quarter of the bytes
        # (AVX2: half, widened to 16 bits), measured on Zen 4 for AlexNet's fc6 5.65 ms fp32 ->
        # 0.93 ms VNNI, 2.6 ms AVX2; portable C int8 is slower than fp32 (7.7 ms).
        return "int8" if resolved in ("avx2", "avx512vbmi") else "fp32"
    if resolved == "avx512vbmi" and _core.int8_conv_fast_available():
        return "int8"
    if resolved in ("avx2", "avx512vbmi") and conv is not None and _avx2_int8_pays(conv):
        return "int8"
    return "fp32"


def _avx2_int8_pays(conv) -> bool:
    """The AVX2 int8 conv is faster than fp32 for this conv (see dense_precision)."""
    cin_g, cout_g = conv.cin // conv.groups, conv.cout // conv.groups
    kh, kw = conv.kernel
    seglen = kw * cin_g if conv.groups == 1 else cin_g  # contiguous values per kernel row (ops_iconv.c)
    quad_use = seglen / (4 * -(-seglen // 4))
    macs_per_input = cout_g * kh * kw / (conv.strides[0] * conv.strides[1])
    return quad_use >= 0.9 and macs_per_input >= 256


class Model:
    """A loaded .qcnn model.

    >>> m = Model("alexnet.qcnn")        # mmap + verify; raises QcnnFormatError on a bad file
    >>> y = m.run(x)                      # x: float32 (N, C, H, W)
    """

    def __init__(self, path, lut: str = "int8", isa: str = "auto", max_activation_bytes: int = 1 << 30,
                 dense: str = "auto"):
        if lut not in ("int8", "float"):
            raise ValueError(f"lut must be 'int8' or 'float', got {lut!r}")
        if dense not in ("auto", "fp32", "int8"):
            raise ValueError(f"dense must be 'auto', 'fp32' or 'int8', got {dense!r}")
        self.path = str(path)
        self.lut = lut
        # Convs and FC layers kept dense (not quantized in the file): "int8" runs them in 8-bit
        # integers (uint8 input per image, int8 weights per channel; ops.h qcnn_iconv_params), "fp32" in
        # floats; "auto": per layer, see dense_precision(). self.dense then says what ran.
        self._dense_setting = dense
        self._file = open_qcnn(path)
        self._closed = False
        self._active = 0
        self._cond = threading.Condition()
        self._local = threading.local()
        model = self._file.model
        self._ir = model
        self.isa = _core.isa_selected() if isa == "auto" else isa
        self.max_activation_bytes = int(max_activation_bytes)
        self._steps = self._build(model, isa)
        self._plan_buffers(model)
        self._layers = self._describe_layers()
        self._release_mapping()

    # ------------------------------------------------------------------ what the file says
    @property
    def dense(self) -> str:
        """What the layers kept dense (convs and fully connected) run in: "int8", "fp32", or
        "int8+fp32" when the choice differs per layer (dense="auto" on AVX2; `layers` gives each
        layer's precision)."""
        used = sorted({st.kernel.precision for st in self._steps if isinstance(st.kernel, _DENSE)},
                      reverse=True)
        return "+".join(used) if used else dense_precision(self.lut, self.isa, self._dense_setting)

    @property
    def input_shape(self):
        """(N, C, H, W) with N = -1: any batch size."""
        return (-1,) + tuple(self._ir.input_shape)

    @property
    def input_name(self) -> str:
        return self._ir.input_name

    @property
    def output_names(self) -> List[str]:
        return list(self._ir.outputs)

    @property
    def labels(self) -> Optional[List[str]]:
        return self._ir.labels

    @property
    def preprocessing(self) -> Optional[ir.Preprocessing]:
        return self._ir.preprocessing

    @property
    def metadata(self) -> Dict[str, str]:
        return dict(self._ir.metadata)

    @property
    def layers(self) -> List[dict]:
        """One dict per operator: name, op, output shape, and for conv/fc how its weights are stored."""
        return [dict(d) for d in self._layers]

    def _describe_layers(self) -> List[dict]:
        out = []
        for step in self._steps:
            op = step.op
            d = {"name": op.name, "op": type(op).__name__, "output_shape": tuple(step.out_shape)}
            w = getattr(op, "weights", None)
            if isinstance(w, ir.QuantizedWeights):
                d.update(quantized=True, subvec=w.subvec, nsub=w.nsub, ncode=w.ncode, index_bits=w.index_bits)
            elif w is not None:
                d.update(quantized=False)
                if isinstance(step.kernel, _DENSE):
                    d.update(precision=step.kernel.precision)
                    if step.kernel.precision == "int8":  # amx, avx512vnni, avx2 or generic
                        d.update(int8_kernel=step.kernel.int8_isa)
                        conv = getattr(step.kernel, "conv", step.kernel)
                        if isinstance(conv, _core.DenseConvKernel) and conv.winograd_for(*step.in_shapes[0][1:]):
                            d.update(winograd=True)  # runs as Winograd F(4x4, 3x3) on this input
            if step.pool_into is not None:
                d.update(fused_with=", ".join(st.op.name for st in (step.lrn_into, step.pool_into) if st is not None))
            elif step.kind in ("MaxPool", "LRN") and step.fused:
                d.update(fused_into=next(st.op.name for st in self._steps if step in (st.pool_into, st.lrn_into)))
            out.append(d)
        return out

    # ------------------------------------------------------------------ plan
    def _build(self, model: ir.Model, isa: str) -> List[_Step]:
        known = {model.input_name: tuple(model.input_shape)}
        steps = []
        for op in model.operators:
            in_shapes = [known[n] for n in op.inputs]
            out_shape = shapes.output_shape(op, in_shapes)
            known[op.outputs[0]] = out_shape
            steps.append(_Step(op, type(op).__name__, self._kernel(op, isa), in_shapes, out_shape))
        self._fuse_concats(model, steps)
        self._fuse_pools(model, steps)
        return steps

    @staticmethod
    def _fuse_pools(model: ir.Model, steps: List[_Step]):
        """Run a conv and the MaxPool that alone reads its output (or an LRN between them, as
        AlexNet's conv1/conv2 -> LRN -> pool) as one step: its rows are normalised and pooled
        while in cache instead of whole outputs being written and read back. Int8 dense convs
        (ConvMaxPoolKernel: SqueezeNet's conv0, VGG-16's conv1_2, AlexNet's conv1) and table convs
        (QConvMaxPoolKernel: VGG-16's other block ends, AlexNet's conv2 and conv5)."""
        readers: Dict[str, List[_Step]] = {}
        for st in steps:
            for name in st.op.inputs:
                readers.setdefault(name, []).append(st)

        def only_reader(step):  # the one step reading step's output, if it is an internal tensor
            out = step.op.outputs[0]
            r = readers.get(out, [])
            return r[0] if len(r) == 1 and out not in model.outputs and r[0].op.inputs == [out] else None

        for st in steps:
            if isinstance(st.kernel, _core.QConvKernel):
                fused_kernel = _core.QConvMaxPoolKernel
            elif isinstance(st.kernel, _core.DenseConvKernel) and st.kernel.precision == "int8":
                fused_kernel = _core.ConvMaxPoolKernel
            else:
                continue
            if st.concat_into is not None:
                continue
            nxt = only_reader(st)
            lrn = nxt if nxt is not None and nxt.kind == "LRN" else None
            pool = only_reader(lrn) if lrn is not None else nxt
            if pool is None or pool.kind != "MaxPool":
                continue
            st.kernel = fused_kernel(
                st.kernel, pool.op.kernel, pool.op.strides, pool.op.pads, bool(pool.op.ceil_mode),
                lrn=(lrn.op.size, lrn.op.alpha, lrn.op.beta, lrn.op.bias) if lrn is not None else None)
            st.pool_into, st.lrn_into = pool, lrn
            pool.fused = True
            if lrn is not None:
                lrn.fused = True

    @staticmethod
    def _fuse_concats(model: ir.Model, steps: List[_Step]):
        """Let dense convs write straight into the channel slice of the Concat that reads them
        (SqueezeNet's fire modules), instead of copying their outputs there afterwards."""
        producer = {st.op.outputs[0]: st for st in steps}
        readers: Dict[str, int] = {}
        for st in steps:
            for name in st.op.inputs:
                readers[name] = readers.get(name, 0) + 1
        for st in steps:
            if st.kind != "Concat":
                continue
            sources = [producer.get(name) for name in st.op.inputs]
            if len(set(st.op.inputs)) != len(st.op.inputs) or not all(
                    src is not None and isinstance(src.kernel, _core.DenseConvKernel) and src.concat_into is None
                    and readers.get(src.op.outputs[0]) == 1 and src.op.outputs[0] not in model.outputs
                    for src in sources):
                continue
            offset = 0
            for src in sources:
                src.concat_into = (st, offset)
                offset += src.out_shape[0]
            st.fused = True

    def _kernel(self, op, isa):
        """The compiled kernel for a conv / fully-connected operator (None for the other ops).

        Kernels get private copies of what they read at run time (codebooks and biases are small;
        indices are unpacked anyway), never views of the mapping: a file truncated or rewritten in
        place on disk after loading cannot fault a running model (SIGBUS).
        """
        what = f"operator {op.name!r}"
        dense_isa = {"avx512vbmi": "avx512"}.get(isa, isa)  # dense kernels need AVX-512F only
        if isinstance(op, ir.Conv):
            w = op.weights
            if isinstance(w, ir.QuantizedWeights):
                return _core.QConvKernel(
                    op.cin, op.cout, op.groups, op.kernel[0], op.kernel[1], op.strides, op.pads,
                    w.subvec, w.nsub, w.ncode, _private(w.codebooks), _unpacked_indices(w, what),
                    _private(op.bias), bool(op.relu), isa=isa, lut=self.lut)
            return _core.DenseConvKernel(_private(w), _private(op.bias), strides=op.strides, pads=op.pads, groups=op.groups,
                                         relu=bool(op.relu), isa=dense_isa,
                                         precision=dense_precision(self.lut, isa, self._dense_setting, op))
        if isinstance(op, ir.Gemm):
            w = op.weights
            if isinstance(w, ir.QuantizedWeights):
                return _core.QFcKernel(
                    op.in_features, op.out_features, w.subvec, w.nsub, w.ncode,
                    _private(w.codebooks[0]), _unpacked_indices(w, what).reshape(w.nsub, op.out_features),
                    _private(op.bias), bool(op.relu), isa=isa, lut=self.lut)
            precision = dense_precision(self.lut, isa, self._dense_setting, op)
            # int8: the kernel keeps only its int8 copy, read from the mapping once here
            return _core.DenseFcKernel(w if precision == "int8" else _private(w), _private(op.bias),
                                       relu=bool(op.relu), isa=dense_isa, precision=precision)
        return None

    def _plan_buffers(self, model: ir.Model):
        """Assign activation tensors to reusable buffer slots by liveness.

        A slot is free at step i once every tensor kept in it was last read before step i.
        ReLU and Softmax write in place when their input is not read again.
        """
        never = len(self._steps) + 1
        last_use = {name: never for name in model.outputs}
        for i, step in enumerate(self._steps):
            for name in step.op.inputs:
                last_use[name] = max(last_use.get(name, i), i)
        slot_of = {model.input_name: 0}
        sizes = [int(np.prod(model.input_shape))]
        busy_until = [last_use.get(model.input_name, 0)]
        def allocate(size, i):
            free = [s for s in range(len(sizes)) if busy_until[s] < i]
            fitting = [s for s in free if sizes[s] >= size]
            if fitting:
                return min(fitting, key=lambda s: sizes[s])
            if free:
                return max(free, key=lambda s: sizes[s])
            sizes.append(0)
            busy_until.append(0)
            return len(sizes) - 1

        for i, step in enumerate(self._steps):
            if step.fused and step.kind in ("MaxPool", "LRN"):
                continue  # run by the conv before it, which writes the pool's output (no buffer, no step)
            step.inputs = [slot_of[n] for n in step.op.inputs]
            out_name = step.op.outputs[0]
            size, end = int(np.prod(step.out_shape)), last_use.get(out_name, i)
            if step.pool_into is not None:  # writes the pooled output: the pool's tensor, sized as it
                out_name = step.pool_into.op.outputs[0]
                size, end = int(np.prod(step.pool_into.out_shape)), last_use.get(out_name, i)
            target = step.concat_into[0].op.outputs[0] if step.concat_into else (out_name if step.fused else None)
            if target is not None:
                # A fused concat's output slot is taken when its first input is written.
                if target not in slot_of:
                    concat = step.concat_into[0] if step.concat_into else step
                    slot_of[target] = slot = allocate(int(np.prod(concat.out_shape)), i)
                    sizes[slot] = max(sizes[slot], int(np.prod(concat.out_shape)))
                    busy_until[slot] = max(busy_until[slot], last_use.get(target, i))
                slot = slot_of[target]
            elif step.kind in ("Relu", "Softmax") and last_use[step.op.inputs[0]] == i:
                slot = step.inputs[0]
            else:
                slot = allocate(size, i)
            sizes[slot] = max(sizes[slot], size)
            busy_until[slot] = max(busy_until[slot], end)
            step.output = slot
            slot_of[out_name] = slot
            if step.kernel is not None:
                shape = step.in_shapes[0]
                step.scratch_nbytes = int(step.kernel.scratch_nbytes(shape[1], shape[2])) if step.kind == "Conv" \
                    else int(step.kernel.scratch_nbytes())
        total = 4 * sum(sizes) + max([st.scratch_nbytes for st in self._steps] + [0])
        if total > self.max_activation_bytes:
            raise MemoryError(f"{self.path}: running this model needs {total / 2**20:.0f} MiB of activation memory "
                              f"per thread, above the limit of {self.max_activation_bytes / 2**20:.0f} MiB "
                              f"(raise it with Model(..., max_activation_bytes=N) if the model is trusted)")
        self._slot_sizes = sizes
        self._output_slots = [slot_of[n] for n in model.outputs]
        self._output_shapes = [self._shape_of(n, model) for n in model.outputs]
        self._scratch_nbytes = max([s.scratch_nbytes for s in self._steps] + [64])

    def _shape_of(self, name, model):
        if name == model.input_name:
            return tuple(model.input_shape)
        for step in self._steps:
            if step.op.outputs[0] == name:
                return tuple(step.out_shape)
        raise KeyError(name)

    def _buffers(self):
        """This thread's workspace (allocated on first use, then reused): activation slots, scratch,
        and every step's input/output views, made once so `run` does no shape arithmetic."""
        ws = getattr(self._local, "ws", None)
        if ws is None:
            slots = [np.empty(n, dtype=np.float32) for n in self._slot_sizes]

            def view(slot, shape, flat=False):
                v = slots[slot][: int(np.prod(shape))]
                return v if flat else v.reshape(_hwc(shape))

            steps = []
            for st in self._steps:
                if st.fused:
                    continue  # a Concat or MaxPool whose output its producers wrote
                flat = st.kind == "Gemm"
                ins = [view(s, shp, flat) for s, shp in zip(st.inputs, st.in_shapes)]
                out = view(st.output, st.pool_into.out_shape if st.pool_into else st.out_shape, flat)
                if st.kind == "Flatten" and len(st.in_shapes[0]) == 3:
                    out = out.reshape(st.in_shapes[0])  # written in (C, H, W) order
                elif st.kind == "GlobalAveragePool":
                    out = out.reshape(-1)
                offset = 0
                if st.concat_into is not None:  # write the whole concat buffer at a channel offset
                    concat, offset = st.concat_into
                    out = view(st.output, concat.out_shape)
                steps.append((st, ins, out, offset))
            ws = self._local.ws = {
                "input": view(0, self._ir.input_shape),
                "steps": steps,
                "outputs": [view(s, shp) for s, shp in zip(self._output_slots, self._output_shapes)],
                "scratch": np.empty(self._scratch_nbytes, dtype=np.uint8),
            }
        return ws

    # ------------------------------------------------------------------ run
    def _check_input(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise ValueError(f"input must be a numpy array, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise ValueError(f"input dtype must be float32, got {x.dtype}")
        expected = tuple(self._ir.input_shape)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"input shape must be (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if x.shape[0] < 1:
            raise ValueError("input batch is empty (N = 0)")
        return x

    def run(self, x: np.ndarray):
        """Run the model on a float32 (N, C, H, W) batch; returns the output array (or a list of them)."""
        x = self._check_input(x)
        with self._cond:
            if self._closed:
                raise ValueError("Model is closed")
            self._active += 1
        try:
            n = x.shape[0]
            results = [np.empty((n,) + s, dtype=np.float32) for s in self._output_shapes]
            ws = self._buffers()
            for i in range(n):
                self._run_one(x[i], ws, index=i)
                for r, out, shape in zip(results, ws["outputs"], self._output_shapes):
                    r[i] = out.transpose(2, 0, 1) if len(shape) == 3 else out
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()
        return results[0] if len(results) == 1 else results

    def profile(self, x: np.ndarray, runs: int = 20) -> List[dict]:
        """Time every operator on the first image of `x`: [{name, op, ms}] in plan order, ms being the
        median over `runs` runs after one warm-up (a Concat fused into its convs, or a MaxPool or LRN
        into the conv before it, shows 0)."""
        x = self._check_input(x)
        ws = self._buffers()
        times = {id(step): [] for step, _, _, _ in ws["steps"]}
        for r in range(runs + 1):
            self._run_one(x[0], ws, times if r else None)
        out = []
        for step in self._steps:
            samples = times.get(id(step))
            ms = 1e3 * float(np.median(samples)) if samples else 0.0
            out.append({"name": step.op.name, "op": step.kind, "ms": ms})
        return out

    def _run_one(self, image_chw, ws, times=None, index=0):
        if image_chw.flags.c_contiguous and image_chw.flags.aligned:  # C reads floats: needs alignment
            bad = _core.nchw_to_nhwc(image_chw, ws["input"])
        else:
            np.copyto(ws["input"], image_chw.transpose(1, 2, 0))
            bad = int(np.count_nonzero(~np.isfinite(ws["input"])))
        if bad:
            # int8 quantization would turn them into finite numbers: an output that looks valid
            raise ValueError(f"input image {index} has {bad} NaN or infinite value(s)")
        scratch = ws["scratch"]
        clock = time.perf_counter
        for step, ins, out, offset in ws["steps"]:
            if times is not None:
                started = clock()
            op, kind = step.op, step.kind
            if offset or step.concat_into is not None:
                step.kernel.run(ins[0], out, scratch, offset)
            elif step.kernel is not None:
                step.kernel.run(ins[0], out, scratch)
            elif kind == "Relu":
                _core.relu(ins[0], out)  # in place when the planner gave both the same slot
            elif kind == "LRN":
                _core.lrn(ins[0], out, op.size, op.alpha, op.beta, op.bias)
            elif kind == "MaxPool":
                _core.maxpool(ins[0], out, op.kernel[0], op.kernel[1], op.strides[0], op.strides[1], *op.pads)
            elif kind == "AveragePool":
                _core.avgpool(ins[0], out, op.kernel[0], op.kernel[1], op.strides[0], op.strides[1], *op.pads,
                              bool(op.count_include_pad))
            elif kind == "GlobalAveragePool":
                _core.global_avgpool(ins[0], out)
            elif kind == "Flatten":
                if len(step.in_shapes[0]) == 3:
                    _core.nhwc_to_nchw(ins[0], out)
                else:
                    np.copyto(out, ins[0].reshape(out.shape))
            elif kind == "Softmax":
                _core.softmax(ins[0], out)
            elif kind == "Concat":
                _core.concat_channels(ins, out)
            elif kind == "Add":
                _core.add(ins[0], ins[1], out, bool(op.relu))
            else:  # the reader only admits known kinds
                raise AssertionError(kind)
            if times is not None:
                times[id(step)].append(clock() - started)

    def _release_mapping(self):
        """Drop every view of the file mapping (kernels hold private copies) and unmap it."""
        for op in self._ir.operators:
            w = getattr(op, "weights", None)
            if isinstance(w, ir.QuantizedWeights):
                w.codebooks = w.packed_indices = w.indices = None
            elif w is not None:
                op.weights = None
            if hasattr(op, "bias") and isinstance(op.bias, np.ndarray):
                op.bias = None
        try:
            self._file.close()
        except BufferError:  # a view escaped somewhere; the GC unmaps when it goes
            pass

    # ------------------------------------------------------------------ lifetime
    def close(self):
        """Release the mapping. Waits for runs in progress on other threads; later calls raise."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._active:
                self._cond.wait()
        self._steps = []
        self._local = threading.local()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def preprocess(self, images: Sequence) -> np.ndarray:
        """Load image files (or PIL images) with the file's preprocessing; returns float32 NCHW."""
        from qcnn.runtime.preprocess import preprocess_images

        return preprocess_images(images, self.preprocessing, tuple(self._ir.input_shape))
