"""qcnn.converter: ONNX -> .qcnn with error-corrected product quantization (paper §3).

    from qcnn.converter import convert, decode_to_onnx
    result = convert("alexnet.onnx", "alexnet.qcnn", calib="images/", preprocess="caffe")
    onnx_model = decode_to_onnx("alexnet.qcnn")   # dense oracle for onnxruntime

Modules: onnx_import (ONNX -> ir.Model), forward (numpy executor), quantize (k-means and error
correction), calibration (images/arrays), convert (driver and report), decode (oracle), cli.
"""
from .convert import convert
from .decode import decode_to_onnx
from .errors import ConversionError

__all__ = ["convert", "decode_to_onnx", "ConversionError"]
