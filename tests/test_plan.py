"""converter/plan.py: automatic per-layer (C's, K) / dense plans (`qcnn-convert --plan`)."""
import itertools
import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcnn.converter import ConversionError, convert
from qcnn.converter import plan as qplan
from qcnn.converter import quantize
from qcnn.converter.cli import main as cli_main
from qcnn.converter.onnx_import import import_onnx
from qcnn.schema.reader import open_qcnn


def small_onnx(seed=0) -> onnx.ModelProto:
    """conv3x3 8->32 (relu) -> conv1x1 32->32 (relu) -> conv3x3 32->16 (relu) -> GAP -> flatten -> fc 16->10."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(name, x, cin, cout, k):
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, name + "_w"), numpy_helper.from_array(b, name + "_b")])
        nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], name=name,
                                      kernel_shape=[k, k], pads=[k // 2] * 4))
        nodes.append(helper.make_node("Relu", [name], [name + "_r"], name=name + "_relu"))
        return name + "_r"

    h = conv("c1", "x", 8, 32, 3)
    h = conv("c2", h, 32, 32, 1)
    h = conv("c3", h, 32, 16, 3)
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["g"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"], name="flat"))
    inits.append(numpy_helper.from_array(rng.standard_normal((10, 16)).astype(np.float32) * 0.3, "fc_w"))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def scored():
    model = import_onnx(small_onnx())
    x = np.random.default_rng(1).standard_normal((8, 8, 16, 16)).astype(np.float32)
    return model, x, qplan.score(model, x, repeats=3, kmeans_iters=8)


def test_candidates_cover_dense_and_several_settings(scored):
    _, _, layers = scored
    assert [lo.name for lo in layers] == ["c1", "c2", "c3", "fc"]
    for lo in layers:
        assert lo.candidates[0].dense and lo.candidates[0].error == 0
        assert len(lo.candidates) >= 4
        assert all(np.isfinite(c.ms) and c.ms > 0 for c in lo.candidates)
        quant = [c for c in lo.candidates if not c.dense]
        assert all(0 <= c.error < 2 for c in quant)
    # more codewords never fit worse with the same C's (k-means error, up to k-means noise)
    c3 = {c.label: c.error for c in layers[2].candidates}
    assert c3["4/128"] <= c3["4/16"] + 1e-9


def test_output_probe_recomputes_only_downstream_and_matches_a_full_run():
    import copy

    from qcnn.converter.forward import run_model

    model = import_onnx(small_onnx())
    x = np.random.default_rng(4).standard_normal((5, 8, 16, 16)).astype(np.float32)
    probe = qplan.OutputProbe(model, x)
    y = run_model(model, x)[probe.target].astype(np.float64)
    for op in [o for o in model.operators if hasattr(o, "weights") and o.weights is not None]:
        assert probe.error(op, op.weights) == 0.0
        w = op.weights + np.float32(0.05) * np.random.default_rng(1).standard_normal(op.weights.shape).astype(np.float32)
        changed = copy.deepcopy(model)
        next(o for o in changed.operators if o.name == op.name).weights = w
        want = float(((run_model(changed, x)[probe.target] - y) ** 2).sum() / (y ** 2).sum())
        assert probe.error(op, w) == pytest.approx(want, rel=1e-6) and want > 0


def test_output_error_scoring():
    model = import_onnx(small_onnx())
    x = np.random.default_rng(1).standard_normal((8, 8, 16, 16)).astype(np.float32)
    layers = qplan.score(model, x, time_kernels=False, kmeans_iters=8, error="output")
    for lo in layers:
        quant = [c for c in lo.candidates if not c.dense]
        assert all(np.isfinite(c.error) and c.error >= 0 for c in quant)  # 0: K >= the sub-vectors
    by_name = {lo.name: {c.label: c.error for c in lo.candidates} for lo in layers}
    assert by_name["c1"]["4/16"] > by_name["c1"]["4/128"] > 0 and by_name["c3"]["4/16"] > by_name["c3"]["4/128"] > 0
    assert max(by_name["fc"].values()) == 0  # 10 output columns: K >= 16 codewords reproduce them
    with pytest.raises(ConversionError, match="output or response"):
        qplan.score(model, x, time_kernels=False, error="logits")


@pytest.mark.parametrize("cost", ["flops", "time"])
def test_plan_meets_target_on_its_cost_model(scored, cost):
    model, x, layers = scored
    for speed in (1.2, 1.5, 2.0):
        try:
            p = qplan.make_plan(model, x, qplan.Target("speed", speed, cost), scored=layers)
        except ConversionError:
            continue  # out of reach for this small net: checked separately
        t = p.totals()
        assert t["speedup_flops" if cost == "flops" else "speedup_time"] >= speed * (1 - 1e-9)


def test_looser_target_never_has_higher_error(scored):
    model, x, layers = scored
    errs = []
    for speed in (1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0):
        try:
            errs.append(qplan.make_plan(model, x, qplan.Target("speed", speed, "flops"), scored=layers).totals()["error"])
        except ConversionError:
            break
    assert len(errs) >= 3
    assert errs[0] == 0  # speed=1: everything may stay dense
    assert all(a <= b + 1e-12 for a, b in zip(errs, errs[1:])), errs
    sizes = []
    for comp in (1.0, 1.5, 2.0, 3.0):
        try:
            sizes.append(qplan.make_plan(model, x, "size=%g" % comp, scored=layers).totals())
        except ConversionError:
            break
    assert all(s["compression"] >= c for s, c in zip(sizes, (1.0, 1.5, 2.0, 3.0)))
    assert all(a["error"] <= b["error"] + 1e-12 for a, b in zip(sizes, sizes[1:]))


def test_select_is_optimal_on_a_brute_forced_instance():
    rng = np.random.default_rng(5)
    layers = []
    for i in range(4):
        cands = [qplan.Candidate(0, 0, 1000, 0, 0.0)]
        for j in range(4):
            cands.append(qplan.Candidate(4, 16 * (j + 1), int(rng.integers(100, 1000)), 0, float(rng.random())))
        layers.append(qplan.LayerOptions(f"l{i}", "conv", cands))
    for speed in (1.3, 1.7, 2.5):
        target = qplan.Target("speed", speed, "flops")
        choice = qplan.select(layers, target)
        budget = 4000 / speed
        best = min(sum(lo.candidates[j].error for lo, j in zip(layers, ch))
                   for ch in itertools.product(range(5), repeat=4)
                   if sum(lo.candidates[j].flops for lo, j in zip(layers, ch)) <= budget * (1 - 4 / 4000))
        got = sum(lo.candidates[j].error for lo, j in zip(layers, choice))
        assert sum(lo.candidates[j].flops for lo, j in zip(layers, choice)) <= budget
        assert got <= best + 1e-12  # optimal up to the 1/4000 cost grid


def test_out_of_reach_and_bad_targets(scored):
    model, x, layers = scored
    with pytest.raises(ConversionError, match="out of reach"):
        qplan.make_plan(model, x, "speed=1000", scored=layers)
    for bad in ("fast", "speed=0.5", "speed=x", "speed=2,ms=3", "size=2,cost=time", "speed=2,cost=watts", "ms=-1",
                "speed=2,size=0.5", "cost=time"):
        with pytest.raises(ConversionError):
            qplan.parse_target(bad)
    assert qplan.parse_target("speed=2").cost == "time"
    assert qplan.parse_target("speed=2,cost=flops") == qplan.Target("speed", 2.0, "flops")
    assert qplan.parse_target("speed=1,size=1.5") == qplan.Target("speed", 1.0, "time", 1.5)
    assert qplan.parse_target("size=2,ms=0.5") == qplan.Target("ms", 0.5, "time", 2.0)
    assert qplan.parse_target("speed=0.8,size=2") == qplan.Target("speed", 0.8, "time", 2.0)  # slower, smaller
    assert str(qplan.parse_target("size=2,speed=1.25")) == "speed=1.25,size=2"


def _random_layers(seed, n=4, ncand=4):
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n):
        cands = [qplan.Candidate(0, 0, 1000, 4000, ms=1.0)]
        for j in range(ncand):
            cands.append(qplan.Candidate(4, 16 * (j + 1), 500, int(rng.integers(200, 2000)),
                                         ms=float(rng.uniform(0.3, 1.3)), error=float(rng.uniform(0, 0.02))))
        layers.append(qplan.LayerOptions(f"l{i}", "conv", cands))
    return layers


def test_error_budget_plan_is_the_fastest_within_the_budget():
    """error=E: least time with summed error <= E, tables only where they save >= 3% of the dense time."""
    assert qplan.parse_target("auto") == qplan.Target("error", qplan.AUTO_ERROR, "time")
    assert qplan.parse_target("error=0.02,cost=flops") == qplan.Target("error", 0.02, "flops")
    for bad in ("error=0.01,size=2", "error=-1", "error=nan", "error=0", "speed=2,error=0.1"):
        with pytest.raises(ConversionError):
            qplan.parse_target(bad)
    for seed in range(4):
        layers = _random_layers(seed)
        times = []
        for E in (0.0, 0.005, 0.01, 0.02, 0.04, 0.1):
            choice = qplan.select(layers, qplan.Target("error", E, "time")) if E else [0] * 4
            pick = [lo.candidates[j] for lo, j in zip(layers, choice)]
            assert sum(c.error for c in pick) <= E + 1e-12
            assert all(c.dense or c.ms <= 0.97 * lo.candidates[0].ms for c, lo in zip(pick, layers))
            fits = [ch for ch in itertools.product(range(5), repeat=4)  # a margin of one grid cell per layer
                    if sum(lo.candidates[j].error for lo, j in zip(layers, ch)) <= max(E - 4 * qplan.ERROR_GRID, 0)
                    and all(j == 0 or lo.candidates[j].ms <= 0.97 for lo, j in zip(layers, ch))]
            best = min(sum(lo.candidates[j].ms for lo, j in zip(layers, ch)) for ch in fits)
            assert sum(c.ms for c in pick) <= best + 1e-6
            times.append(sum(c.ms for c in pick))
        assert all(a >= b - 1e-12 for a, b in zip(times, times[1:]))  # a looser budget is never slower
        assert times[-1] < times[0]  # the budget buys speed on these layers


def test_error_plans_score_only_candidates_that_save_time():
    """An error=E plan never takes a table that saves under 3% of the dense time, so the auto plan
    does not measure those candidates' errors (k-means and output probes are most of its cost)."""
    model = import_onnx(small_onnx())
    x = np.random.default_rng(1).standard_normal((8, 8, 16, 16)).astype(np.float32)
    layers = qplan.score(model, x, repeats=3, kmeans_iters=4, min_saving=qplan.ERROR_PLAN_MIN_SAVING)
    for lo in layers:
        assert lo.candidates[0].dense
        assert all(c.ms <= (1 - qplan.ERROR_PLAN_MIN_SAVING) * lo.candidates[0].ms for c in lo.candidates[1:])


