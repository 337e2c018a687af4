"""The command-line tools on hostile files: qcnn-inspect, qcnn-convert --decode, qcnn-run.

    python -m qcnn.tools.hardening.clis --trials 600 --seed 5 [--seed-file X.qcnn]

Each mutant (mutate.make_mutant) is given to every tool in-process; each must exit 0, or 2 with a
single `error:` line on stderr, never with a traceback. Needs the converter and Pillow.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import sys
import tempfile
import traceback
from collections import Counter


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=600)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--seed-file", action="append", default=[])
    args = ap.parse_args(argv)

    from PIL import Image

    from qcnn.converter import cli as convert_cli
    from qcnn.runtime import cli as run_cli
    from qcnn.tools import inspect as inspect_cli
    from qcnn.tools.hardening import mutate, seeds

    files = dict(seeds.seed_files())
    for p in args.seed_file:
        with open(p, "rb") as f:
            files[os.path.basename(p)] = f.read()
    sds = [mutate._Seed(n, d) for n, d in files.items()]
    rng = random.Random(args.seed)
    tmp = tempfile.mkdtemp(prefix="qcnn-clis-")
    path, out, img = os.path.join(tmp, "m.qcnn"), os.path.join(tmp, "o.onnx"), os.path.join(tmp, "img.png")
    Image.new("RGB", (40, 30)).save(img)
    tools = {"qcnn-inspect": lambda: inspect_cli.main([path]),
             "qcnn-convert --decode": lambda: convert_cli.main(["--decode", path, "-o", out, "-q"]),
             "qcnn-run": lambda: run_cli.main([path, img])}
    counts, bad = Counter(), []
    for t in range(args.trials):
        m = mutate.make_mutant(rng, sds[t % len(sds)])
        with open(path, "wb") as f:
            f.write(m.data)
        for name, call in tools.items():
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    rc = call()
            except BaseException as exc:  # noqa: BLE001 - a traceback is what we look for
                rc = f"raised {type(exc).__name__}"
                bad.append((name, m.kind, m.detail, traceback.format_exc(limit=4)))
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            if rc not in (0, 2) or (rc == 2 and (len(lines) != 1 or "error" not in lines[0])):
                bad.append((name, m.kind, m.detail, lines[-3:]))
            counts[f"{name}: exit {rc}"] += 1
            if os.path.exists(out):
                os.unlink(out)
    for key, n in sorted(counts.items()):
        print(f"{n:6d}  {key}")
    for b in bad[:20]:
        print("BAD", *b)
    print(f"{args.trials} mutants x {len(tools)} tools, {len(bad)} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
