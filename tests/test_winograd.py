"""The int8 dense conv run as Winograd F(4x4, 3x3) (ops_wino*.c, DenseConvKernel(winograd=...)).

Checked against a numpy re-statement of its arithmetic (the same uint8 input as the direct int8
kernel, the transformed weights rounded per tile position and output channel, exact integer
sums per 64 input channels: the same floats bit for bit), the AVX-512 and AVX2 kernels against
the portable one (identical), against the fp32 reference (the error its roundings add, no larger
than the direct int8 kernel's), and on inputs built to make the int32 sums as large as they
can get (no overflow).
"""
import numpy as np
import pytest

from qcnn.runtime import _core

from int8_reference import quantize_input, run

FAST = _core.int8_conv_fast_available()
AVX2 = "avx2" in _core.isa_available()
# isa="avx2" runs the AVX2 int8 kernels (ops_wino_avx2.c) even on an AVX-512 CPU
ISAS = ["generic"] + (["avx2"] if AVX2 else []) + (["avx512"] if FAST else [])

f32 = np.float32
BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.int64)
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
CHUNK = 64  # input channels summed exactly in int32


def transformed_weights(weight):
    """U = G w G^T rounded as qcnn_wino_pack: int [36][cin][cout] and float32 scales [36][cout]."""
    cout, cin = weight.shape[:2]
    k = weight.astype(np.float64)
    # G k, then (G k) G^T, each a sum of three products in the C code's order
    gk = G[None, None, :, 0, None] * k[:, :, None, 0, :] + G[None, None, :, 1, None] * k[:, :, None, 1, :] \
        + G[None, None, :, 2, None] * k[:, :, None, 2, :]  # [cout][cin][6][3]
    u = gk[..., :, None, 0] * G[None, None, None, :, 0] + gk[..., :, None, 1] * G[None, None, None, :, 1] \
        + gk[..., :, None, 2] * G[None, None, None, :, 2]  # [cout][cin][6][6]
    u = u.reshape(cout, cin, 36).transpose(2, 1, 0)  # [36][cin][cout]
    rows = np.array([10, 10, 10, 6, 6, 10], np.float64)
    vmax = 255.0 * np.outer(rows, rows).reshape(36)
    lim = np.minimum(np.floor(2147483647.0 / (vmax * min(cin, CHUNK))), 32767)
    amax = np.abs(u).max(axis=1)  # [36][cout]
    s = amax / lim[:, None]
    safe = np.where(s > 0, s, 1.0)
    r = u / safe[:, None, :]
    q = np.where(s[:, None, :] > 0, np.sign(r) * np.floor(np.abs(r) + 0.5), 0)  # lround: halves away from 0
    q = np.clip(q, -lim[:, None, None], lim[:, None, None]).astype(np.int64)
    return q, s.astype(f32)


def at(m):
    """A^T m along axis 0 (6 -> 4) in float32, in the kernels' order."""
    s12, d12, s34, d34 = m[1] + m[2], m[1] - m[2], m[3] + m[4], m[3] - m[4]
    return np.stack([(m[0] + s12) + s34, d12 + f32(2) * d34, s12 + f32(4) * s34, (d12 + f32(8) * d34) + m[5]])