def test_an_error_plan_that_keeps_everything_dense_says_why():
    layers = _random_layers(3)
    for lo in layers:
        for c in lo.candidates[1:]:
            c.error = 0.5 + c.ncode / 1000
    plan = qplan.Plan(qplan.Target("error", 0.01, "time"), layers)
    for lo, j in zip(layers, qplan.select(layers, plan.target)):
        lo.chosen = j
    assert not any(lo.chosen for lo in layers)
    assert "l0 as 4/16, 0.516" in plan.note() and "--plan uniform" in plan.note()
    layers[1].chosen = 1
    assert plan.note() is None


def test_plans_keep_the_skipped_layers_dense(scored):
    model, x, layers = scored
    checked = 0
    for target in ("speed=1.3,cost=flops", "size=1.2", "error=0.5", "speed=1,size=1.2", "size=1.5"):
        try:
            free = qplan.make_plan(model, x, target, scored=layers)
        except ConversionError as e:  # timed targets depend on this CPU's kernel times
            assert "out of reach" in str(e)
            continue
        quantized = [lo.name for lo in free.layers if lo.chosen]
        if not quantized:
            continue
        try:
            pinned = qplan.make_plan(model, x, target, scored=layers, keep_dense=quantized[:1])
        except ConversionError as e:  # keeping that layer dense can put the target out of reach
            assert "out of reach" in str(e)
            continue
        assert {lo.name: lo.chosen for lo in pinned.layers}[quantized[0]] == 0
        assert pinned.overrides()[1].count(quantized[0]) == 1
        checked += 1
    assert checked >= 2


