"""qcnn: Quantized CNNs (Wu et al., CVPR 2016) -- converter, file format and LUT runtime.

Subpackages:
  qcnn.schema     the .qcnn file format (reader, writer, verifier, index packing)
  qcnn.runtime    the embeddable LUT inference runtime (numpy is its only dependency)
  qcnn.converter  ONNX -> .qcnn with error-corrected product quantization
  qcnn.tools      qcnn-compare, qcnn-bench, qcnn-inspect
  qcnn.models     reproducible model builders (zoo graphs, trained MNIST nets)
"""

import pkgutil

# The subpackages live in the repository's top-level folders (converter/, runtime/, ...) and are
# installed under qcnn/. When Python runs from the repository root (`python -m qcnn...`), this
# folder is found first; extend_path adds the installed qcnn/ so its subpackages still resolve.
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"


class QcnnFormatError(ValueError):
    """A .qcnn file is malformed, truncated, corrupt or unsupported.

    The message says what is wrong and where (which field, buffer or operator).
    """


__all__ = ["QcnnFormatError", "__version__"]
