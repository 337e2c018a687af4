"""Many threads on one qcnn.runtime.Model: identical results, and close() racing with run().

    python -m qcnn.tools.hardening.threads --threads 8 --runs 1000 [--model X.qcnn] --json threads.json

Part 1: every thread runs its own input `runs` times and compares each output bit for bit with
the single-threaded result. Part 2 (`--close-races` rounds): threads run in a loop while the main
thread closes the Model at a random moment; every run must either return the exact result or
raise ValueError("... closed"), and every thread must finish.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time

import numpy as np


def _inputs(model, threads, batch):
    shape = tuple(model.input_shape[1:])
    return [np.random.default_rng(i).standard_normal((batch,) + shape).astype(np.float32) for i in range(threads)]


def _same(a, b):
    a = a if isinstance(a, list) else [a]
    b = b if isinstance(b, list) else [b]
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


def identical_results(path, threads=8, runs=1000, batch=1, lut="int8"):
    from qcnn.runtime import Model

    m = Model(path, lut=lut)
    xs = _inputs(m, threads, batch)
    expected = [m.run(x) for x in xs]
    mismatches, errors = [0] * threads, []
    barrier = threading.Barrier(threads)

    def worker(i):
        try:
            barrier.wait()
            for _ in range(runs):
                if not _same(m.run(xs[i]), expected[i]):
                    mismatches[i] += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(f"thread {i}: {exc!r}")

    t0 = time.time()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    m.close()
    return dict(threads=threads, runs_per_thread=runs, batch=batch, lut=lut, total_runs=threads * runs,
                mismatches=sum(mismatches), errors=errors, seconds=round(time.time() - t0, 2))


def close_races(path, rounds=50, threads=4, seed=0):
    from qcnn.runtime import Model

    rng = random.Random(seed)
    stats = dict(rounds=rounds, completed_runs=0, closed_errors=0, wrong=0, other_errors=[], stuck_threads=0)
    for _ in range(rounds):
        m = Model(path)
        x = _inputs(m, 1, 2)[0]
        expected = m.run(x)
        lock = threading.Lock()

        def worker():
            while True:
                try:
                    y = m.run(x)
                except ValueError as exc:
                    with lock:
                        if "closed" in str(exc):
                            stats["closed_errors"] += 1
                        else:
                            stats["other_errors"].append(repr(exc))
                    return
                except Exception as exc:  # noqa: BLE001
                    with lock:
                        stats["other_errors"].append(repr(exc))
                    return
                with lock:
                    stats["completed_runs"] += 1
                    stats["wrong"] += not _same(y, expected)

        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        time.sleep(rng.uniform(0, 0.02))
        m.close()
        for t in ts:
            t.join(30)
            stats["stuck_threads"] += t.is_alive()
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help=".qcnn to use (default: the hardening seed model 'branchy')")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--close-races", type=int, default=100)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    path = args.model
    if path is None:
        import tempfile

        from qcnn.schema import writer
        from qcnn.tools.hardening import seeds

        path = tempfile.mkdtemp(prefix="qcnn-threads-") + "/branchy.qcnn"
        writer.write_model(seeds.branchy(), path)
    report = dict(model=path)
    report["identical_int8"] = identical_results(path, args.threads, args.runs, lut="int8")
    report["identical_float"] = identical_results(path, args.threads, max(1, args.runs // 4), lut="float")
    report["close_races"] = close_races(path, args.close_races)
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    r = report
    bad = (r["identical_int8"]["mismatches"] + len(r["identical_int8"]["errors"]) + r["identical_float"]["mismatches"]
           + len(r["identical_float"]["errors"]) + r["close_races"]["wrong"] + len(r["close_races"]["other_errors"])
           + r["close_races"]["stuck_threads"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
