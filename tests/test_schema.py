"""The .qcnn container: round trip, packing, verification of damaged files, generated code."""
import filecmp
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

import qcnn
from qcnn import QcnnFormatError
from qcnn.schema import ir, packing, reader, writer
from qcnn.schema.layout import ALIGNMENT, FOOTER_SIZE

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schema"


# ---------------------------------------------------------------- round trip
def _assert_same_array(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def _assert_same_model(m, r):
    for field in ("input_name", "input_shape", "outputs", "producer", "source_sha256", "labels", "metadata", "version"):
        assert getattr(r, field) == getattr(m, field), field
    assert r.preprocessing.mean == pytest.approx(m.preprocessing.mean)
    assert r.preprocessing.std == pytest.approx(m.preprocessing.std)
    assert r.preprocessing.scale == pytest.approx(m.preprocessing.scale)
    for f in ("channel_order", "resize_shorter", "crop"):
        assert getattr(r.preprocessing, f) == getattr(m.preprocessing, f)
    assert [(t.name, tuple(t.shape)) for t in r.tensors] == [(t.name, tuple(t.shape)) for t in m.tensors]
    assert len(r.operators) == len(m.operators)
    for a, b in zip(m.operators, r.operators):
        assert type(a) is type(b)
        for key, va in vars(a).items():
            vb = getattr(b, key)
            if key == "weights":
                if isinstance(va, ir.QuantizedWeights):
                    assert (vb.subvec, vb.nsub, vb.ncode) == (va.subvec, va.nsub, va.ncode)
                    _assert_same_array(va.codebooks, vb.codebooks.astype(np.float32))
                    _assert_same_array(va.indices, vb.indices)
                else:
                    _assert_same_array(va, vb.astype(np.float32))
            elif isinstance(va, np.ndarray) or va is None:
                _assert_same_array(va, None if vb is None else vb.astype(va.dtype))
            elif isinstance(va, float):
                assert vb == pytest.approx(va, rel=1e-6), key
            else:
                assert tuple(vb) == tuple(va) if isinstance(va, (list, tuple)) else vb == va, key


def test_round_trip_field_for_field(tiny_model, tmp_path):
    path = tmp_path / "m.qcnn"
    nbytes = writer.write_model(tiny_model, path)
    assert path.stat().st_size == nbytes
    _assert_same_model(tiny_model, reader.read_model(path))


def test_file_starts_with_identifier_and_buffers_are_aligned(tiny_qcnn):
    data = tiny_qcnn.read_bytes()
    assert data[4:8] == b"QCNN"
    f = reader.open_qcnn(tiny_qcnn)
    for op in f.model.operators:
        for arr in _arrays(op):
            offset = arr.__array_interface__["data"][0] - _base_address(f)
            assert offset % ALIGNMENT == 0
    assert data[-FOOTER_SIZE:-FOOTER_SIZE + 4] == b"QEND"


def _arrays(op):
    w = getattr(op, "weights", None)
    out = []
    if isinstance(w, ir.QuantizedWeights):
        out += [w.codebooks, w.packed_indices]
    elif w is not None:
        out.append(w)
    if isinstance(getattr(op, "bias", None), np.ndarray):
        out.append(op.bias)
    return out


def _base_address(f):
    return np.frombuffer(f._mapping, dtype=np.uint8, count=1).__array_interface__["data"][0]


def test_open_qcnn_is_zero_copy(tiny_qcnn):
    f = reader.open_qcnn(tiny_qcnn)
    conv1 = f.model.operators[0]
    assert not conv1.weights.flags.owndata and not conv1.weights.flags.writeable
    assert f.model.operators[1].weights.indices is None  # left packed for the runtime


def test_serialize_is_deterministic(tiny_model_factory):
    assert writer.serialize(tiny_model_factory(3)) == writer.serialize(tiny_model_factory(3))
    assert writer.serialize(tiny_model_factory(3)) != writer.serialize(tiny_model_factory(4))


# ---------------------------------------------------------------- packing
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [0, 1, 7, 9, 63, 1001])
def test_pack_unpack(bits, count):
    rng = np.random.default_rng(bits * 1000 + count)
    values = rng.integers(0, 1 << bits, count).astype(np.uint8)
    packed = packing.pack(values, bits)
    assert packed.size == packing.packed_nbytes(count, bits) == (count * bits + 7) // 8
    np.testing.assert_array_equal(packing.unpack(packed, bits, count), values)


