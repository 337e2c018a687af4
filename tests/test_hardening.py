"""Hostile .qcnn files: the reader (and the runtime, once built) must refuse them cleanly.

The mutation harness (qcnn.tools.hardening.mutate) runs here scaled down; the full run
(>= 10,000 trials) and the atheris fuzzing are described in HARDENING.md.
"""
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from qcnn import QcnnFormatError
from qcnn.schema import ir, packing, reader, writer
from qcnn.tools.hardening import fbwalk, mutate, seeds
from qcnn.tools.hardening.resign import resign

DATA = Path(__file__).parent / "data" / "hardening"


@pytest.fixture(scope="module")
def tiny_bytes():
    return writer.serialize(seeds.tiny())


def _field(data, path):
    fields = {f.path: f for f in fbwalk.walk(data[: struct.unpack_from("<I", data, len(data) - 12)[0]])}
    return fields[path]


def _rewrite(data, path, value):
    """Rewrite one FlatBuffer field and re-sign the checksums: only structural checks remain."""
    fld = _field(data, path)
    b = bytearray(data)
    struct.pack_into("<" + fld.fmt, b, fld.pos, value)
    return resign(bytes(b))


# ----------------------------------------------------------------------------- the harness itself
def test_seed_models_are_valid_and_cover_every_operator_kind():
    kinds = set()
    for name, data in seeds.seed_files().items():
        model = reader.parse(data, unpack_indices=True)
        kinds |= {type(op).__name__ for op in model.operators}
        ks = {op.weights.ncode for op in model.operators if getattr(op, "quantized", False)}
        assert any(k & (k - 1) for k in ks), f"{name}: no non-power-of-two K"
    assert kinds == {t.__name__ for t in ir.OPERATOR_TYPES}


def test_resign_restores_checksums_only(tiny_bytes):
    assert resign(tiny_bytes) == tiny_bytes  # a valid file is left as it is
    fld = _field(tiny_bytes, "Model.graph.operators[0].options.fused_relu")
    b = bytearray(tiny_bytes)
    b[fld.pos] = 0  # conv1 without its ReLU: still a valid model
    with pytest.raises(QcnnFormatError, match="checksum"):
        reader.parse(bytes(b))
    model = reader.parse(resign(bytes(b)))
    assert model.operators[0].relu is False


def test_field_walker_finds_every_operator_option(tiny_bytes):
    paths = {f.path for f in fbwalk.walk(tiny_bytes[: struct.unpack_from("<I", tiny_bytes, len(tiny_bytes) - 12)[0]])}
    for i in range(7):
        assert f"Model.graph.operators[{i}].options_type" in paths
    assert "Model.graph.operators[1].options.weights.ncode" in paths
    assert "Model.buffers[1].crc32" in paths


def _sv_crash(path, use_runtime):
    os.kill(os.getpid(), signal.SIGSEGV)


def _sv_hang(path, use_runtime):
    time.sleep(60)


def _sv_ok(path, use_runtime):
    return ("ok", path)


def test_supervisor_counts_crashes_and_hangs_and_recovers():
    sup = mutate.Supervisor(False, timeout=1.0, mem_limit=0, target=_sv_crash)
    try:
        outcome = sup.run("x")
        # signal 11 normally; under scripts/sanitize.sh ASan reports the SEGV and aborts instead
        assert outcome[0] == "crash" and ("signal 11" in outcome[1] or "signal 6" in outcome[1]), outcome
        sup.target = _sv_hang
        t0 = time.time()
        assert sup.run("x")[0] == "hang"
        assert time.time() - t0 < 10
        sup.target = _sv_ok
        assert sup.run("y") == ("ok", "y")  # a fresh worker after each failure
    finally:
        sup.close()


def test_classification():
    m = mutate.Mutant("s", "raw", "bitflip", "", b"abc", must_fail=True)
    assert mutate.classify(m, b"abd", ("ok", "")) == "silent_success"
    assert mutate.classify(m, b"abc", ("ok", "")) == "noop"
    assert mutate.classify(m, b"abd", ("format_error", "x")) == "format_error"
    m.must_fail = False
    assert mutate.classify(m, b"abd", ("ok", "")) == "valid"