def test_cli_plans_by_default_and_fixed_settings_switch_it_off(tmp_path, capsys):
    """Without C's/K settings qcnn-convert plans (auto = error=0.01); --conv etc. mean fixed settings."""
    src = tmp_path / "small.onnx"
    onnx.save(small_onnx(), src)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(2).standard_normal((16, 8, 16, 16)).astype(np.float32))

    def report(path):
        f = open_qcnn(path)
        rep = json.loads(f.model.metadata["qcnn.report"])
        f.close()
        return rep

    out = tmp_path / "auto.qcnn"
    assert cli_main([str(src), "-o", str(out), "--calib", str(calib), "--skip", "c2", "-q"]) == 0
    rep = report(out)
    assert rep["settings"]["plan"] == "error=0.01" and rep["plan"]["target"]["what"] == "error"
    assert rep["plan"]["totals"]["error"] <= qplan.AUTO_ERROR
    rows = {r["name"]: r for r in rep["layers"]}
    assert not rows["c2"]["quantized"] and rows["c2"]["reason"] == "--skip"
    assert rows["c2"]["bytes_dense"] > 0  # a dense layer's cost is still counted
    for lay in rep["plan"]["layers"]:
        assert rows[lay["name"]]["quantized"] == (lay["choice"] != "dense")
    fixed = tmp_path / "fixed.qcnn"
    assert cli_main([str(src), "-o", str(fixed), "--calib", str(calib), "--conv", "8/16", "-q"]) == 0
    rep = report(fixed)
    assert rep["settings"]["plan"] == "uniform" and "plan" not in rep
    assert {r["name"]: r.get("subvec") for r in rep["layers"]}["c2"] == 8
    # no calibration data: nothing to measure errors on, so the fixed (paper) settings, said so
    assert cli_main([str(src), "-o", str(tmp_path / "nocal.qcnn"), "--no-ec"]) == 0
    assert "no automatic plan" in capsys.readouterr().err
    assert report(tmp_path / "nocal.qcnn")["settings"]["plan"] == "uniform"
    for bad, words in ((["--conv", "8/16", "--plan", "auto"], "--conv"), (["--layer", "c2=8/16", "--plan", "size=2"], "--layer"),
                       (["--dense-where-faster", "--plan", "error=0.1"], "--dense-where-faster")):
        assert cli_main([str(src), "-o", str(tmp_path / "bad.qcnn"), "--calib", str(calib)] + bad) == 2
        err = capsys.readouterr().err
        assert words in err and "give one" in err and not (tmp_path / "bad.qcnn").exists()