def winograd_numpy(x, weight, bias, pads, relu):
    """What the Winograd kernels compute, in numpy: x [h][w][cin] float32 -> [oh][ow][cout]."""
    q, sx, zp = quantize_input(x)
    u, us = transformed_weights(weight)
    cout, cin = weight.shape[:2]
    t, l, b, r = pads
    oh, ow = q.shape[0] + t + b - 2, q.shape[1] + l + r - 2
    th, tw = -(-oh // 4), -(-ow // 4)
    # padded with zp, and on to whole tiles (the kernels' edge windows read zp there too)
    qp = np.full((4 * th + 2, 4 * tw + 2, cin), zp, np.int64)
    qp[t:t + q.shape[0], l:l + q.shape[1]] = q
    qp = qp[:4 * th + 2, :4 * tw + 2] - zp
    win = np.lib.stride_tricks.sliding_window_view(qp, (6, 6), axis=(0, 1))[::4, ::4]  # [th][tw][cin][6][6]
    v = np.einsum("ai,yxcij,bj->yxabc", BT, win, BT).reshape(th, tw, 36, cin)
    assert np.abs(v).max(initial=0) <= 25500
    mul = (sx * us).astype(f32)  # [36][cout]
    m = None
    for c0 in range(0, cin, CHUNK):
        acc = np.einsum("yxpc,pco->yxpo", v[..., c0:c0 + CHUNK], u[:, c0:c0 + CHUNK])
        assert np.abs(acc).max(initial=0) < 2 ** 31
        part = acc.astype(f32) * mul
        m = part if m is None else m + part
    m = m.reshape(th, tw, 6, 6, cout).transpose(2, 3, 0, 1, 4)  # [6][6][th][tw][cout]
    y = at(at(m).transpose(1, 0, 2, 3, 4))  # columns, then rows: [4 cols][4 rows][th][tw][cout]
    y = y.transpose(2, 1, 3, 0, 4).reshape(4 * th, 4 * tw, cout)[:oh, :ow]
    y = y + (np.zeros(cout, f32) if bias is None else bias)
    return np.maximum(y, f32(0)) if relu else y


def random_case(rng):
    cin, cout = 32 * int(rng.integers(1, 5)), 64 * int(rng.integers(1, 3))
    pads = tuple(int(v) for v in rng.integers(0, 3, size=4))
    h = int(rng.integers(max(1, 3 - pads[0] - pads[2]), 19))
    w = int(rng.integers(max(1, 3 - pads[1] - pads[3]), 30))
    weight = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32) if rng.random() < 0.7 else None
    # inputs of either sign, only positive (ReLU output) or only negative: zp 0..255
    x = rng.standard_normal((h, w, cin)).astype(np.float32) + f32(rng.choice([0.0, 3.0, -3.0]))
    return x, weight, bias, dict(pads=pads, relu=bool(rng.random() < 0.5))


def kernel(weight, bias, isa, **args):
    kern = _core.DenseConvKernel(weight, bias, isa=isa, precision="int8", winograd=True, **args)
    assert kern.winograd
    return kern


@pytest.mark.parametrize("isa", ISAS)
def test_winograd_is_its_numpy_statement(isa):
    rng = np.random.default_rng(1)
    for _ in range(25):
        x, weight, bias, args = random_case(rng)
        np.testing.assert_array_equal(run(kernel(weight, bias, isa, **args), x),
                                      winograd_numpy(x, weight, bias, **args), err_msg=str((x.shape, weight.shape, args)))


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "generic"] or
                         [pytest.param("avx2", marks=pytest.mark.skip(reason="CPU lacks AVX2"))])
def test_simd_winograd_equals_portable_on_vgg_like_layers(isa):
    rng = np.random.default_rng(2)
    # 32..256 input channels, rows of up to 20 tiles (blocks of tiles in registers with every
    # remainder; at 256 channels two superblocks of 18 and 2), partial tiles at the edges
    for xs, ws in (((37, 58, 64), (64, 64)), ((23, 21, 128), (128, 128)), ((15, 13, 256), (64, 256)),
                   ((7, 78, 256), (64, 256)), ((9, 62, 32), (128, 32)), ((6, 27, 96), (64, 96))):
        x = np.maximum(rng.standard_normal(xs), 0).astype(np.float32)
        weight = (rng.standard_normal(ws + (3, 3)) * 0.05).astype(np.float32)
        bias = rng.standard_normal(ws[0]).astype(np.float32)
        args = dict(pads=(1, 1, 1, 1), relu=True)
        got = kernel(weight, bias, isa, **args)
        assert got.int8_isa == {"avx2": "avx2", "avx512": "avx512vnni"}[isa]
        np.testing.assert_array_equal(run(got, x), run(kernel(weight, bias, "generic", **args), x),
                                      err_msg=str((xs, ws)))