def test_mutation_harness_scaled_down():
    """300 mutants of every family: no crash, hang, stray exception or accepted invalid file."""
    report = mutate.run_trials(300, seed=12345)
    out = report["outcomes"]
    assert sum(out.values()) == 300
    assert report["bad_count"] == 0, report["bad"][:5]
    assert out.get("format_error", 0) > 200
    families = {k.split("/")[0] for k in report["by_kind"]}
    assert families == {"raw", "resigned", "field", "targeted"}


# ----------------------------------------------------------------------------- targeted cases
@pytest.mark.parametrize("path, value, message", [
    ("Model.graph.operators[2].inputs[0]", 7, "before it is computed"),  # LRN reads softmax output: a cycle
    ("Model.graph.operators[3].inputs[0]", 4, "before it is computed"),  # pool reads its own output
    ("Model.graph.operators[1].inputs[0]", 99, "refers to tensor 99"),
    ("Model.graph.operators[1].outputs[0]", -1, "refers to tensor -1"),
    ("Model.graph.outputs[0]", 8, "refer to no tensor"),
    ("Model.graph.input", 2**31 - 1, "graph input refers to tensor"),
    ("Model.graph.operators[0].options_type", 2, "does not match kind"),
    ("Model.graph.operators[1].options.weights_type", 2, "weights"),  # quantized read as dense
    ("Model.graph.operators[0].options.weights_type", 1, "conv1"),  # dense read as quantized
    ("Model.graph.operators[5].options.weights_type", 7, "unknown weights type 7"),
    ("Model.graph.operators[4].kind", 200, "unknown operator kind 200"),
    ("Model.graph.tensors[1].shape[1]", 2**31 - 1, "bad name or shape"),
    ("Model.graph.tensors[2].shape[0]", 65536, "declared"),
    ("Model.graph.operators[1].options.cout", 2**24, "conv2"),
    ("Model.graph.operators[5].options.in_features", 46341, "46341 input channels"),
    ("Model.graph.operators[1].options.weights.ncode", 257, "ncode"),
    ("Model.graph.operators[1].options.weights.ncode", 1, "ncode"),
    ("Model.graph.operators[1].options.weights.index_bits", 3, "index_bits"),
    ("Model.graph.operators[1].options.weights.subvec", 0, "subvec"),
    ("Model.graph.operators[1].options.stride_h", 0, "strides"),
    ("Model.graph.operators[0].options.pad_left", -1, "pads"),
    ("Model.graph.operators[0].options.bias", 1, "used twice"),
    ("Model.graph.operators[0].options.bias", 3, "holds 512 bytes"),
    ("Model.graph.operators[0].options.bias", 99, "does not exist"),
    ("Model.buffers[2].offset", 2**64 - 64, "outside the data section"),
    ("Model.buffers[2].offset", 2**64 - 1, "not a multiple of 64"),
    ("Model.buffers[2].size", 2**63, "outside the data section"),
    ("Model.buffers[3].offset", 64, "outside the data section"),
    ("Model.buffers[1].offset", 0, "outside the data section"),
    ("Model.graph.operators[1].name", 2**32 - 1, "outside the metadata"),
    ("Model.graph.tensors.<len>", 2**30, "outside the metadata"),
    ("Model.graph.<vtable>", -2**31, "outside the metadata"),
    ("Model.version", 2, "version 2"),
    ("Model.file_size", 2**64 - 1, "header says"),
])
def test_structural_damage_is_named(tiny_bytes, path, value, message):
    bad = _rewrite(tiny_bytes, path, value)
    with pytest.raises(QcnnFormatError, match=message.replace("(", r"\(")) as exc:
        reader.parse(bad, unpack_indices=True)
    assert "\n" not in str(exc.value)


