"""qcnn.models: reproducible ONNX model builders (see qcnn.models.build) and the trained MNIST nets."""
