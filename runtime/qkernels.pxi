# Product-quantized (LUT) conv / fc kernel wrappers. Owner: kernels work.