def test_code_ge_k_is_refused(tmp_path):
    op_index = 5  # the fully connected layer: K=5, 3-bit codes, so 5..7 are representable
    model = seeds.tiny()
    w = model.operators[op_index].weights
    codes = w.indices.reshape(-1).copy()
    bits = w.index_bits
    codes[-1] = (1 << bits) - 1  # >= K, still representable in b bits
    # The writer refuses codes >= K, so write the packed stream directly.
    model.operators[op_index].weights = ir.QuantizedWeights(
        w.subvec, w.nsub, w.ncode, w.codebooks, None, packed_indices=packing.pack(codes, bits),
        index_shape=w.indices.shape)
    data = writer.serialize(model)
    with pytest.raises(QcnnFormatError, match=r"index 7 >= K=5"):
        reader.parse(data, unpack_indices=True)
    # qcnn-inspect refuses it too (it used to report such a file as fine: it never unpacked)
    bad = tmp_path / "bad.qcnn"
    bad.write_bytes(data)
    r = subprocess.run([sys.executable, "-m", "qcnn.tools.inspect", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "index 7 >= K=5" in r.stderr


def test_every_truncation_of_the_flatbuffer_region_with_resigned_footer(tiny_bytes):
    """Shorten the FlatBuffer (footer says fewer bytes, CRC matches): offsets must be caught."""
    fb_size = struct.unpack_from("<I", tiny_bytes, len(tiny_bytes) - 12)[0]
    for n in range(8, fb_size, 7):
        b = bytearray(tiny_bytes)
        struct.pack_into("<II", b, len(b) - 12, n, zlib.crc32(bytes(b[:n])) & 0xFFFFFFFF)
        with pytest.raises(QcnnFormatError):
            reader.parse(bytes(b), unpack_indices=True)


# ----------------------------------------------------------------------------- fuzz regressions
def _regression_inputs():
    return sorted(DATA.glob("*.bin")) if DATA.is_dir() else []


@pytest.mark.parametrize("path", _regression_inputs(), ids=lambda p: p.name)
def test_fuzz_regressions(path):
    """Inputs found by atheris (qcnn.tools.hardening.fuzz) that once escaped as other exceptions."""
    data = path.read_bytes()
    for candidate in (data, resign(data)):
        try:
            reader.parse(candidate, unpack_indices=True)
        except QcnnFormatError:
            pass


# ----------------------------------------------------------------------------- found by hardening
@pytest.mark.parametrize("path, value", [
    ("Model.preprocessing.resize_shorter", 100000),  # load_image would make a 100000 x 133333 image
    ("Model.preprocessing.resize_shorter", -5),
    ("Model.preprocessing.crop_h", 2**31 - 1),  # load_image resizes up to the crop: 2^31 rows
    ("Model.preprocessing.crop_w", -3),
])
def test_preprocessing_sizes_are_bounded(tiny_bytes, path, value):
    """A file must not make qcnn-run allocate an image of its choosing (found by the harness)."""
    with pytest.raises(QcnnFormatError, match=path.rsplit(".", 1)[1]):
        reader.parse(_rewrite(tiny_bytes, path, value))


def test_input_tensor_size_is_bounded():
    """The graph input escaped the per-tensor element bound every other tensor has (2^31)."""
    model = seeds.tiny()
    big = (3, 40000, 40000)  # 4.8e9 elements; a global average pool makes every later shape small
    model.input_shape = big
    model.tensors = [ir.TensorInfo("x", big), ir.TensorInfo("g", (3, 1, 1)), ir.TensorInfo("f", (3,))]
    model.operators = [ir.GlobalAveragePool("gap", ["x"], ["g"]), ir.Flatten("flat", ["g"], ["f"])]
    model.outputs = ["f"]
    data = writer.serialize(model)  # the writer only checks operator outputs
    with pytest.raises(QcnnFormatError, match="input"):
        reader.parse(data)


def test_written_file_has_the_usual_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        writer.write_model(seeds.tiny(), tmp_path / "m.qcnn")
    finally:
        os.umask(umask)
    assert (tmp_path / "m.qcnn").stat().st_mode & 0o777 == 0o644


def _open_in_child(path, conn):
    try:
        reader.open_qcnn(path)
        conn.send("opened")
    except Exception as exc:  # noqa: BLE001
        conn.send(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("kind", ["fifo", "char_device"])
def test_special_files_are_refused_without_blocking(tmp_path, kind):
    """A FIFO used to block open() forever (qcnn-run hung); /dev/zero is not a model either."""
    import multiprocessing as mp

    if kind == "fifo":
        path = str(tmp_path / "model.qcnn")
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_open_in_child, args=(path, child))
    p.start()
    answered = parent.poll(10)
    if p.is_alive():
        p.kill()
    p.join()
    assert answered, "open_qcnn blocked on a special file"
    assert parent.recv().startswith("QcnnFormatError"), kind