def test_two_targets_are_met_together_and_optimally():
    rng = np.random.default_rng(11)
    layers = []
    for i in range(4):
        cands = [qplan.Candidate(0, 0, 1000, 4000, 0.0)]
        for j in range(4):
            cands.append(qplan.Candidate(4, 16 * (j + 1), int(rng.integers(300, 1300)), int(rng.integers(200, 2000)),
                                         float(rng.random())))
        layers.append(qplan.LayerOptions(f"l{i}", "conv", cands))
    met = 0
    for speed, size in ((1.0, 1.5), (1.2, 2.0), (1.5, 1.2), (1.3, 3.0), (1.0, 2.5), (1.6, 1.6)):
        target = qplan.Target("speed", speed, "flops", size)
        tbud, bbud = 4000 / speed, 16000 / size
        fits = [ch for ch in itertools.product(range(5), repeat=4)  # with a margin of one grid cell per layer
                if sum(lo.candidates[j].flops for lo, j in zip(layers, ch)) <= tbud * (1 - 4 / 1000)
                and sum(lo.candidates[j].nbytes for lo, j in zip(layers, ch)) <= bbud * (1 - 4 / 400)]
        try:
            choice = qplan.select(layers, target)
        except ConversionError as e:
            assert not fits and "out of reach" in str(e)
            continue
        met += 1
        pick = [lo.candidates[j] for lo, j in zip(layers, choice)]
        assert sum(c.flops for c in pick) <= tbud and sum(c.nbytes for c in pick) <= bbud
        if fits:  # optimal up to the grid
            best = min(sum(lo.candidates[j].error for lo, j in zip(layers, ch)) for ch in fits)
            assert sum(c.error for c in pick) <= best + 1e-12
    assert met >= 2


