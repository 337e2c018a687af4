"""Coverage-guided fuzzing of the .qcnn reader with atheris (development tool, optional).

    pip install atheris
    taskset -c 1 python -m qcnn.tools.hardening.fuzz --seconds 600 --workdir /tmp/qcnn-fuzz

Target: `qcnn.schema.reader.parse(data, unpack_indices=True)` on every input, and again on the
input with its checksums recomputed (resign.py) so that mutations reach the structural checks
behind the CRCs. The only acceptable exception is QcnnFormatError; anything else (IndexError,
struct.error, OverflowError, MemoryError, RecursionError, ...) is a finding that libFuzzer saves
as crash-<sha1> in the workdir. The corpus starts from the seed models (seeds.py).
With --target runtime every accepted input is also loaded by qcnn.runtime.Model and run once (a
crash in the compiled kernels kills the process and libFuzzer keeps the input).
Findings are turned into regression tests under tests/data/hardening/.
"""
from __future__ import annotations

import argparse
import os
import re
import sys


def _prepare(workdir):
    from qcnn.tools.hardening import seeds

    corpus = os.path.join(workdir, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for name, data in seeds.seed_files().items():
        with open(os.path.join(corpus, "seed-" + name), "wb") as f:
            f.write(data)
    return corpus


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=600, help="total fuzzing time")
    ap.add_argument("--workdir", default="qcnn-fuzz", help="corpus and crash artifacts go here")
    ap.add_argument("--max-len", type=int, default=16384)
    ap.add_argument("--target", choices=["reader", "runtime"], default="reader",
                    help="runtime: also load every accepted input with qcnn.runtime.Model and run it once")
    args, extra = ap.parse_known_args(argv)
    try:
        import atheris
    except ImportError:
        raise SystemExit("atheris is not installed: pip install atheris (a development tool, not a dependency)")

    corpus = _prepare(args.workdir)
    with atheris.instrument_imports(include=["qcnn.schema", "qcnn.tools.hardening.resign"]):
        from qcnn import QcnnFormatError
        from qcnn.schema import reader
        from qcnn.tools.hardening.resign import resign

    scratch = os.path.join(args.workdir, "accepted.qcnn")

    def run_model(candidate: bytes, model):
        """An input the reader accepted: the runtime must load and run it without crashing."""
        import math

        import numpy as np

        from qcnn.runtime import Model

        if math.prod(model.input_shape) > 1_000_000:
            return
        with open(scratch, "wb") as f:
            f.write(candidate)
        try:
            with Model(scratch) as m:
                m.run(np.zeros((1,) + tuple(model.input_shape), np.float32))
        except QcnnFormatError:
            pass

    def one_input(data: bytes):
        for candidate in (data, resign(data)):
            try:
                model = reader.parse(candidate, unpack_indices=True)
            except QcnnFormatError:
                continue
            if args.target == "runtime":
                run_model(candidate, model)

    libfuzzer_args = [sys.argv[0], corpus, f"-max_total_time={args.seconds}", f"-max_len={args.max_len}",
                      f"-artifact_prefix={os.path.join(args.workdir, '')}", "-print_final_stats=1"] + extra
    atheris.Setup(libfuzzer_args, one_input)
    atheris.Fuzz()


def summarize(log_path):
    """execs and seconds from a libFuzzer log (the `stat::` lines of -print_final_stats)."""
    text = open(log_path, errors="replace").read()
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", text))
    return {k: int(v) for k, v in stats.items()}


if __name__ == "__main__":
    main()
