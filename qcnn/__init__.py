"""qcnn: Quantized CNNs (Wu et al., CVPR 2016) -- converter, file format and LUT runtime.

Subpackages:
  qcnn.schema     the .qcnn file format (reader, writer, verifier, index packing)
  qcnn.runtime    the embeddable LUT inference runtime (numpy is its only dependency)
  qcnn.converter  ONNX -> .qcnn with error-corrected product quantization
  qcnn.tools      qcnn-compare, qcnn-bench, qcnn-inspect
  qcnn.models     reproducible model builders (zoo graphs, trained MNIST nets)
"""

__version__ = "0.1.0"


class QcnnFormatError(ValueError):
    """A .qcnn file is malformed, truncated, corrupt or unsupported.

    The message says what is wrong and where (which field, buffer or operator).
    """


__all__ = ["QcnnFormatError", "__version__"]