def test_convert_stores_plan_and_cli_prints_it(tmp_path, capsys):
    src = tmp_path / "small.onnx"
    onnx.save(small_onnx(), src)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(2).standard_normal((16, 8, 16, 16)).astype(np.float32))
    out = tmp_path / "small.qcnn"
    assert cli_main([str(src), "-o", str(out), "--calib", str(calib), "--plan", "speed=1.5,cost=flops"]) == 0
    printed = capsys.readouterr()
    assert "plan speed=1.5" in printed.out + printed.err
    f = open_qcnn(out)
    report = json.loads(f.model.metadata["qcnn.report"])
    f.close()
    plan = report["plan"]
    assert plan["target"] == {"what": "speed", "value": 1.5, "cost": "flops"}
    assert plan["totals"]["speedup_flops"] >= 1.5
    # the file's layers follow the plan: dense where it says dense, its C's/K elsewhere
    by_name = {r["name"]: r for r in report["layers"]}
    for lay in plan["layers"]:
        r = by_name[lay["name"]]
        assert r["quantized"] == (lay["choice"] != "dense")
        if r["quantized"]:
            assert f"{r['subvec']}/{r['ncode']}" == lay["choice"]
    # a time and a size target together
    out2 = tmp_path / "small2.qcnn"
    assert cli_main([str(src), "-o", str(out2), "--calib", str(calib), "--plan", "speed=1.2,size=1.5,cost=flops"]) == 0
    printed = capsys.readouterr()
    assert "plan speed=1.2,size=1.5" in printed.out + printed.err
    f = open_qcnn(out2)
    plan = json.loads(f.model.metadata["qcnn.report"])["plan"]
    f.close()
    assert plan["target"] == {"what": "speed", "value": 1.2, "cost": "flops", "size": 1.5}
    assert plan["totals"]["speedup_flops"] >= 1.2 and plan["totals"]["compression"] >= 1.5
    assert cli_main([str(src), "-o", str(tmp_path / "x.qcnn"), "--calib", str(calib), "--plan", "speed=banana"]) == 2
    assert "--plan" in capsys.readouterr().err


