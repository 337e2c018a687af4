"""The int8 dense conv (DenseConvKernel(precision="int8"), ops_iconv*.c) and the int8 dense FC built on it.

Checked three ways: against a numpy re-statement of its arithmetic (uint8 input per image, int8
weights per channel, exact integer sums: the same floats bit for bit), each SIMD kernel (AVX-512
VNNI, AVX2) against the portable one (identical), and against the fp32 reference (the error the
two roundings add).
"""
import numpy as np
import pytest

from qcnn.runtime import _core

from int8_reference import quantize_input, run

FAST = _core.int8_conv_fast_available()
AMX = _core.int8_conv_amx_available()
HAVE = _core.isa_available()
# variant -> (DenseConvKernel keyword arguments, the int8 kernel they run here)
VARIANTS = {"generic": (dict(isa="generic"), "generic")}
if "avx2" in HAVE:
    VARIANTS["avx2"] = (dict(isa="avx2"), "avx2")
if "avx512vbmi" in HAVE:
    VARIANTS["avx512"] = (dict(isa="avx512", amx=False), "avx512vnni" if FAST else "avx2")
    if AMX:
        VARIANTS["amx"] = (dict(isa="avx512", amx=True), "amx")
ISAS = list(VARIANTS)
SIMD = [i for i in ISAS if i != "generic"]


def int8_conv_numpy(x, weight, bias, strides, pads, groups, relu):
    """What the int8 kernel computes, in numpy: x [h][w][cin] float32 -> [oh][ow][cout]."""
    f32 = np.float32
    q, sx, zp = quantize_input(x)
    cout, cin_g, kh, kw = weight.shape
    amax = np.abs(weight.reshape(cout, -1)).max(axis=1).astype(f32)
    sw = (amax / f32(127)).astype(f32)
    safe = np.where(sw > 0, sw, f32(1))
    wq = np.where(sw[:, None, None, None] > 0, np.clip(np.rint(weight / safe[:, None, None, None]), -127, 127), 0)
    wq = wq.astype(np.int64)
    t, l, b, r = pads
    qp = np.pad(q, ((t, b), (l, r), (0, 0)), constant_values=zp)
    oh = (qp.shape[0] - kh) // strides[0] + 1
    ow = (qp.shape[1] - kw) // strides[1] + 1
    cout_g = cout // groups
    acc = np.zeros((oh, ow, cout), np.int64)
    for g in range(groups):
        for ky in range(kh):
            for kx in range(kw):
                patch = qp[ky:ky + strides[0] * (oh - 1) + 1:strides[0], kx:kx + strides[1] * (ow - 1) + 1:strides[1],
                           g * cin_g:(g + 1) * cin_g]
                acc[..., g * cout_g:(g + 1) * cout_g] += patch @ wq[g * cout_g:(g + 1) * cout_g, :, ky, kx].T
    mul = (sx * sw).astype(f32)
    bias = np.zeros(cout, f32) if bias is None else bias
    add = (bias - f32(zp) * wq.reshape(cout, -1).sum(axis=1).astype(f32) * mul).astype(f32)
    y = acc.astype(f32) * mul + add
    return np.maximum(y, f32(0)) if relu else y


