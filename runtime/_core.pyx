# cython: language_level=3
"""Compiled core of the qcnn runtime (placeholder until the kernels land)."""

def isa_available():
    return ["generic"]
