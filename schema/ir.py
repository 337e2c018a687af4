"""In-memory form of a .qcnn model: what the converter builds, the writer serializes and the reader returns.

Plain dataclasses over numpy arrays, so every part of the project (converter, runtime, tools, tests) speaks
the same language without touching FlatBuffers. The file layout is described in schema/README.md.

Conventions
- Tensor shapes are given WITHOUT the batch dimension: (C, H, W) for images, (F,) for vectors. The batch
  size is chosen at run time.
- Dense conv weights use ONNX layout [Cout][Cin/G][KH][KW]; dense fully-connected weights [out][in]
  (ONNX Gemm with transB=1: y = x @ W.T + b).
- Quantized weights (paper Eq. 6): input channels of each group are split into `nsub` subspaces of
  `subvec` channels (the last one zero-padded when Cin/G is not a multiple of subvec); every
  (group, subspace) has its own codebook of `ncode` codewords.
    codebooks: float32 [G][nsub][ncode][subvec]
    indices:   uint8   [G][KH][KW][nsub][Cout/G]   (conv; output channel fastest)
               uint8   [1][1][1][nsub][out]        (fully connected: G = KH = KW = 1)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

FORMAT_VERSION = 1


@dataclass
class QuantizedWeights:
    subvec: int  # C's: sub-vector length (input channels per subspace)
    nsub: int  # M: subspaces per group
    ncode: int  # K: codewords per codebook, 2..256
    codebooks: np.ndarray  # float32 [G][M][K][C's]
    # uint8 [G][KH][KW][M][Cout/G], one byte per index. A reader that leaves unpacking to the
    # runtime sets this to None and fills packed_indices + index_shape instead.
    indices: Optional[np.ndarray]
    packed_indices: Optional[np.ndarray] = None  # uint8 bit stream, see schema/packing.py
    index_shape: Optional[Tuple[int, ...]] = None

    def __post_init__(self):
        if self.index_shape is None and self.indices is not None:
            self.index_shape = tuple(int(d) for d in self.indices.shape)

    @property
    def index_bits(self) -> int:
        """Bits per stored index: ceil(log2 K)."""
        return max(1, int(self.ncode - 1).bit_length())


Weights = Union[np.ndarray, QuantizedWeights]


@dataclass
class Conv:
    name: str
    inputs: List[str]
    outputs: List[str]
    cin: int
    cout: int
    kernel: Tuple[int, int]  # (KH, KW)
    strides: Tuple[int, int] = (1, 1)
    pads: Tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    groups: int = 1
    weights: Weights = None  # float32 [Cout][Cin/G][KH][KW] or QuantizedWeights
    bias: Optional[np.ndarray] = None  # float32 [Cout]
    relu: bool = False  # ReLU fused into the output

    @property
    def quantized(self) -> bool:
        return isinstance(self.weights, QuantizedWeights)


@dataclass
class Gemm:
    """Fully connected: y = x @ W.T + b for x of shape (N, in)."""

    name: str
    inputs: List[str]
    outputs: List[str]
    in_features: int
    out_features: int
    weights: Weights = None  # float32 [out][in] or QuantizedWeights
    bias: Optional[np.ndarray] = None  # float32 [out]
    relu: bool = False

    @property
    def quantized(self) -> bool:
        return isinstance(self.weights, QuantizedWeights)


@dataclass
class Relu:
    name: str
    inputs: List[str]
    outputs: List[str]


@dataclass
class LRN:
    """Local response normalization across channels (ONNX semantics)."""

    name: str
    inputs: List[str]
    outputs: List[str]
    size: int
    alpha: float = 1e-4
    beta: float = 0.75
    bias: float = 1.0


@dataclass
class MaxPool:
    name: str
    inputs: List[str]
    outputs: List[str]
    kernel: Tuple[int, int]
    strides: Tuple[int, int] = (1, 1)
    pads: Tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    ceil_mode: bool = False


@dataclass
class AveragePool:
    name: str
    inputs: List[str]
    outputs: List[str]
    kernel: Tuple[int, int]
    strides: Tuple[int, int] = (1, 1)
    pads: Tuple[int, int, int, int] = (0, 0, 0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = False


@dataclass
class GlobalAveragePool:
    name: str
    inputs: List[str]
    outputs: List[str]


@dataclass
class Flatten:
    """Flatten (C, H, W) to (C*H*W,) in NCHW order (ONNX Flatten axis=1 / Reshape to (N, -1))."""

    name: str
    inputs: List[str]
    outputs: List[str]


@dataclass
class Softmax:
    """Softmax over the last (feature) axis of a (F,) tensor."""

    name: str
    inputs: List[str]
    outputs: List[str]


@dataclass
class Concat:
    """Concatenate along channels."""

    name: str
    inputs: List[str]
    outputs: List[str]


@dataclass
class Add:
    name: str
    inputs: List[str]
    outputs: List[str]
    relu: bool = False


Operator = Union[Conv, Gemm, Relu, LRN, MaxPool, AveragePool, GlobalAveragePool, Flatten, Softmax, Concat, Add]
OPERATOR_TYPES = (Conv, Gemm, Relu, LRN, MaxPool, AveragePool, GlobalAveragePool, Flatten, Softmax, Concat, Add)


@dataclass
class Preprocessing:
    """How an image becomes the model input: x = (pixel * scale - mean) / std, per channel.

    pixel values are 0..255 in `channel_order`; the image is resized so its shorter side is
    `resize_shorter` (0: no resize) and centre-cropped to `crop` = (H, W) (0, 0: no crop).
    """

    mean: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    scale: float = 1.0
    channel_order: str = "RGB"  # "RGB", "BGR" or "GRAY"
    resize_shorter: int = 0
    crop: Tuple[int, int] = (0, 0)


@dataclass
class TensorInfo:
    name: str
    shape: Tuple[int, ...]  # without batch


@dataclass
class Model:
    input_name: str
    input_shape: Tuple[int, ...]  # (C, H, W) without batch
    tensors: List[TensorInfo]  # every activation tensor, graph input first
    operators: List[Operator]  # in execution order
    outputs: List[str]  # graph output tensor names
    producer: str = ""
    source_sha256: str = ""  # hex digest of the source ONNX file
    preprocessing: Optional[Preprocessing] = None
    labels: Optional[List[str]] = None
    metadata: Dict[str, str] = field(default_factory=dict)  # free-form: conversion plan, report, ...
    version: int = FORMAT_VERSION

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)
