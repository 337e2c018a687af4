"""Limit the BLAS thread pool numpy uses (no extra dependency).

The converter makes many small matrix products (sub-vectors of 1..8 floats). With a
multi-threaded OpenBLAS each of them wakes the other threads, which on a busy machine costs far
more than the product itself (measured 10x slower on the shared 2-core box). So the converter runs
BLAS single-threaded by default (`--threads`). Works with the OpenBLAS builds numpy wheels ship;
a no-op when the library or its symbol cannot be found.
"""
from __future__ import annotations

import contextlib
import ctypes
from typing import Optional

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
            "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads64_",
            "openblas_get_num_threads")


def _openblas():
    import numpy  # noqa: F401  (loads the library)

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line.split()[-1]}
    except OSError:
        return None, None
    for p in sorted(paths):
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        setter = next((getattr(lib, s) for s in _SETTERS if hasattr(lib, s)), None)
        getter = next((getattr(lib, s) for s in _GETTERS if hasattr(lib, s)), None)
        if setter is not None and getter is not None:
            return setter, getter
    return None, None


@contextlib.contextmanager
def blas_threads(n: Optional[int]):
    """Run the block with `n` BLAS threads (None: leave as is)."""
    setter, getter = _openblas() if n else (None, None)
    if setter is None:
        yield
        return
    before = int(getter())
    setter(int(n))
    try:
        yield
    finally:
        setter(before)