def test_bit_order_is_lsb_first():
    assert packing.pack(np.array([1, 2, 3], np.uint8), 4).tolist() == [0x21, 0x03]
    assert packing.pack(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], np.uint8), 1).tolist() == [0b00001101, 0b1]
    # 3-bit codes straddle bytes: 5 = 101b at bits 0..2, 6 = 110b at bits 3..5, 7 = 111b at bits 6..8
    assert packing.pack(np.array([5, 6, 7], np.uint8), 3).tolist() == [0b11110101, 0b1]


def test_index_bits():
    assert [packing.index_bits(k) for k in (2, 3, 4, 5, 16, 17, 128, 129, 256)] == [1, 2, 2, 3, 4, 5, 7, 8, 8]
    with pytest.raises(ValueError):
        packing.index_bits(1)
    with pytest.raises(ValueError):
        packing.index_bits(257)


def test_pack_rejects_values_too_wide():
    with pytest.raises(ValueError):
        packing.pack(np.array([4], np.uint8), 2)


# ---------------------------------------------------------------- damaged files
def test_every_truncation_is_a_format_error(tiny_qcnn):
    data = tiny_qcnn.read_bytes()
    for n in range(len(data)):
        with pytest.raises(QcnnFormatError):
            reader.parse(data[:n])


def test_random_byte_flips_are_detected(tiny_qcnn):
    data = tiny_qcnn.read_bytes()
    rng = np.random.default_rng(1234)
    checksum_errors = 0
    for trial in range(1500):
        damaged = bytearray(data)
        pos = int(rng.integers(len(data)))
        damaged[pos] ^= int(rng.integers(1, 256))
        with pytest.raises(QcnnFormatError) as err:
            reader.parse(bytes(damaged))
        checksum_errors += "checksum" in str(err.value)
    assert checksum_errors > 0


def test_every_single_byte_flip_is_detected(tiny_qcnn):
    data = tiny_qcnn.read_bytes()
    for pos in range(len(data)):
        damaged = bytearray(data)
        damaged[pos] ^= 0x40
        with pytest.raises(QcnnFormatError):
            reader.parse(bytes(damaged))


def _rewrite(model, **changes):
    for key, value in changes.items():
        setattr(model, key, value)
    return writer.serialize(model)


def _refresh_checksums(data: bytearray):
    """Recompute the metadata CRC in the footer, as a hostile tool would."""
    fb_size = struct.unpack_from("<I", data, len(data) - FOOTER_SIZE + 4)[0]
    struct.pack_into("<I", data, len(data) - FOOTER_SIZE + 8, zlib.crc32(bytes(data[:fb_size])))
    return bytes(data)


def test_wrong_version_is_refused(tiny_model):
    data = _rewrite(tiny_model, version=2)
    with pytest.raises(QcnnFormatError, match="version 2"):
        reader.parse(data)


def test_not_a_qcnn_file():
    with pytest.raises(QcnnFormatError, match="not a .qcnn"):
        reader.parse(b"\x00" * 100)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.qcnn"
    empty.write_bytes(b"")
    with pytest.raises(QcnnFormatError, match="empty"):
        reader.open_qcnn(empty)
    with pytest.raises(FileNotFoundError):
        reader.open_qcnn(tmp_path / "missing.qcnn")


def test_index_out_of_range_is_refused(tiny_model):
    # K = 5 needs 3 bits, so the values 5..7 fit in the stream but are not valid codewords.
    fc = tiny_model.operators[5]
    assert fc.weights.ncode == 5
    packed = packing.pack(fc.weights.indices, 3)
    bad = fc.weights.indices.copy()
    bad.flat[7] = 7
    fc.weights.indices = None
    fc.weights.packed_indices = packing.pack(bad, 3)
    data = writer.serialize(tiny_model)
    with pytest.raises(QcnnFormatError, match="index 7 >= K=5"):
        reader.parse(data, unpack_indices=True)
    assert packed.size == fc.weights.packed_indices.size


def test_shape_mismatch_is_refused_by_writer(tiny_model):
    tiny_model.tensors[2] = ir.TensorInfo("c2", (6, 4, 4))
    with pytest.raises(ValueError, match="conv2"):
        writer.serialize(tiny_model)