def test_planning_kmeans_fits_a_subset_and_labels_every_point():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3, 3000, 4))
    full_c, full_l = quantize.kmeans_batch(X, 16, np.random.default_rng(1), iters=15)
    sub_c, sub_l = quantize.kmeans_batch(X, 16, np.random.default_rng(1), iters=15, fit_points=16 * 16)
    assert sub_l.shape == (3, 3000)
    d = ((X[:, :, None, :] - sub_c[:, None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(sub_l, d.argmin(-1))  # every point labelled with its nearest centre

    def err(c, lab):
        return float(((X - np.take_along_axis(c, lab[..., None], axis=1)) ** 2).sum())

    assert err(full_c, full_l) <= err(sub_c, sub_l) < 1.15 * err(full_c, full_l)


def test_dense_where_faster_keeps_dense_the_layers_timed_faster_dense(tmp_path):
    """--dense-where-faster: layers whose dense kernel is at least as fast stay dense, explicit
    --layer settings are left alone; the real timer runs on every layer it asks about."""
    from qcnn.converter.convert import plan_layers

    model = import_onnx(small_onnx())
    fake = {"c1": (1.0, 2.0), "c2": (3.0, 1.0), "c3": (0.5, 0.5), "fc": (0.2, 0.1)}  # name: (tables, dense) ms
    ops = {op.name: op for op in model.operators}

    def timer(op, in_shape, subvec, ncode, lut="int8", x_in=None, quantized=None):
        assert ops[op.name] is op and lut == "int8" and x_in is None and quantized is None
        return fake[op.name][0 if subvec else 1]

    plans = plan_layers(model, conv=(4, 16), fc=(4, 16), last_fc=(4, 16), overrides={"fc": (4, 16)})
    assert qplan.keep_dense_where_faster(model, plans, timer=timer) == ["c2", "c3"]  # c3: a tie goes dense
    by = {p.name: p for p in plans}
    assert by["c1"].quantize and not by["c2"].quantize and not by["c3"].quantize
    assert by["fc"].quantize  # explicit: not timed
    assert by["c2"].reason == "dense is faster on this CPU (1.000 vs 3.000 ms as 4/16)"

    # with calibration images, each layer is timed on the first image's activations
    x = np.random.default_rng(3).standard_normal((2,) + tuple(model.input_shape)).astype(np.float32)
    acts = qplan.layer_inputs(model, x[:1])
    seen = {}

    def timer_x(op, in_shape, subvec, ncode, lut="int8", x_in=None, quantized=None):
        assert x_in is not None and x_in.shape == tuple(in_shape)
        seen[op.name] = x_in
        if subvec:  # the tables are timed with k-means codebooks of the layer's own weights
            assert (quantized.subvec, quantized.ncode) == (subvec, ncode)
            err = np.sum((quantize.reconstruct(replace(op, weights=quantized)) - op.weights) ** 2)
            assert err < 0.5 * np.sum(op.weights ** 2)
        return fake[op.name][0 if subvec else 1]

    plans = plan_layers(model, conv=(4, 16), fc=(4, 16), last_fc=(4, 16))
    assert qplan.keep_dense_where_faster(model, plans, timer=timer_x, x=x) == ["c2", "c3"]
    for name, xi in seen.items():
        np.testing.assert_array_equal(xi, acts[ops[name].inputs[0]][0])
    assert set(seen) == {"c1", "c2", "c3"}  # fc is not quantized at 4/16 (neither faster nor smaller)
    # the real timer takes such an input (channels first, as the converter holds activations)
    op = ops["c1"]
    assert qplan.kernel_ms(op, acts[op.inputs[0]].shape[1:], 4, 16, repeats=1, x_in=acts[op.inputs[0]][0]) > 0
    geom = quantize.geometry(op, 4, 16)
    cb, assign = quantize.kmeans_layer(quantize.weight_blocks(op.weights, geom), geom, np.random.default_rng(0), iters=3)
    assert qplan.kernel_ms(op, acts[op.inputs[0]].shape[1:], 4, 16, repeats=1, x_in=acts[op.inputs[0]][0],
                           quantized=quantize.to_quantized_weights(cb, assign, geom)) > 0
    with pytest.raises(ValueError, match="c1: timing input has"):
        qplan.kernel_ms(op, acts[op.inputs[0]].shape[1:], 4, 16, repeats=1, x_in=np.zeros(5, np.float32))

    # through convert(), with the real kernel timer: every choice is recorded in the report
    kw = dict(conv=(4, 16), fc=(4, 16), last_fc=(4, 16), ec=False)
    before = {r["name"]: r for r in convert(small_onnx(), None, **kw).report["layers"]}
    after = convert(small_onnx(), None, dense_where_faster=True, **kw).report["layers"]
    for r in after:
        if r["quantized"]:
            assert before[r["name"]]["quantized"]
        elif before[r["name"]]["quantized"]:
            assert r["reason"].startswith("dense is faster on this CPU")
    with pytest.raises(ConversionError, match="dense-where-faster"):
        convert(small_onnx(), None, plan="speed=1.5", dense_where_faster=True)
