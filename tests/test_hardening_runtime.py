"""The runtime under bad inputs, many threads, close() races and hostile-but-valid files.

Anything that could kill the interpreter (a crash, an allocation of many gigabytes) runs in a
child process with an address-space limit, so a failure is a test failure, not a dead test run.
"""
import faulthandler
import multiprocessing as mp
import os
import resource
import threading

import numpy as np
import pytest

from qcnn import QcnnFormatError
from qcnn.schema import ir, writer
from qcnn.tools.hardening import extreme, mutate, seeds

if not mutate.runtime_available():
    pytest.skip("runtime extension not built with its kernels", allow_module_level=True)

from qcnn.runtime import Model  # noqa: E402

# Memory-limit tests need RLIMIT_AS, which AddressSanitizer's shadow memory rules out.
needs_rlimit = pytest.mark.skipif(mutate.UNDER_ASAN, reason="RLIMIT_AS cannot be used under ASan")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("rt") / "tiny.qcnn"
    writer.write_model(seeds.tiny(), path)
    return str(path)


@pytest.fixture(scope="module")
def branchy_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("rt") / "branchy.qcnn"
    writer.write_model(seeds.branchy(), path)
    return str(path)


def _x(n=3, shape=(3, 8, 8), seed=0):
    return np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)


def _in_child(fn, *args, mem_gb=2, timeout=60):
    """Run fn(*args) in a forked child with RLIMIT_AS; returns ('ok', value) / ('raised', repr) / ('died', code)."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()

    def target():
        faulthandler.disable()  # an expected crash should not print pytest's fault traceback
        if not mutate.UNDER_ASAN:
            resource.setrlimit(resource.RLIMIT_AS, (mem_gb << 30, mem_gb << 30))
        try:
            child.send(("ok", fn(*args)))
        except BaseException as exc:  # noqa: BLE001
            child.send(("raised", f"{type(exc).__name__}: {exc}"))

    p = ctx.Process(target=target)
    p.start()
    child.close()  # so a dead child reads as EOF here
    result = None
    if parent.poll(timeout):
        try:
            result = parent.recv()
        except EOFError:
            pass
    p.join(5)
    if p.is_alive():
        p.kill()
        p.join()
        return ("hang", None)
    return result if result is not None else ("died", p.exitcode)


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("bad, words", [
    (lambda x: x.astype(np.float64), "float32"),
    (lambda x: x.astype(np.float16), "float32"),
    (lambda x: x.astype(np.int32), "float32"),
    (lambda x: x[0], "shape"),  # rank 3
    (lambda x: x[None], "shape"),  # rank 5
    (lambda x: x[:, :2], "shape"),  # channels
    (lambda x: x[:, :, :7], "shape"),  # height
    (lambda x: x.transpose(0, 2, 3, 1), "shape"),  # NHWC by mistake
    (lambda x: x[:0], "empty"),  # batch 0
    (lambda x: x.tolist(), "numpy array"),
    (lambda x: None, "numpy array"),
    (lambda x: "x.jpg", "numpy array"),
])
def test_bad_inputs_raise_valueerror(tiny_path, bad, words):
    m = Model(tiny_path)
    with pytest.raises(ValueError, match=words):
        m.run(bad(_x()))


@pytest.mark.parametrize("layout", ["reversed_w", "strided_batch", "fortran", "readonly", "unaligned", "broadcast"])
def test_unusual_layouts_give_the_contiguous_result(tiny_path, layout):
    m = Model(tiny_path)
    x = _x(4)
    if layout == "reversed_w":
        v = np.ascontiguousarray(x[..., ::-1])[..., ::-1]
    elif layout == "strided_batch":
        v = np.repeat(x, 2, axis=0)[::2]
    elif layout == "fortran":
        v = np.asfortranarray(x)
    elif layout == "readonly":
        v = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(x.shape)
    elif layout == "unaligned":  # float32 data at an odd byte address
        raw = np.zeros(x.nbytes + 1, np.uint8)
        v = np.frombuffer(raw.data, dtype=np.float32, count=x.size, offset=1).reshape(x.shape)
        v.flags.writeable and np.copyto(v, x)
        assert not v.flags.aligned
    else:
        x = np.broadcast_to(x[:1], (4,) + x.shape[1:])
        v = x
    assert not (v.flags.c_contiguous and v.flags.aligned and v.flags.writeable) or layout == "fortran"
    np.testing.assert_array_equal(m.run(v), m.run(np.ascontiguousarray(x)))


def test_nan_and_inf_are_refused_extreme_finite_values_run(tiny_path):
    # NaN/inf would come out of the int8 kernels as finite, plausible outputs: refused by name.
    m = Model(tiny_path)
    x = _x(4)
    x[1, 0, 0, 0] = np.nan
    x[2] = np.inf
    x[3] = -np.finfo(np.float32).max
    with pytest.raises(ValueError, match="input image 1 has 1 NaN or infinite"):
        m.run(x)
    with pytest.raises(ValueError, match="input image 0 has 192 NaN or infinite"):
        m.run(x[2:3])
    y = m.run(x[[0, 3]])  # the finite extreme runs
    assert y.shape == (2, 10)
    np.testing.assert_array_equal(y[0], m.run(x[:1])[0])


def _huge_batch(path):
    m = Model(path)
    x = np.broadcast_to(_x(1), (10**9, 3, 8, 8))  # no memory for the input, 40 GB of outputs
    m.run(x)


@needs_rlimit
def test_huge_batch_is_a_clean_memoryerror(tiny_path):
    status, what = _in_child(_huge_batch, tiny_path, mem_gb=2)
    assert status == "raised" and what.startswith("MemoryError"), (status, what)


# ----------------------------------------------------------------------------- hostile but valid files
def _amplifier(path):
    """A ~5 KB file whose activations need 2 x 8.3 GB per image: 3x1x1 input, conv with pads 4096."""
    rng = np.random.default_rng(0)
    c = 31
    ops = [ir.Conv("grow", ["x"], ["a"], cin=3, cout=c, kernel=(1, 1), pads=(4096,) * 4,
                   weights=rng.standard_normal((c, 3, 1, 1)).astype(np.float32)),
           ir.Conv("keep", ["a"], ["b"], cin=c, cout=c, kernel=(1, 1),
                   weights=rng.standard_normal((c, c, 1, 1)).astype(np.float32)),
           ir.GlobalAveragePool("gap", ["b"], ["g"])]
    side = 1 + 2 * 4096
    tensors = [ir.TensorInfo("x", (3, 1, 1)), ir.TensorInfo("a", (c, side, side)), ir.TensorInfo("b", (c, side, side)),
               ir.TensorInfo("g", (c, 1, 1))]
    writer.write_model(ir.Model("x", (3, 1, 1), tensors, ops, ["g"]), path)
    return os.path.getsize(path)


def _load_amplifier(path, max_gb):
    m = Model(path)
    m.run(np.zeros((1, 3, 1, 1), np.float32))
    return "ran"


@needs_rlimit
def test_small_file_with_huge_activations_fails_cleanly_under_a_memory_limit(tmp_path):
    """Under an address-space limit the 16 GB working set is a MemoryError, not a crash."""
    path = str(tmp_path / "amp.qcnn")
    assert _amplifier(path) < 8192  # a few KB
    status, what = _in_child(_load_amplifier, path, 2, mem_gb=2)
    assert status == "raised" and "MemoryError" in what, (status, what)


@needs_rlimit
def test_small_file_with_huge_activations_is_refused_at_load(tmp_path):
    path = str(tmp_path / "amp.qcnn")
    _amplifier(path)
    status, what = _in_child(Model, path, mem_gb=2)  # load only: nothing big is allocated yet
    assert status == "raised" and ("QcnnFormatError" in what or "MemoryError" in what), (status, what)


def _truncate_while_loaded(path):
    m = Model(path)
    x = _x(1)
    m.run(x)
    os.truncate(path, 0)  # e.g. `cp new.qcnn model.qcnn` over a file a server has loaded
    m.run(x)
    return "ok"


def test_file_truncated_on_disk_while_loaded(tmp_path):
    path = str(tmp_path / "t.qcnn")
    writer.write_model(seeds.tiny(), path)
    status, what = _in_child(_truncate_while_loaded, path)
    assert status in ("ok", "raised"), (status, what)


def test_replacing_the_file_atomically_while_loaded_is_safe(tmp_path):
    """What the writer does (temp file + rename): the loaded Model keeps the old inode."""
    path = str(tmp_path / "t.qcnn")
    writer.write_model(seeds.tiny(0), path)
    m = Model(path)
    y0 = m.run(_x())
    writer.write_model(seeds.tiny(1), path)
    np.testing.assert_array_equal(m.run(_x()), y0)
    assert not np.array_equal(Model(path).run(_x()), y0)


def test_pool_ceil_mode_window_wider_than_padded_input(tmp_path):
    from qcnn.converter.forward import run_model

    ops = [ir.MaxPool("pool", ["x"], ["p"], kernel=(1, 2), strides=(1, 2), ceil_mode=True)]
    model = ir.Model("x", (2, 3, 1), [ir.TensorInfo("x", (2, 3, 1)), ir.TensorInfo("p", (2, 3, 1))], ops, ["p"])
    path = str(tmp_path / "p.qcnn")
    writer.write_model(model, path)
    x = _x(2, (2, 3, 1))
    np.testing.assert_allclose(Model(path).run(x), run_model(model, x)["p"])


def test_extreme_valid_models_scaled_down():
    """Random valid edge-case models: every ISA, float LUTs equal numpy, int8 LUTs finite, no crash."""
    report = extreme.run_trials(40, seed=7)
    assert report["outcomes"] == {"ok": 40}, report["bad"][:3]


def test_mutation_harness_with_runtime_scaled_down():
    report = mutate.run_trials(200, seed=99, use_runtime=True)
    assert report["runtime"] and report["bad_count"] == 0, report["bad"][:5]


# ----------------------------------------------------------------------------- threads and lifetime
def test_threads_share_one_model(branchy_path):
    """8 threads x 50 runs on one Model give exactly the single-threaded results."""
    m = Model(branchy_path)
    xs = [_x(2, (4, 6, 6), seed=s) for s in range(8)]
    expected = [m.run(x) for x in xs]
    errors, barrier = [], threading.Barrier(8)

    def worker(i):
        try:
            barrier.wait()
            for _ in range(50):
                ys = m.run(xs[i])
                for y, e in zip(ys, expected[i]):
                    if not np.array_equal(y, e):
                        errors.append(f"thread {i}: result differs")
                        return
        except Exception as exc:  # noqa: BLE001
            errors.append(f"thread {i}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_close_while_other_threads_run(tiny_path):
    """close() waits for runs in progress; later runs raise; no run sees freed memory."""
    m = Model(tiny_path)
    x = _x(8)
    expected = m.run(x)
    started, results, errors = threading.Event(), [], []

    def worker():
        started.set()
        while True:
            try:
                y = m.run(x)
            except ValueError as exc:
                errors.append(str(exc))
                return
            results.append(np.array_equal(y, expected))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    m.close()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert all(results) and len(results) >= 1
    assert len(errors) == 4 and all("closed" in e for e in errors)
    assert m.closed


def test_closed_model_raises_and_close_is_idempotent(tiny_path):
    m = Model(tiny_path)
    m.close()
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.run(_x())
    with Model(tiny_path) as m2:
        m2.run(_x())
    with pytest.raises(ValueError, match="closed"):
        m2.run(_x())


def test_model_of_hostile_file_raises_format_error(tmp_path):
    path = tmp_path / "bad.qcnn"
    data = bytearray(writer.serialize(seeds.tiny()))
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(QcnnFormatError):
        Model(path)


# ----------------------------------------------------------------------------- qcnn-run and hostile images
def _qcnn_run(model, image):
    import contextlib
    import io

    from qcnn.runtime import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main([model, image])
    return rc, err.getvalue().strip().splitlines()


@pytest.fixture(scope="module")
def run_model_256(tmp_path_factory):
    """The tiny model with the usual ImageNet-style preprocessing (shorter side 256)."""
    pytest.importorskip("PIL")
    model = seeds.tiny()
    model.preprocessing.resize_shorter, model.preprocessing.crop = 256, (8, 8)
    path = tmp_path_factory.mktemp("run") / "m.qcnn"
    writer.write_model(model, path)
    return str(path)


def test_qcnn_run_refuses_a_fifo_and_a_directory(run_model_256, tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    fifo = str(tmp_path / "m.qcnn")
    os.mkfifo(fifo)
    for bad in (fifo, str(tmp_path)):
        status, value = _in_child(_qcnn_run, bad, str(tmp_path / "ok.png"), timeout=20)
        assert status == "ok" and value[0] == 2 and len(value[1]) == 1, (status, value)


@needs_rlimit
def test_qcnn_run_decompression_bomb_is_a_one_line_error(run_model_256, tmp_path):
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 48 KB file, 400 M pixels
    status, value = _in_child(_qcnn_run, run_model_256, str(bomb), mem_gb=3)
    assert status == "ok" and value[0] == 2 and len(value[1]) == 1, (status, value)


@needs_rlimit
def test_qcnn_run_thin_image_needs_bounded_memory(run_model_256, tmp_path):
    from PIL import Image

    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 60000)).save(thin)
    status, value = _in_child(_qcnn_run, run_model_256, str(thin), mem_gb=2)
    assert status == "ok" and value[0] in (0, 2), (status, value)  # a result, or one clear error line


def test_command_line_tools_on_hostile_files(tmp_path, capsys):
    """qcnn-inspect, qcnn-convert --decode and qcnn-run on 90 mutants: exit 0 or 2 with one line."""
    import random

    from PIL import Image

    qinspect = pytest.importorskip("qcnn.tools.inspect")
    ccli = pytest.importorskip("qcnn.converter.cli")
    from qcnn.runtime import cli as rcli

    Image.new("RGB", (40, 30)).save(tmp_path / "img.png")
    rng = random.Random(5)
    sds = [mutate._Seed(n, d) for n, d in seeds.seed_files().items()]
    path, out = str(tmp_path / "m.qcnn"), str(tmp_path / "o.onnx")
    tools = {"qcnn-inspect": lambda: qinspect.main([path]),
             "qcnn-convert --decode": lambda: ccli.main(["--decode", path, "-o", out, "-q"]),
             "qcnn-run": lambda: rcli.main([path, str(tmp_path / "img.png")])}
    codes = {name: set() for name in tools}
    for t in range(90):
        m = mutate.make_mutant(rng, sds[t % len(sds)])
        with open(path, "wb") as f:
            f.write(m.data)
        for name, call in tools.items():
            rc = call()
            err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
            assert rc in (0, 2), (name, m.kind, m.detail, err)
            if rc == 2:
                assert len(err) == 1 and "error" in err[0], (name, m.kind, m.detail, err)
                assert err[0].count(path) <= 1, (name, err)  # the file is named once, not twice
            codes[name].add(rc)
            if os.path.exists(out):
                os.unlink(out)
    assert all(2 in c for c in codes.values())
