"""Mutation harness: thousands of hostile .qcnn files, each loaded (and run) in a child process.

    python -m qcnn.tools.hardening.mutate --trials 10000 --seed 1 --json mutate.json

From valid seed files (seeds.py, plus any --seed-file such as a converted SqueezeNet) it makes
mutants of three families:

raw       byte flips, random bytes, truncations, zeroed ranges, appended/inserted/spliced bytes.
          Checksums are NOT fixed: the CRCs cover every byte, so any accepted mutant is a bug.
resigned  the same damage, then every CRC is recomputed (resign.py), so only structural checks
          stand between the bytes and the runtime. A mutant may legitimately still be valid
          (a changed weight, a changed label); an accepted one must then pass the oracle below.
field     one FlatBuffer field rewritten (fbwalk.py) to an edge value -- offsets/sizes out of the
          file, 0/-1/2^31-1 shapes, vector lengths, vtable offsets, union type bytes -- then
          re-signed. `targeted` mutants are known-invalid by construction: shapes whose products
          overflow, codes >= K (non-power-of-two K), operators wired to missing tensors, cycles
          (an operator reading a later operator's output), wrong union/kind types, a buffer used
          twice, buffers outside the file or overlapping. Accepting one is a bug.

Each trial runs in a worker process: open_qcnn(path, unpack_indices=True); for an accepted file the
oracle re-serializes the decoded model with the writer (which checks independently) and, when the
runtime is built, runs qcnn.runtime.Model(path).run(x). A worker killed by a signal is a crash; one
that takes longer than --timeout seconds is a hang; both are counted and the worker replaced.

Outcomes: format_error (good; we also record whether the message names the rewritten field),
memory_refused (good: Model refuses at load a file whose activations exceed max_activation_bytes),
valid (accepted, oracle passed, mutant allowed to be valid), noop (bytes unchanged),
silent_success (BAD: an invalid mutant was accepted), oracle_reject (BAD: reader accepted what the
writer refuses), exception (BAD: anything but QcnnFormatError), crash (BAD), hang (BAD).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from typing import Dict, List, Optional

from qcnn.tools.hardening import fbwalk, seeds
from qcnn.tools.hardening.resign import resign

BAD = ("silent_success", "oracle_reject", "exception", "crash", "hang")

# Under AddressSanitizer (scripts/sanitize.sh) the process reserves terabytes of shadow address
# space, so an RLIMIT_AS cap would make every allocation fail: no cap there.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
DEFAULT_MEM_LIMIT = 0 if UNDER_ASAN else 4 << 30


# ---------------------------------------------------------------------------------------- mutants
class Mutant:
    __slots__ = ("seed", "family", "kind", "detail", "data", "must_fail", "field")

    def __init__(self, seed, family, kind, detail, data, must_fail, field=None):
        self.seed, self.family, self.kind, self.detail = seed, family, kind, detail
        self.data, self.must_fail, self.field = data, must_fail, field


def _damage(rng: random.Random, data: bytes, region: Optional[tuple] = None):
    """One random byte-level damage; returns (kind, detail, new bytes)."""
    b = bytearray(data)
    lo, hi = region or (0, len(b))
    choice = rng.randrange(7)
    if choice == 0:
        n = rng.randint(1, 8)
        where = [rng.randrange(lo, hi) for _ in range(n)]
        for p in where:
            b[p] ^= 1 << rng.randrange(8)
        return "bitflip", f"{n} bits at {where[:4]}", bytes(b)
    if choice == 1:
        n = rng.randint(1, 4)
        where = [rng.randrange(lo, hi) for _ in range(n)]
        for p in where:
            b[p] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        return "byteset", f"{n} bytes at {where[:4]}", bytes(b)
    if choice == 2:
        cut = rng.choice([rng.randrange(len(b)), rng.randrange(max(1, len(b) - 64), len(b)), rng.randrange(64)])
        return "truncate", f"to {cut} of {len(b)} bytes", bytes(b[:cut])
    if choice == 3:
        start = rng.randrange(lo, hi)
        n = min(rng.choice([1, 4, 8, 16, 64, 256, 4096]), len(b) - start)
        b[start:start + n] = bytes(n)
        return "zero_range", f"{n} bytes at {start}", bytes(b)
    if choice == 4:
        n = rng.choice([1, 7, 16, 64, 100])
        return "append", f"{n} bytes", bytes(b) + bytes(rng.randrange(256) for _ in range(n))
    if choice == 5:
        at, n = rng.randrange(lo, hi), rng.choice([1, 4, 8, 64])
        return "insert", f"{n} bytes at {at}", bytes(b[:at]) + bytes(n) + bytes(b[at:])
    src, dst, n = rng.randrange(len(b)), rng.randrange(lo, hi), rng.choice([4, 8, 16, 64])
    chunk = b[src:src + n]
    b[dst:dst + len(chunk)] = chunk
    return "splice", f"{len(chunk)} bytes {src}->{dst}", bytes(b[:len(data)] if len(b) > len(data) else b)


_EDGE_I32 = [0, -1, 1, 2, 3, 7, 255, 256, 4096, 4097, 65536, 1 << 24, (1 << 24) + 1, 2**31 - 1, -2**31]
_EDGE_U32 = [0, 1, 2, 3, 255, 2**31, 2**32 - 1]
_EDGE_U64 = [0, 1, 63, 64, 2**32, 2**63, 2**64 - 1]
_EDGE_F32 = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 3.4e38, 1e-45]


def _edge_value(rng, fld: fbwalk.Field, size: int):
    v = fld.value
    if fld.fmt in ("B", "b"):
        lo, hi = (0, 255) if fld.fmt == "B" else (-128, 127)
        return rng.choice([x for x in [0, 1, 2, 3, 4, 5, 10, 11, 12, hi, lo, (v + 1), (v - 1)] if lo <= x <= hi])
    if fld.fmt == "f":
        return rng.choice(_EDGE_F32)
    if fld.fmt == "i":
        cands = _EDGE_I32 + [v + 1, v - 1, v * 2, -v, v + 4, v - 4, rng.randrange(-size, size)]
        return rng.choice([x for x in cands if -2**31 <= x < 2**31])
    if fld.fmt == "I":
        cands = _EDGE_U32 + [v + 1, v - 1, v + 4, v - 4, size, size - fld.pos, rng.randrange(size)]
        return rng.choice([x for x in cands if 0 <= x < 2**32])
    if fld.fmt == "Q":
        cands = _EDGE_U64 + [v + 1, v - 1, v + 64, v - 64, size, size - 16, rng.randrange(size)]
        return rng.choice([x for x in cands if 0 <= x < 2**64])
    raise AssertionError(fld.fmt)


def _put(data: bytes, fld: fbwalk.Field, value) -> bytes:
    b = bytearray(data)
    struct.pack_into("<" + fld.fmt, b, fld.pos, value)
    return bytes(b)


class _Seed:
    """A valid seed file, its fields and the facts the targeted mutations need."""

    def __init__(self, name: str, data: bytes):
        from qcnn.schema import reader

        self.name, self.data = name, data
        self.fb_size = struct.unpack_from("<I", data, len(data) - 12)[0]
        self.fields = fbwalk.walk(data[: self.fb_size])
        self.by_path = {f.path: f for f in self.fields}
        self.model = reader.parse(data, unpack_indices=True)
        self.n_tensors = len(self.model.tensors)
        # tensor index of every operator's output, in execution order
        names = [t.name for t in self.model.tensors]
        self.out_index = [names.index(op.outputs[0]) for op in self.model.operators]

    def find(self, pred) -> List[fbwalk.Field]:
        return [f for f in self.fields if pred(f.path)]


def _targeted(rng: random.Random, s: _Seed):
    """A known-invalid rewrite; returns (kind, detail, bytes, field) or None if the seed lacks the target."""
    choice = rng.randrange(10)
    if choice == 0:  # huge shapes whose products overflow 32/64-bit sizes
        fl = s.find(lambda p: p.endswith("]") and (".shape[" in p or "input_shape[" in p)) + \
            s.find(lambda p: p.endswith((".cin", ".cout", ".in_features", ".out_features", ".kernel_h",
                                         ".kernel_w", ".subvec", ".nsub", ".groups")))
        fld = rng.choice(fl)
        value = rng.choice([65536, 1 << 20, 1 << 24, (1 << 24) + 1, 2**31 - 1, 46341, 2**30])
        if value == fld.value:
            value += 1
        return "huge_shape", f"{fld.path} = {value}", _put(s.data, fld, value), fld
    if choice == 1:  # a code >= K in a quantized layer with non-power-of-two K
        return _code_ge_k(rng, s)
    if choice == 2:  # operator input/output refers to a missing tensor
        fl = s.find(lambda p: ".operators[" in p and (".inputs[" in p or ".outputs[" in p)) + \
            s.find(lambda p: p.startswith("Model.graph.outputs[") or p == "Model.graph.input")
        fld = rng.choice(fl)
        value = rng.choice([s.n_tensors, s.n_tensors + 1, -1, 2**31 - 1, -2**31])
        return "missing_tensor", f"{fld.path} = {value}", _put(s.data, fld, value), fld
    if choice == 3:  # cycle: operator i reads the output of operator j >= i
        i = rng.randrange(len(s.out_index))
        fl = s.find(lambda p: p.startswith(f"Model.graph.operators[{i}].inputs["))
        fld = rng.choice(fl)
        j = rng.randrange(i, len(s.out_index))
        return "cycle", f"operator {i} reads output of operator {j}", _put(s.data, fld, s.out_index[j]), fld
    if choice == 4:  # options union type that does not match the kind
        fl = s.find(lambda p: p.endswith(".options_type"))
        fld = rng.choice(fl)
        value = rng.choice([v for v in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 255] if v != fld.value])
        return "wrong_union", f"{fld.path} = {value}", _put(s.data, fld, value), fld
    if choice == 5:  # weights union type swapped or unknown
        fl = s.find(lambda p: p.endswith(".weights_type"))
        fld = rng.choice(fl)
        value = rng.choice([v for v in [0, 1, 2, 3, 255] if v != fld.value])
        return "wrong_weights_type", f"{fld.path} = {value}", _put(s.data, fld, value), fld
    if choice == 6:  # kind changed to another (options no longer match), or out of the enum
        fl = s.find(lambda p: p.endswith("].kind"))
        fld = rng.choice(fl)
        # MAX_POOL_2D (4) and AVERAGE_POOL_2D (5) share Pool2DOptions: swapping them stays valid.
        same = {4: 5, 5: 4}.get(fld.value)
        value = rng.choice([v for v in list(range(12)) + [255] if v != fld.value and v != same])
        return "wrong_kind", f"{fld.path} = {value}", _put(s.data, fld, value), fld
    if choice == 7:  # one buffer referenced twice
        fl = s.find(lambda p: p.endswith((".codebooks", ".indices", ".weights.buffer", ".options.bias")))
        fl = [f for f in fl if f.fmt == "I" and f.value != 0]
        a, b = rng.sample(fl, 2)
        return "buffer_twice", f"{a.path} = buffer {b.value}", _put(s.data, a, b.value), a
    if choice == 8:  # buffer offset/size outside the file, misaligned or overlapping
        fl = s.find(lambda p: p.startswith("Model.buffers[") and p.endswith((".offset", ".size")) and
                    not p.startswith("Model.buffers[0]"))
        fld = rng.choice(fl)
        size = len(s.data)
        cands = [size, size - 16, size + 64, 2**63, 2**64 - 1, fld.value + 64, fld.value + 1, 0]
        if fld.path.endswith(".offset"):
            cands += [fld.value - 64, 64 * (s.fb_size // 64)]
        value = rng.choice([c for c in cands if 0 <= c < 2**64 and c != fld.value])
        return "buffer_outside", f"{fld.path} = {value}", _put(s.data, fld, value), fld
    # negative / zero sizes and strides
    fl = s.find(lambda p: p.endswith((".stride_h", ".stride_w", ".pad_top", ".pad_left", ".pad_bottom",
                                      ".pad_right", ".ncode", ".index_bits", ".size")) and ".buffers[" not in p)
    fld = rng.choice(fl)
    value = rng.choice([0, -1, -2**31, 2**31 - 1, 257, 9])
    if fld.path.endswith((".pad_top", ".pad_left", ".pad_bottom", ".pad_right")):
        value = rng.choice([-1, -2**31, 2**31 - 1, 5000])
    if fld.path.endswith(".size"):  # any LRN size >= 1 is valid
        value = rng.choice([0, -1, -2**31])
    if value == fld.value:
        value = -1
    return "bad_param", f"{fld.path} = {value}", _put(s.data, fld, value), fld


def _code_ge_k(rng, s: _Seed):
    """Rewrite one packed code of a layer with non-power-of-two K to a value in K..2^b-1."""
    from qcnn.schema import packing

    cands = []
    for i, op in enumerate(s.model.operators):
        w = getattr(op, "weights", None)
        if w is not None and hasattr(w, "ncode") and w.ncode < (1 << w.index_bits):
            cands.append(i)
    if not cands:
        return None
    i = rng.choice(cands)
    w = s.model.operators[i].weights
    buf_field = s.by_path[f"Model.graph.operators[{i}].options.weights.indices"]
    off = s.by_path[f"Model.buffers[{buf_field.value}].offset"].value
    bits = w.index_bits
    count = int(w.indices.size)
    j = rng.randrange(count)
    value = rng.randrange(w.ncode, 1 << bits)
    codes = w.indices.reshape(-1).copy()
    codes[j] = value
    packed = packing.pack(codes, bits).tobytes()
    b = bytearray(s.data)
    b[off:off + len(packed)] = packed
    return "code_ge_k", f"operator {i} code {j} = {value} (K={w.ncode})", resign(bytes(b)), buf_field


def make_mutant(rng: random.Random, s: _Seed) -> Mutant:
    family = rng.choices(["raw", "resigned", "field", "targeted"], weights=[3, 3, 3, 3])[0]
    if family == "raw":
        kind, detail, data = _damage(rng, s.data)
        return Mutant(s.name, family, kind, detail, data, must_fail=True)
    if family == "resigned":
        # Damage aimed at the FlatBuffer half the time (the buffers' contents are mostly floats).
        region = (0, s.fb_size) if rng.random() < 0.5 else None
        kind, detail, data = _damage(rng, s.data, region)
        return Mutant(s.name, family, "rs_" + kind, detail, resign(data), must_fail=False)
    if family == "field":
        fld = rng.choice(s.fields)
        value = _edge_value(rng, fld, len(s.data))
        data = resign(_put(s.data, fld, value))
        return Mutant(s.name, family, "field_" + fld.kind, f"{fld.path} = {value!r}", data, must_fail=False,
                      field=fld.path)
    out = None
    while out is None:
        out = _targeted(rng, s)
    kind, detail, data, fld = out
    if kind != "code_ge_k":
        data = resign(data)
    return Mutant(s.name, family, kind, detail, data, must_fail=True, field=fld.path)


# ---------------------------------------------------------------------------------------- worker
def runtime_available() -> bool:
    try:
        from qcnn.runtime import _core  # noqa: F401
        from qcnn.runtime.model import Model  # noqa: F401

        _core.QConvKernel, _core.DenseConvKernel, _core.maxpool  # noqa: B018 - built with kernels?
        return True
    except (ImportError, AttributeError):
        return False


def _load_and_run(path: str, use_runtime: bool):
    """What a user does with a file: open it, and run it. Returns an outcome tuple."""
    import numpy as np

    from qcnn import QcnnFormatError
    from qcnn.schema import reader, writer

    try:
        f = reader.open_qcnn(path, unpack_indices=True)
        model = f.model
    except QcnnFormatError as exc:
        return ("format_error", str(exc))
    except Exception as exc:  # noqa: BLE001 - the harness classifies everything
        return ("exception", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=6))
    # Oracle: the writer checks the model independently of the reader.
    try:
        writer.serialize(model)
    except Exception as exc:  # noqa: BLE001
        return ("oracle_reject", f"writer refuses what the reader accepted: {type(exc).__name__}: {exc}")
    del model, f
    if not use_runtime:
        return ("ok", "")
    from qcnn.runtime import Model

    try:
        m = Model(path)
    except QcnnFormatError as exc:
        return ("format_error", "runtime: " + str(exc))
    except MemoryError as exc:  # documented: activations above Model(max_activation_bytes=...)
        return ("memory_refused", str(exc))
    except Exception as exc:  # noqa: BLE001
        return ("exception", f"runtime load: {type(exc).__name__}: {exc}", traceback.format_exc(limit=6))
    try:
        shape = (2,) + tuple(m.input_shape[1:])
        if math.prod(shape) > 50_000_000:
            return ("ok", f"input {shape} too large to run here")
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        m.run(x)
    except MemoryError as exc:
        return ("exception", f"runtime run: MemoryError: {exc}", traceback.format_exc(limit=6))
    except Exception as exc:  # noqa: BLE001
        return ("exception", f"runtime run: {type(exc).__name__}: {exc}", traceback.format_exc(limit=6))
    finally:
        m.close()
    return ("ok", "ran")


def _worker(conn, use_runtime: bool, mem_limit: int, target=None):
    # A hostile file must not take the machine down: cap the address space so a huge allocation
    # raises MemoryError here instead of inviting the OOM killer.
    if mem_limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    while True:
        path = conn.recv()
        if path is None:
            return
        conn.send((target or _load_and_run)(path, use_runtime))


class Supervisor:
    """Runs trials one at a time in a worker process; replaces it after a crash or a hang."""

    def __init__(self, use_runtime: bool, timeout: float, mem_limit: int, target=None):
        self.ctx = mp.get_context("fork")
        self.target = target  # what a trial does (default: _load_and_run); tests inject crashes here
        self.use_runtime, self.timeout, self.mem_limit = use_runtime, timeout, mem_limit
        self.proc = None

    def _start(self):
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.use_runtime, self.mem_limit, self.target),
                                    daemon=True)
        self.proc.start()
        child.close()

    def run(self, path: str):
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(path)
        if self.conn.poll(self.timeout):
            try:
                return self.conn.recv()
            except EOFError:
                pass
            self.proc.join(5)
            code = self.proc.exitcode
            self.proc = None
            return ("crash", f"worker died, exit code {code}" + (f" (signal {-code})" if code and code < 0 else ""))
        self.proc.kill()
        self.proc.join()
        self.proc = None
        return ("hang", f"no answer within {self.timeout} s")

    def close(self):
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()


def classify(m: Mutant, original: bytes, result) -> str:
    status = result[0]
    if m.data == original:
        return "noop"
    if status == "ok":
        return "silent_success" if m.must_fail else "valid"
    return status  # format_error, memory_refused, oracle_reject, exception, crash, hang


def names_field(message: str, field: Optional[str]) -> Optional[bool]:
    """Does a format error name the rewritten field (its name, or its table and index)?"""
    if not field:
        return None
    msg = message.lower()
    leaf = field.rsplit(".", 1)[-1].split("[")[0].strip("<>")
    parts = [p for p in field.split(".") if "[" in p]
    if leaf and leaf in msg:
        return True
    for p in parts:  # e.g. operators[2] -> "operator 2", buffers[3] -> "buffer 3", tensors[1] -> "tensor 1"
        name, idx = p.split("[")
        if f"{name.rstrip('s')} {idx.rstrip(']')}" in msg or p in field and p in message:
            return True
    return False


# ---------------------------------------------------------------------------------------- driver
def run_trials(trials: int, seed: int, seed_files: Optional[Dict[str, bytes]] = None, use_runtime=None,
               timeout: float = 10.0, mem_limit: int = DEFAULT_MEM_LIMIT, save_bad: Optional[str] = None,
               progress: bool = False) -> dict:
    rng = random.Random(seed)
    files = dict(seeds.seed_files())
    files.update(seed_files or {})
    seeds_ = [_Seed(n, d) for n, d in files.items()]
    if use_runtime is None:
        use_runtime = runtime_available()
    sup = Supervisor(use_runtime, timeout, mem_limit)
    tmp = tempfile.mkdtemp(prefix="qcnn-mutate-")
    outcomes, by_kind = Counter(), defaultdict(Counter)
    named, bad, samples = Counter(), [], defaultdict(list)
    t0 = time.time()
    try:
        for t in range(trials):
            s = seeds_[t % len(seeds_)]
            m = make_mutant(rng, s)
            path = os.path.join(tmp, f"t{t}.qcnn")
            with open(path, "wb") as f:
                f.write(m.data)
            result = sup.run(path)
            os.unlink(path)
            outcome = classify(m, s.data, result)
            outcomes[outcome] += 1
            by_kind[f"{m.family}/{m.kind}"][outcome] += 1
            if outcome == "format_error":
                nf = names_field(result[1], m.field)
                if nf is not None:
                    named["names_field" if nf else "does_not_name_field"] += 1
                if len(samples[m.kind]) < 3:
                    samples[m.kind].append(f"{m.detail} -> {result[1][:200]}")
            if outcome == "valid" and len(samples["valid/" + m.kind]) < 5:
                samples["valid/" + m.kind].append(m.detail)
            if outcome in BAD:
                entry = dict(trial=t, seed=m.seed, family=m.family, kind=m.kind, detail=m.detail,
                             outcome=outcome, message=result[1][:500])
                if len(result) > 2:
                    entry["traceback"] = result[2][-1500:]
                if save_bad:
                    os.makedirs(save_bad, exist_ok=True)
                    entry["file"] = os.path.join(save_bad, f"{outcome}-{t}.qcnn")
                    with open(entry["file"], "wb") as f:
                        f.write(m.data)
                bad.append(entry)
            if progress and (t + 1) % 1000 == 0:
                print(f"{t + 1}/{trials} {dict(outcomes)} {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    finally:
        sup.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return dict(trials=trials, seed=seed, seeds={s.name: len(s.data) for s in seeds_}, runtime=use_runtime,
                seconds=round(time.time() - t0, 1), outcomes=dict(outcomes), bad_count=sum(outcomes[o] for o in BAD),
                format_errors_naming_field=dict(named),
                by_kind={k: dict(v) for k, v in sorted(by_kind.items())}, bad=bad[:200],
                sample_messages=dict(samples))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Mutation harness for .qcnn files (see module docstring)")
    ap.add_argument("--trials", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the full report here")
    ap.add_argument("--seed-file", action="append", default=[], help="extra valid .qcnn to mutate (repeatable)")
    ap.add_argument("--no-runtime", action="store_true", help="load with the reader only")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a trial counts as a hang")
    ap.add_argument("--mem-limit-gb", type=float, default=DEFAULT_MEM_LIMIT / (1 << 30),
                    help="address-space cap of the worker (0: none; default 4, none under ASan)")
    ap.add_argument("--save-bad", help="folder to keep the files of bad outcomes")
    args = ap.parse_args(argv)
    extra = {}
    for p in args.seed_file:
        with open(p, "rb") as f:
            extra[os.path.basename(p)] = f.read()
    report = run_trials(args.trials, args.seed, extra, use_runtime=False if args.no_runtime else None,
                        timeout=args.timeout, mem_limit=int(args.mem_limit_gb * (1 << 30)),
                        save_bad=args.save_bad, progress=True)
    summary = {k: report[k] for k in ("trials", "seed", "runtime", "seconds", "outcomes", "bad_count",
                                      "format_errors_naming_field")}
    print(json.dumps(summary, indent=1))
    for b in report["bad"][:20]:
        print(f"BAD {b['outcome']}: {b['family']}/{b['kind']} {b['detail']}: {b['message'][:200]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if report["bad_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
