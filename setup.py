"""Build the runtime's compiled core.

Everything else is declared in pyproject.toml; this file only exists because the extension's
source list and compiler flags are easier to say in Python. No -march=native: ISA-specific
kernels carry their own `target` attributes and are chosen at run time from CPUID, so one
wheel runs on any x86-64 (and the portable C path builds everywhere else).
"""
import glob
import sys

from setuptools import Extension, setup
from Cython.Build import cythonize

extra_compile_args = []
if sys.platform != "win32":
    extra_compile_args = ["-O3", "-std=c11", "-fno-math-errno", "-Wall", "-Wno-unused-function"]

core = Extension(
    "qcnn.runtime._core",
    sources=["runtime/_core.pyx"] + sorted(glob.glob("runtime/kernels/*.c")),
    include_dirs=["runtime/kernels"],
    extra_compile_args=extra_compile_args,
    # Deliberately no BLAS/LAPACK: the runtime does all its arithmetic itself.
    libraries=[],
)

# The converter's k-means inner loops (converter only: the runtime never imports it).
kmeans = Extension(
    "qcnn.converter._kmeans",
    sources=["converter/_kmeans.pyx"],
    extra_compile_args=extra_compile_args,
)

setup(
    ext_modules=cythonize(
        [core, kmeans],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