def test_missing_tensor_is_refused_by_writer(tiny_model):
    tiny_model.operators[3].inputs = ["nope"]
    with pytest.raises(ValueError, match="nope"):
        writer.serialize(tiny_model)


# ---------------------------------------------------------------- atomic writes
def test_interrupted_write_leaves_old_file_and_no_temp(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "m.qcnn"
    path.write_bytes(b"old contents")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.write_model(tiny_model, path)
    assert path.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.qcnn"]


def test_write_into_missing_folder(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        writer.write_model(tiny_model, tmp_path / "nope" / "m.qcnn")


# ---------------------------------------------------------------- generated code
def test_reader_agrees_with_flatc_generated_code(tiny_qcnn):
    from qcnn.schema.fb.Model import Model as FbModel

    data = tiny_qcnn.read_bytes()
    fb = FbModel.GetRootAs(data, 0)
    ours = reader.read_model(tiny_qcnn)
    assert fb.Version() == ours.version
    assert fb.Producer().decode() == ours.producer
    assert fb.FileSize() == len(data)
    assert [fb.InputShape(i) for i in range(fb.InputShapeLength())] == [-1, 3, 8, 8]
    g = fb.Graph()
    assert [g.Tensors(i).Name().decode() for i in range(g.TensorsLength())] == [t.name for t in ours.tensors]
    kinds = [g.Operators(i).Kind() for i in range(g.OperatorsLength())]
    assert kinds == [reader.K_CONV, reader.K_CONV, reader.K_LRN, reader.K_MAXPOOL, reader.K_FLATTEN, reader.K_FC,
                     reader.K_SOFTMAX]
    from qcnn.schema.fb.Conv2DOptions import Conv2DOptions
    from qcnn.schema.fb.QuantizedWeights import QuantizedWeights
    from qcnn.schema.fb.OperatorOptions import OperatorOptions
    from qcnn.schema.fb.Weights import Weights

    op = g.Operators(1)
    assert op.OptionsType() == OperatorOptions.Conv2DOptions == reader.OPT_CONV
    conv = Conv2DOptions()
    conv.Init(op.Options().Bytes, op.Options().Pos)
    assert (conv.Groups(), conv.StrideH(), conv.WeightsType()) == (2, 2, Weights.QuantizedWeights)
    q = QuantizedWeights()
    q.Init(conv.Weights().Bytes, conv.Weights().Pos)
    buf = fb.Buffers(q.Indices())
    assert buf.Offset() % ALIGNMENT == 0
    np.testing.assert_array_equal(
        packing.unpack(np.frombuffer(data, np.uint8, buf.Size(), buf.Offset()), q.IndexBits(), 2 * 9 * 2 * 3),
        ours.operators[1].weights.indices.ravel())


@pytest.mark.skipif(shutil.which("flatc") is None, reason="flatc (Debian flatbuffers-compiler) not installed")
def test_generated_code_matches_schema(tmp_path):
    subprocess.run(["flatc", "--python", "-o", str(tmp_path), str(SCHEMA_DIR / "qcnn.fbs")], check=True)
    generated = tmp_path / "qcnn" / "schema" / "fb"
    names = sorted(p.name for p in generated.glob("*.py") if p.name != "__init__.py")
    committed = sorted(p.name for p in (SCHEMA_DIR / "fb").glob("*.py") if p.name != "__init__.py")
    assert names == committed
    _, mismatch, errors = filecmp.cmpfiles(generated, SCHEMA_DIR / "fb", names, shallow=False)
    assert not mismatch and not errors, f"regenerate schema/fb with flatc: {mismatch or errors}"


def test_format_error_is_a_value_error():
    assert issubclass(qcnn.QcnnFormatError, ValueError)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 63, 64, 1001])
def test_compiled_unpack_matches_numpy(bits, count):
    from qcnn.runtime import _core

    rng = np.random.default_rng(bits * 7 + count)
    values = rng.integers(0, 1 << bits, count).astype(np.uint8)
    packed = packing.pack(values, bits)
    out = np.full(count + 3, 0xEE, np.uint8)
    largest = _core.unpack_indices(packed, bits, count, out)
    np.testing.assert_array_equal(out[:count], values)
    assert (out[count:] == 0xEE).all()  # nothing written past count
    assert largest == (int(values.max()) if count else 0)
    if count:
        with pytest.raises(ValueError):
            _core.unpack_indices(packed[:-1], bits, count, out)