@pytest.mark.parametrize("isa", ISAS)
def test_winograd_error_against_fp32_is_that_of_the_direct_int8_conv(isa):
    rng = np.random.default_rng(3)
    for _ in range(12):
        x, weight, bias, args = random_case(rng)
        want = run(_core.DenseConvKernel(weight, bias, isa="ref", **args), x)
        direct = run(_core.DenseConvKernel(weight, bias, isa="generic", precision="int8", winograd=False, **args), x)
        got = run(kernel(weight, bias, isa, **args), x)
        err, err_direct = np.linalg.norm(got - want), np.linalg.norm(direct - want)
        assert err <= 0.02 * np.linalg.norm(want) + 1e-6, args
        assert err <= 1.5 * err_direct + 1e-6, (err, err_direct, args)


@pytest.mark.parametrize("isa", ISAS)
def test_winograd_sums_cannot_overflow(isa):
    """Inputs at 0 and 255 in the sign pattern of B^T's extreme rows, weights whose transform is
    largest at the same positions, 64 and 128 channels: the sums reach their bound, and the
    outputs still match float64 arithmetic on the same rounded values."""
    for cin in (64, 128):
        pattern = np.array([1, 0, 0, 1, 1, 0], np.float32)  # row 0 of B^T: +4 ... -5 ... +1
        tile = np.outer(pattern, pattern)
        x = np.tile(tile, (2, 2))[:, :, None].repeat(cin, axis=2) * f32(3.0)  # q in {0, 255}
        weight = np.zeros((64, cin, 3, 3), np.float32)
        weight[:, :, 0, 0] = 1.0  # U[0][0] = w/16 at its limit for every channel
        weight[1::2, :, 1, 1] = -0.5
        got = run(kernel(weight, None, isa), x)
        q, sx, zp = quantize_input(x)
        want = np.zeros(got.shape, np.float64)
        for ky in range(3):
            for kx in range(3):
                want += (q[ky:ky + got.shape[0], kx:kx + got.shape[1]].astype(np.float64) * sx) @ \
                    weight[:, :, ky, kx].T.astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


@pytest.mark.parametrize("isa", ISAS)
def test_winograd_conv_maxpool_fused_equals_conv_then_maxpool(isa):
    """VGG's 2x2 stride-2 pools are taken from each tile in registers (odd rows and a half tile
    of columns at the edges here); other pools, and ceil mode on an odd size, from a band."""
    rng = np.random.default_rng(4)
    for xs, pool, relu, ceil in (((45, 38, 64), ((2, 2), (2, 2), (0, 0, 0, 0)), True, False),
                                 ((32, 32, 64), ((2, 2), (2, 2), (0, 0, 0, 0)), False, False),
                                 ((21, 27, 32), ((2, 2), (2, 2), (0, 0, 0, 0)), True, True),
                                 ((29, 31, 32), ((3, 3), (2, 2), (1, 1, 1, 1)), False, False)):
        x = rng.standard_normal(xs).astype(np.float32)
        weight = rng.standard_normal((128, xs[2], 3, 3)).astype(np.float32)
        conv = kernel(weight, rng.standard_normal(128).astype(np.float32), isa, pads=(1, 1, 1, 1), relu=relu)
        fused = _core.ConvMaxPoolKernel(conv, *pool, ceil_mode=ceil)
        assert fused.winograd
        y = run(fused, x)
        t = run(conv, x)
        want = _core.maxpool(t, np.empty_like(y), *pool[0], *pool[1], *pool[2])  # y selects ceil mode
        np.testing.assert_array_equal(y, want, err_msg=str((xs, pool, ceil)))