def random_case(rng):
    groups = int(rng.choice([1, 1, 2, 3]))
    cin, cout = groups * int(rng.integers(1, 12)), groups * int(rng.integers(1, 40))
    kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    pads = tuple(int(v) for v in rng.integers(0, 3, size=4))
    h = int(rng.integers(max(1, kh - pads[0] - pads[2]), 14))
    w = int(rng.integers(max(1, kw - pads[1] - pads[3]), 30))
    weight = rng.standard_normal((cout, cin // groups, kh, kw)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32) if rng.random() < 0.7 else None
    # inputs of either sign, only positive (ReLU output) or only negative: zp 0..255
    x = rng.standard_normal((h, w, cin)).astype(np.float32) + np.float32(rng.choice([0.0, 3.0, -3.0]))
    return x, weight, bias, dict(strides=(sh, sw), pads=pads, groups=groups, relu=bool(rng.random() < 0.5))


@pytest.mark.parametrize("isa", ISAS)
def test_int8_conv_is_its_numpy_statement(isa):
    rng = np.random.default_rng(7)
    for _ in range(40):
        x, weight, bias, args = random_case(rng)
        kern = _core.DenseConvKernel(weight, bias, precision="int8", **VARIANTS[isa][0], **args)
        np.testing.assert_array_equal(run(kern, x), int8_conv_numpy(x, weight, bias, **args), err_msg=str(args))


@pytest.mark.skipif(not SIMD, reason="CPU has neither AVX2 nor AVX-512")
@pytest.mark.parametrize("isa", SIMD)
def test_simd_kernel_equals_portable_kernel_on_alexnet_conv1_and_wide_layers(isa):
    rng = np.random.default_rng(3)
    cases = [((227, 227, 3), (96, 3, 11, 11), dict(strides=(4, 4))),  # AlexNet conv1
             ((13, 15, 256), (136, 256, 3, 3), dict(pads=(1, 1, 1, 1), relu=True)),  # > L2 budget, partial block
             ((9, 21, 64), (50, 32, 1, 1), dict(groups=2)),
             ((6, 37, 5), (17, 5, 3, 7), dict(strides=(2, 3), pads=(0, 2, 1, 0))),
             # AMX: rows not a multiple of 32 pixels, segments not a multiple of 64 bytes, odd
             # channel blocks, groups whose channels end inside a 64-byte chunk, stride 2
             ((14, 14, 512), (72, 512, 3, 3), dict(pads=(1, 1, 1, 1))),
             ((27, 27, 96), (256, 48, 5, 5), dict(groups=2, pads=(2, 2, 2, 2), relu=True)),
             ((13, 13, 512), (1000, 512, 1, 1), dict()),
             ((5, 71, 64), (40, 64, 3, 3), dict(strides=(1, 2), pads=(1, 0, 1, 2)))]
    for xs, ws, args in cases:
        x = rng.standard_normal(xs).astype(np.float32)
        weight, bias = rng.standard_normal(ws).astype(np.float32), rng.standard_normal(ws[0]).astype(np.float32)
        fast = _core.DenseConvKernel(weight, bias, precision="int8", **VARIANTS[isa][0], **args)
        slow = _core.DenseConvKernel(weight, bias, isa="generic", precision="int8", **args)
        assert (fast.int8_isa, slow.int8_isa) == (VARIANTS[isa][1], "generic")
        np.testing.assert_array_equal(run(fast, x), run(slow, x))


@pytest.mark.skipif(not AMX, reason="no AMX here")
def test_amx_is_used_by_default_only_where_it_pays():
    rng = np.random.default_rng(0)
    for shape, kernel in (((64, 3, 3, 3), "avx512vnni"),  # 9 bytes per kernel row of a 64-byte chunk
                          ((64, 64, 3, 3), "amx")):
        kern = _core.DenseConvKernel(rng.standard_normal(shape).astype(np.float32), isa="avx512", precision="int8")
        assert kern.int8_isa == kernel


def conv_then_maxpool(conv, x, kernel, strides, pads, ceil_mode, lrn=None):
    t = run(conv, x)
    if lrn is not None:
        t = _core.lrn(t, np.empty_like(t), *lrn)
    pool = _core.ConvMaxPoolKernel(conv, kernel, strides, pads, ceil_mode)
    y = np.full(pool.out_shape(*x.shape[:2]), np.nan, np.float32)
    return _core.maxpool(t, y, *kernel, *strides, *pads)


@pytest.mark.parametrize("isa", ISAS + ["fp32"])
def test_conv_maxpool_fused_equals_conv_then_maxpool(isa):
    """ConvMaxPoolKernel: the same floats as the two steps, with bands of conv rows smaller than
    the image (large outputs), ceil mode, pooling padding, pooling stride above its window, and
    a NaN image (the int8 kernel then falls back to fp32, unfused)."""
    rng = np.random.default_rng(13)
    kw = dict(precision="fp32") if isa == "fp32" else dict(precision="int8", **VARIANTS[isa][0])
    big = [((111, 97, 3), (64, 3, 3, 3), dict(strides=(2, 2), relu=True), (3, 3), (2, 2), (0, 0, 0, 0), False),
           ((60, 70, 16), (130, 16, 3, 3), dict(pads=(1, 1, 1, 1)), (2, 2), (2, 2), (0, 0, 0, 0), True),
           ((45, 40, 8), (64, 8, 3, 3), dict(pads=(1, 1, 1, 1), relu=True), (3, 3), (3, 3), (1, 1, 1, 1), True),
           ((90, 50, 4), (128, 4, 1, 1), dict(), (2, 3), (3, 2), (1, 0, 1, 0), False)]
    for case in range(40 + len(big)):
        if case < len(big):
            xs, ws, args, kernel, strides, pads, ceil = big[case]
            x = rng.standard_normal(xs).astype(np.float32)
            weight, bias = rng.standard_normal(ws).astype(np.float32), rng.standard_normal(ws[0]).astype(np.float32)
            args = dict(args)
        else:
            x, weight, bias, args = random_case(rng)
            args["groups"] = 1
            weight = rng.standard_normal((weight.shape[0], x.shape[2]) + weight.shape[2:]).astype(np.float32)
            k = int(rng.integers(1, 4))
            kernel, strides = (k, int(rng.integers(1, 4))), (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
            pads = tuple(int(v) for v in rng.integers(0, 2, 4)) if k > 1 and kernel[1] > 1 else (0, 0, 0, 0)
            ceil = bool(rng.random() < 0.5)
            if case % 10 == 0:
                x[0, 0, 0] = np.nan
        conv = _core.DenseConvKernel(weight, bias, **kw, **args)
        # every third case with an LRN between conv and pool (AlexNet's conv1 -> LRN -> pool)
        lrn = (int(rng.integers(1, 8)), float(rng.uniform(1e-4, 1e-2)), [0.75, 0.5][case % 2],
               float(rng.uniform(0.5, 2))) if case % 3 == 1 else None
        fused = _core.ConvMaxPoolKernel(conv, kernel, strides, pads, ceil, lrn=lrn)
        assert fused.has_lrn == (lrn is not None)
        h, w = x.shape[:2]
        try:
            shape = fused.out_shape(h, w)
        except ValueError:
            continue  # the pooling window does not fit the conv's output
        y = np.full(shape, np.nan, np.float32)
        fused.run(x, y, np.empty(fused.scratch_nbytes(h, w), np.uint8))
        want = conv_then_maxpool(conv, x, kernel, strides, pads, ceil, lrn)
        msg = str((case, x.shape, weight.shape, args, kernel, strides, pads, ceil, lrn))
        if lrn is None:
            np.testing.assert_array_equal(y, want, err_msg=msg)
        else:  # the LRN's vector kernels differ by a few ulp between ISA families (rsqrt vs sqrt)
            np.testing.assert_allclose(y, want, rtol=2e-6, atol=1e-30, err_msg=msg)


def test_conv_maxpool_validation(check_fused_pool_run_refuses):
    conv = _core.DenseConvKernel(np.ones((4, 2, 3, 3), np.float32), precision="int8")
    with pytest.raises(ValueError, match="pooling"):
        _core.ConvMaxPoolKernel(conv, (0, 2), (2, 2))
    fused = _core.ConvMaxPoolKernel(conv, (2, 2), (2, 2))
    assert fused.out_shape(9, 9) == (3, 3, 4) and fused.precision == "int8"
    check_fused_pool_run_refuses(fused, np.ones((9, 9, 2), np.float32), (3, 3, 4), (7, 7, 4))
    with pytest.raises(ValueError, match="does not fit"):
        _core.ConvMaxPoolKernel(conv, (5, 5), (1, 1)).out_shape(5, 5)


@pytest.mark.parametrize("isa", ISAS)
def test_int8_conv_error_against_fp32_is_small(isa):
    rng = np.random.default_rng(11)
    for _ in range(20):
        x, weight, bias, args = random_case(rng)
        ref = _core.DenseConvKernel(weight, bias, isa="ref", **args)
        got = run(_core.DenseConvKernel(weight, bias, precision="int8", **VARIANTS[isa][0], **args), x)
        want = run(ref, x)
        # two roundings of half a step each: well under 2% of the output's scale
        assert np.linalg.norm(got - want) <= 0.02 * np.linalg.norm(want) + 1e-6, args


@pytest.mark.parametrize("isa", ISAS)
def test_int8_conv_non_finite_input_runs_in_fp32(isa):
    weight, bias = np.ones((4, 2, 3, 3), np.float32), np.zeros(4, np.float32)
    x = np.ones((5, 5, 2), np.float32)
    x[0, 0, 0] = np.nan
    x[4, 4, 1] = np.inf
    got = run(_core.DenseConvKernel(weight, bias, precision="int8", **VARIANTS[isa][0]), x)
    want = run(_core.DenseConvKernel(weight, bias, isa="ref"), x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa", ISAS)
def test_int8_conv_constant_input_and_zero_channel(isa):
    weight = np.random.default_rng(0).standard_normal((5, 3, 3, 3)).astype(np.float32)
    weight[2] = 0  # an all-zero channel gives exactly its bias
    bias = np.arange(5, dtype=np.float32)
    for value in (0.0, 2.5, -1.0):
        x = np.full((6, 7, 3), value, np.float32)
        got = run(_core.DenseConvKernel(weight, bias, pads=(1, 1, 1, 1), precision="int8", **VARIANTS[isa][0]), x)
        want = run(_core.DenseConvKernel(weight, bias, pads=(1, 1, 1, 1), isa="ref"), x)
        assert (got[..., 2] == 2.0).all()
        np.testing.assert_allclose(got, want, rtol=0.02, atol=0.02 * max(1.0, abs(value)) * 3)


@pytest.mark.parametrize("isa", ISAS)
def test_int8_conv_into_channel_slice(isa):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 11, 24)).astype(np.float32)
    wa, wb = rng.standard_normal((20, 24, 1, 1)).astype(np.float32), rng.standard_normal((36, 24, 3, 3)).astype(np.float32)
    ka = _core.DenseConvKernel(wa, None, precision="int8", **VARIANTS[isa][0], relu=True)
    kb = _core.DenseConvKernel(wb, None, pads=(1, 1, 1, 1), precision="int8", **VARIANTS[isa][0], relu=True)
    scratch = np.empty(max(ka.scratch_nbytes(9, 11), kb.scratch_nbytes(9, 11)), np.uint8)
    out = np.full((9, 11, 60), np.nan, np.float32)
    ka.run(x, out, scratch, out_channel_offset=0)
    kb.run(x, out, scratch, out_channel_offset=20)
    np.testing.assert_array_equal(out[..., :56], np.concatenate([run(ka, x), run(kb, x)], axis=2))
    assert np.isnan(out[..., 56:]).all()


def test_int8_conv_validation():
    w = np.ones((4, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="precision"):
        _core.DenseConvKernel(w, precision="int4")
    with pytest.raises(ValueError, match="ref"):
        _core.DenseConvKernel(w, precision="int8", isa="ref")
    kern = _core.DenseConvKernel(w, precision="int8", isa="generic")
    with pytest.raises(ValueError, match="scratch"):
        kern.run(np.ones((5, 5, 2), np.float32), np.empty((3, 3, 4), np.float32))
    assert _core.DenseConvKernel(w).int8_isa is None


# ---------------------------------------------------------------- dense fully connected in int8
def run_fc(kern, x):
    y = np.full(kern.out_features, np.nan, np.float32)
    kern.run(x, y, np.empty(max(1, kern.scratch_nbytes()), np.uint8))
    return y


FC_SHAPES = [(9216, 136), (4096, 1000), (37, 19), (1, 5), (300, 17), (64, 16), (65, 33)]


@pytest.mark.parametrize("isa", ISAS)
def test_int8_fc_is_the_int8_conv_on_a_one_pixel_image(isa):
    """DenseFcKernel(precision="int8") computes exactly what the 1x1 int8 conv does (checked above
    against its numpy statement), on every ISA, for sizes not a multiple of 4, 16 or 64."""
    rng = np.random.default_rng(21)
    for n_in, n_out in FC_SHAPES:
        w = rng.standard_normal((n_out, n_in)).astype(np.float32)
        b = rng.standard_normal(n_out).astype(np.float32) if n_out % 2 else None
        x = rng.standard_normal(n_in).astype(np.float32) + np.float32(rng.choice([0.0, 3.0, -3.0]))
        relu = bool(n_in % 2)
        fc = _core.DenseFcKernel(w, b, relu=relu, precision="int8", **VARIANTS[isa][0])
        assert fc.int8_isa == VARIANTS[isa][1] and fc.weight is None  # no fp32 copy kept
        want = int8_conv_numpy(x.reshape(1, 1, n_in), w.reshape(n_out, n_in, 1, 1), b, (1, 1), (0, 0, 0, 0), 1, relu)
        np.testing.assert_array_equal(run_fc(fc, x), want.ravel(), err_msg=f"{n_in}x{n_out}")
        # and the error the two roundings add against fp32 stays small
        ref = run_fc(_core.DenseFcKernel(w, b, relu=relu, isa="ref"), x)
        assert np.linalg.norm(run_fc(fc, x) - ref) <= 0.02 * np.linalg.norm(ref) + 1e-6


@pytest.mark.parametrize("isa", ISAS)
def test_int8_fc_non_finite_input_gives_nan(isa):
    w = np.ones((7, 40), np.float32)
    fc = _core.DenseFcKernel(w, np.zeros(7, np.float32), precision="int8", **VARIANTS[isa][0])
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(40, np.float32)
        x[3] = bad
        assert np.isnan(run_fc(fc, x)).all()
    assert np.isfinite(run_fc(fc, np.ones(40, np.float32))).all()


def test_int8_fc_validation():
    w = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match="precision"):
        _core.DenseFcKernel(w, precision="int4")
    with pytest.raises(ValueError, match="ref"):
        _core.DenseFcKernel(w, precision="int8", isa="ref")
    fc = _core.DenseFcKernel(w, precision="int8", isa="generic")
    assert fc.scratch_nbytes() > 0 and _core.DenseFcKernel(w).scratch_nbytes() == 0
    with pytest.raises(ValueError, match="scratch"):
        fc.run(np.ones(6, np.float32), np.empty(4, np.float32))
    with pytest.raises(ValueError, match="scratch"):
        fc.run(np.ones(6, np.float32), np.empty(4, np.float32), np.empty(1, np.uint8))
    assert _core.DenseFcKernel(w).int8_isa is None and _core.DenseFcKernel(w).precision == "fp32"


def test_model_runs_a_dense_fc_in_int8_where_it_pays(tmp_path, tiny_model_factory):
    """A Gemm the file keeps dense: int8 on AVX2 / AVX-512 with int8 tables, fp32 otherwise."""
    from qcnn.runtime import Model
    from qcnn.schema import writer

    model = tiny_model_factory()
    fc = next(op for op in model.operators if op.name == "fc")
    fc.weights = np.random.default_rng(3).standard_normal((10, 24)).astype(np.float32)
    writer.write_model(model, tmp_path / "dense_fc.qcnn")
    x = np.random.default_rng(4).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with Model(tmp_path / "dense_fc.qcnn", lut="float") as ref_model:
        ref = ref_model.run(x)
        assert {d["name"]: d for d in ref_model.layers}["fc"]["precision"] == "fp32"
    for isa in ISAS:
        code = {"avx512": "avx512vbmi"}.get(isa, isa)
        if isa == "amx":
            continue
        with Model(tmp_path / "dense_fc.qcnn", isa=code) as m:
            layer = {d["name"]: d for d in m.layers}["fc"]
            want = "fp32" if code == "generic" else "int8"
            assert layer["precision"] == want, (isa, layer)
            y = m.run(x)
        np.testing.assert_allclose(y, ref, atol=0.02)  # softmax outputs
