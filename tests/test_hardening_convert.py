"""Bad ONNX files and bad options to qcnn-convert: exit status 2, one error line, nothing left behind.

Most cases call qcnn.converter.cli.main in-process (fast); SIGINT is sent to a real subprocess.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
cli = pytest.importorskip("qcnn.converter.cli")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from qcnn.schema import reader  # noqa: E402


def conv_net(path, cin=3, hw=16, widths=(8,), nclass=4, dynamic=False, extra=None, external=False, seed=0):
    """Conv(3x3)+ReLU blocks -> GlobalAveragePool -> Flatten -> Gemm, written as ONNX."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, c = [], [], "x", cin
    for i, w in enumerate(widths):
        inits += [numpy_helper.from_array((rng.standard_normal((w, c, 3, 3)) * 0.2).astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(np.zeros(w, np.float32), f"B{i}")]
        nodes += [helper.make_node("Conv", [x, f"W{i}", f"B{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x, c = f"r{i}", w
    if extra is not None:
        nodes.append(extra(x))
        x = nodes[-1].output[0]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "Wfc", "Bfc"], ["y"], transB=1)]
    inits += [numpy_helper.from_array((rng.standard_normal((nclass, c)) * 0.2).astype(np.float32), "Wfc"),
              numpy_helper.from_array(np.zeros(nclass, np.float32), "Bfc")]
    shape = [1, cin, "H", "W"] if dynamic else [1, cin, hw, hw]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(str(path)) + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return str(path)


def _if_net(path):
    """Put an If (constant condition, both branches pass the activation on) before the pooling."""
    m = onnx.load(path)
    nodes = list(m.graph.node)
    at = next(i for i, n in enumerate(nodes) if n.op_type == "GlobalAveragePool")
    x = nodes[at].input[0]
    branch = lambda name: helper.make_graph([helper.make_node("Identity", [x], [name])], name, [],
                                            [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)])
    cond = helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True)))
    node = helper.make_node("If", ["cond"], ["if_out"], name="branchy", then_branch=branch("t"), else_branch=branch("e"))
    nodes[at].input[0] = "if_out"
    m.graph.ClearField("node")
    m.graph.node.extend(nodes[:at] + [cond, node] + nodes[at:])
    onnx.save(m, path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    conv_net(d / "ok.onnx")
    conv_net(d / "dynamic.onnx", dynamic=True)
    conv_net(d / "sin.onnx", extra=lambda x: helper.make_node("Sin", [x], ["s"]))
    _if_net(conv_net(d / "if.onnx"))
    conv_net(d / "external.onnx", external=True)
    os.unlink(d / "external.onnx.data")  # weights stored beside the model, then lost
    (d / "text.onnx").write_text("hello, not a protobuf")
    (d / "empty.onnx").write_bytes(b"")
    (d / "random.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    _odd_graphs(d)
    np.save(d / "calib.npy", np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    np.save(d / "calib_shape.npy", np.zeros((8, 5, 9), np.float32))
    np.save(d / "calib_nan.npy", np.full((8, 3, 16, 16), np.nan, np.float32))
    (d / "noimages").mkdir()
    (d / "noimages" / "readme.txt").write_text("no pictures here")
    (d / "corrupt").mkdir()
    (d / "corrupt" / "a.jpg").write_text("not a jpeg")
    (d / "corrupt" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(50)))
    return d


def _graph(d, name, nodes, inits, shape, dtype=TensorProto.FLOAT):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, shape)],
                              [helper.make_tensor_value_info("y", dtype, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(d / f"{name}.onnx"))


def _odd_graphs(d):
    """Structurally broken or hostile ONNX graphs."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    lying = onnx.TensorProto()  # claims 10^10 weights, holds 4 floats
    lying.name, lying.data_type = "W", TensorProto.FLOAT
    lying.dims.extend([100000, 100000, 1, 1])
    lying.raw_data = bytes(16)
    _graph(d, "lying_initializer", [helper.make_node("Conv", ["x", "W"], ["y"])], [lying], [1, 3, 8, 8])
    _graph(d, "huge_input", [helper.make_node("Conv", ["x", "W"], ["c"]),
                             helper.make_node("GlobalAveragePool", ["c"], ["y"])], [w], [1, 3, 100000, 100000])
    _graph(d, "cycle", [helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                        helper.make_node("Relu", ["a"], ["y"])], [], [1, 3, 8, 8])
    _graph(d, "undefined_tensor", [helper.make_node("Add", ["x", "ghost"], ["y"])], [], [1, 3, 8, 8])
    _graph(d, "channel_mismatch", [helper.make_node("Conv", ["x", "W"], ["y"])],
           [numpy_helper.from_array(np.ones((4, 5, 3, 3), np.float32), "W")], [1, 3, 8, 8])
    _graph(d, "int64_input", [helper.make_node("Relu", ["x"], ["y"])], [], [1, 3, 8, 8], TensorProto.INT64)
    nan = numpy_helper.from_array(np.full((4, 3, 3, 3), np.nan, np.float32), "W")
    _graph(d, "nan_weights", [helper.make_node("Conv", ["x", "W"], ["c"]),
                              helper.make_node("GlobalAveragePool", ["c"], ["g"]),
                              helper.make_node("Flatten", ["g"], ["y"])], [nan], [1, 3, 8, 8])


def _run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


BAD = [  # (id, argv after the model, model file, words the error line must contain)
    ("missing model", [], "nope.onnx", ["not found", "nope.onnx"]),
    ("model is a directory", [], ".", ["directory"]),
    ("text file", [], "text.onnx", ["not an ONNX model"]),
    ("empty file", [], "empty.onnx", ["not an ONNX model"]),
    ("random bytes", [], "random.onnx", ["not an ONNX model"]),
    ("unsupported op", [], "sin.onnx", ["unsupported op", "Sin"]),
    ("control flow", [], "if.onnx", ["unsupported op If", "branchy"]),
    ("dynamic spatial dims", [], "dynamic.onnx", ["dynamic", "--input-shape"]),
    ("bad --input-shape", ["--input-shape", "1,3,0,5"], "dynamic.onnx", ["--input-shape"]),
    ("external data missing", [], "external.onnx", ["W0", "external.onnx.data"]),
    ("C's > channels (--layer)", ["--layer", "Conv_0=64/16"], "ok.onnx", ["64", "3 input channels"]),
    ("K > 256", ["--conv", "8/300"], "ok.onnx", ["K", "300"]),
    ("K < 2", ["--fc", "4/1"], "ok.onnx", ["K", "got 1"]),
    ("C's = 0", ["--conv", "0/16"], "ok.onnx", ["C's", "0"]),
    ("C/K unparsable", ["--last-fc", "abc"], "ok.onnx", ["--last-fc", "abc"]),
    ("no calibration for EC", ["__ec__"], "ok.onnx", ["--calib"]),
    ("calibration folder without images", ["--calib", "noimages"], "ok.onnx", ["no", "images", "noimages"]),
    ("calibration images corrupt", ["--calib", "corrupt"], "ok.onnx", ["no usable calibration images"]),
    ("calibration path missing", ["--calib", "nothere"], "ok.onnx", ["not found", "nothere"]),
    ("calibration array wrong shape", ["--calib", "calib_shape.npy"], "ok.onnx", ["shape", "(5, 9)"]),
    ("calibration array NaN", ["--calib", "calib_nan.npy"], "ok.onnx", ["NaN"]),
    ("calib count 0", ["--calib", "calib.npy", "--calib-count", "0"], "ok.onnx", ["--calib-count"]),
    ("initializer shorter than its dims", [], "lying_initializer.onnx", ["initializer 'W'"]),
    ("40-gigapixel input", [], "huge_input.onnx", ["too large"]),
    ("cyclic graph", [], "cycle.onnx", ["unknown input tensor"]),
    ("undefined tensor", [], "undefined_tensor.onnx", ["ghost"]),
    ("weights vs channels", [], "channel_mismatch.onnx", ["(4, 5, 3, 3)", "3 input channels"]),
    ("int64 input", [], "int64_input.onnx", ["INT64"]),
    ("output folder missing", ["-o", "{out}/nodir/a.qcnn"], "ok.onnx", ["nodir", "does not exist"]),
    ("output folder unwritable", ["-o", "/proc/a.qcnn"], "ok.onnx", ["/proc/a.qcnn"]),
    ("output is a directory", ["-o", "{out}"], "ok.onnx", ["directory"]),
    ("output under a file", ["-o", "{model}/a.qcnn"], "ok.onnx", ["does not exist"]),
    ("json folder missing", ["--json", "{out}/x/r.json"], "ok.onnx", ["r.json"]),
    ("labels missing", ["--labels", "nolabels.txt"], "ok.onnx", ["labels", "nolabels.txt"]),
    ("mean of wrong length", ["--mean", "1,2"], "ok.onnx", ["--mean"]),
    ("std zero", ["--mean", "0,0,0", "--std", "0,1,1"], "ok.onnx", ["--std"]),
]


@pytest.mark.parametrize("case, extra, model, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(inputs, tmp_path, capsys, case, extra, model, words):
    out = tmp_path / "out"
    out.mkdir()
    before_inputs = sorted(os.listdir(inputs))
    argv = [inputs / model]
    ec = "__ec__" in extra
    extra = [e for e in extra if e != "__ec__"]
    if "-o" not in extra:
        argv += ["-o", out / "model.qcnn"]
    if not ec and "--calib" not in extra:
        argv.append("--no-ec")
    for a in extra:
        a = a.format(out=out, model=inputs / "ok.onnx")
        argv.append(inputs / a if a in os.listdir(inputs) or a in ("nothere", "nolabels.txt") else a)
    rc, lines = _run(argv, capsys)
    assert rc == 2, lines
    errors = [line for line in lines if line.startswith("qcnn-convert: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines  # notes/warnings may precede it
    for w in words:
        assert w in errors[0], (w, errors[0])
    assert os.listdir(out) == []  # no .qcnn, no temp file, no report
    assert sorted(os.listdir(inputs)) == before_inputs


def test_global_cs_larger_than_channels_keeps_that_layer_dense(inputs, tmp_path, capsys):
    """A global --conv C's wider than a layer is not an error: that layer stays dense (reported)."""
    out = tmp_path / "m.qcnn"
    rc, lines = _run([inputs / "ok.onnx", "-o", out, "--no-ec", "--conv", "64/16", "-q"], capsys)
    assert rc == 0, lines
    model = reader.read_model(out)
    assert not model.operators[0].quantized


def test_absurd_resize_is_refused(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    rc, lines = _run([inputs / "ok.onnx", "-o", out / "m.qcnn", "--no-ec", "--size", "100000"], capsys)
    assert rc == 2 and os.listdir(out) == [], lines


def test_sigint_during_conversion_leaves_no_file(tmp_path):
    """Ctrl-C in the middle of error correction: exit 130, no .qcnn and no temp file."""
    # Big enough that EC takes seconds even on a fast core (the signal must land mid-conversion).
    src = conv_net(tmp_path / "med.onnx", cin=32, hw=32, widths=(64, 128, 128))
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((64, 32, 32, 32)).astype(np.float32))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-u", "-m", "qcnn.converter.cli", src, "-o", str(out / "med.qcnn"),
                             "--calib", str(tmp_path / "calib.npy"), "--calib-count", "64", "--plan", "uniform"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # A shell's background job starts with SIGINT ignored, and Python then
                            # keeps it ignored; the child must see Ctrl-C as a terminal user would.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    try:
        for line in proc.stderr:  # wait until the quantization of the first layer has started
            seen.append(line)
            if "Conv_0" in line:
                break
        time.sleep(0.1)
        assert proc.poll() is None, "conversion finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, seen + [rest]
    assert "interrupted" in rest
    assert os.listdir(out) == []


def test_nan_weights_are_refused(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    rc, lines = _run([inputs / "nan_weights.onnx", "-o", out / "m.qcnn", "--no-ec", "-q"], capsys)
    assert rc == 2 and os.listdir(out) == [], lines