@pytest.mark.parametrize("isa", ISAS)
def test_winograd_non_finite_input_runs_in_fp32(isa):
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((64, 32, 3, 3)).astype(np.float32)
    x = rng.standard_normal((9, 10, 32)).astype(np.float32)
    x[3, 4, 5] = np.nan
    got = run(kernel(weight, None, isa, pads=(1, 1, 1, 1)), x)
    want = run(_core.DenseConvKernel(weight, None, isa="ref", pads=(1, 1, 1, 1)), x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not FAST, reason="the default only takes Winograd where the VNNI kernel runs")
def test_winograd_by_default_only_where_it_pays(monkeypatch):
    rng = np.random.default_rng(6)
    small = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    big = (rng.standard_normal((512, 512, 3, 3)) * 0.02).astype(np.float32)
    auto = _core.DenseConvKernel(small, isa="avx512", precision="int8", pads=(1, 1, 1, 1))
    assert auto.winograd and auto.winograd_for(56, 56)
    auto_big = _core.DenseConvKernel(big, isa="avx512", precision="int8", pads=(1, 1, 1, 1))
    # 18.9 MB of transformed weights for 4 tiles per row: the direct kernel runs, same floats
    assert auto_big.winograd and not auto_big.winograd_for(14, 14) and auto_big.winograd_for(224, 224)
    x = rng.standard_normal((14, 14, 512)).astype(np.float32)
    direct = _core.DenseConvKernel(big, isa="avx512", precision="int8", pads=(1, 1, 1, 1), winograd=False)
    assert not direct.winograd
    np.testing.assert_array_equal(run(auto_big, x), run(direct, x))
    assert not auto.winograd_for(31, 33) and auto.winograd_for(32, 32)  # from 32x32 output pixels on
    monkeypatch.setenv("QCNN_WINOGRAD", "0")
    assert not _core.DenseConvKernel(small, isa="avx512", precision="int8").winograd
    # the portable kernel never picks it on its own (it is slower there than the direct one)
    monkeypatch.delenv("QCNN_WINOGRAD")
    assert not _core.DenseConvKernel(small, isa="generic", precision="int8").winograd


@pytest.mark.skipif(not AVX2, reason="CPU lacks AVX2")
def test_winograd_by_default_on_avx2_where_it_pays_against_the_direct_avx2_kernel(monkeypatch):
    """qcnn_wino_pays_avx2: up to 1.5 MB of transformed weights per tile of a row and from 20x20
    output pixels on (more often than against VNNI: ops.h)."""
    rng = np.random.default_rng(7)
    w = lambda cin, cout: (rng.standard_normal((cout, cin, 3, 3)) * 0.05).astype(np.float32)
    auto = _core.DenseConvKernel(w(64, 64), isa="avx2", precision="int8", pads=(1, 1, 1, 1))
    assert auto.int8_isa == "avx2" and auto.winograd
    assert auto.winograd_for(20, 20) and not auto.winograd_for(19, 21) and auto.winograd_for(27, 27)
    # 256 -> 512: 9.4 MB, so from 6 tiles per row on (VGG's conv4_1 at 28x28; the VNNI rule says no)
    wide = _core.DenseConvKernel(w(256, 512), isa="avx2", precision="int8", pads=(1, 1, 1, 1))
    assert wide.winograd_for(28, 28) and wide.winograd_for(24, 24) and not wide.winograd_for(20, 20)
    big = w(512, 512)
    auto_big = _core.DenseConvKernel(big, isa="avx2", precision="int8", pads=(1, 1, 1, 1))
    assert not auto_big.winograd_for(28, 28) and auto_big.winograd_for(56, 56)
    # where it does not pay, the direct AVX2 kernel runs: its floats
    x = rng.standard_normal((14, 14, 512)).astype(np.float32)
    direct = _core.DenseConvKernel(big, isa="avx2", precision="int8", pads=(1, 1, 1, 1), winograd=False)
    assert not direct.winograd
    np.testing.assert_array_equal(run(auto_big, x), run(direct, x))
    # and where it pays, the Winograd kernel's
    x = rng.standard_normal((22, 21, 64)).astype(np.float32)
    forced = _core.DenseConvKernel(w(64, 64), isa="avx2", precision="int8", pads=(1, 1, 1, 1), winograd=True)
    np.testing.assert_array_equal(run(_core.DenseConvKernel(forced.weight, isa="avx2", precision="int8",
                                                            pads=(1, 1, 1, 1)), x), run(forced, x))
    monkeypatch.setenv("QCNN_WINOGRAD", "0")
    assert not _core.DenseConvKernel(w(64, 64), isa="avx2", precision="int8").winograd


