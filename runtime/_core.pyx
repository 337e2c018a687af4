# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled core of the qcnn runtime.

The C kernels live in runtime/kernels/ (ABI: qcnn_kernels.h, ops.h). Their Python-facing
wrappers are split by concern into include files so each can be read on its own:
  qkernels.pxi  product-quantized (LUT) conv and fully-connected layers, ISA dispatch
  ops.pxi       every other op (dense conv/fc, ReLU, LRN, pooling, softmax, add, concat)
  unpack.pxi    unpacking of b-bit indices from the file into byte arrays
"""

include "qkernels.pxi"
include "ops.pxi"
include "unpack.pxi"