def test_winograd_validation():
    w = np.ones((64, 32, 3, 3), np.float32)
    with pytest.raises(ValueError, match="only with precision 'int8'"):
        _core.DenseConvKernel(w, winograd=True)
    for bad, args in ((np.ones((64, 32, 5, 5), np.float32), {}), (w, dict(strides=(2, 2))),
                      (np.ones((64, 16, 3, 3), np.float32), dict(groups=2)),
                      (np.ones((64, 48, 3, 3), np.float32), {}), (np.ones((48, 32, 3, 3), np.float32), {})):
        with pytest.raises(ValueError, match="winograd: needs a 3x3 stride-1"):
            _core.DenseConvKernel(bad, precision="int8", winograd=True, **args)
    # where it does not apply, the default quietly runs the direct kernel
    assert not _core.DenseConvKernel(np.ones((64, 48, 3, 3), np.float32), precision="int8").winograd


@pytest.mark.parametrize("isa", (["auto"] if FAST else []) + (["avx2"] if AVX2 else []) or
                         [pytest.param("auto", marks=pytest.mark.skip(reason="CPU lacks AVX2"))])
def test_model_runs_a_dense_3x3_conv_as_winograd_and_says_so(tmp_path, monkeypatch, isa):
    """Model.layers names the dense convs that run as Winograd (qcnn-bench reports them), the
    outputs stay within the int8 error of fp32, and QCNN_WINOGRAD=0 gives the direct kernel."""
    from qcnn.runtime import Model
    from qcnn.schema import ir, writer

    rng = np.random.default_rng(8)
    ops = [ir.Conv("conv_a", ["x"], ["a"], cin=3, cout=32, kernel=(3, 3), pads=(1, 1, 1, 1), relu=True,
                   weights=rng.standard_normal((32, 3, 3, 3)).astype(np.float32) * 0.3, bias=None),
           ir.Conv("conv_b", ["a"], ["b"], cin=32, cout=64, kernel=(3, 3), pads=(1, 1, 1, 1), relu=True,
                   weights=rng.standard_normal((64, 32, 3, 3)).astype(np.float32) * 0.1,
                   bias=rng.standard_normal(64).astype(np.float32) * 0.1)]
    tensors = [ir.TensorInfo("x", (3, 32, 32)), ir.TensorInfo("a", (32, 32, 32)), ir.TensorInfo("b", (64, 32, 32))]
    writer.write_model(ir.Model("x", (3, 32, 32), tensors, ops, ["b"], producer="qcnn-tests"), tmp_path / "w.qcnn")
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    with Model(tmp_path / "w.qcnn", isa=isa) as m:
        layers = {d["name"]: d for d in m.layers}
        assert layers["conv_b"].get("winograd") and not layers["conv_a"].get("winograd")
        assert isa != "avx2" or layers["conv_b"].get("int8_kernel") == "avx2"
        y = m.run(x)
    with Model(tmp_path / "w.qcnn", lut="float", isa=isa) as m:
        ref = m.run(x)
    assert np.linalg.norm(y - ref) <= 0.02 * np.linalg.norm(ref)
    monkeypatch.setenv("QCNN_WINOGRAD", "0")
    with Model(tmp_path / "w.qcnn", isa=isa) as m:
        assert not any(d.get("winograd") for d in m.layers)
        y_direct = m.run(x)
    assert not np.array_equal(y, y_direct)
    assert np.linalg.norm(y_direct - ref) <= 0.02 * np.linalg.norm(ref)
