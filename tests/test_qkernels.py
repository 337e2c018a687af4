"""Product-quantized (LUT) conv / fc kernels: every variant against a numpy implementation of
the paper's Eq. 6 (float64) and against the C float reference.

int8 variants are checked against an analytical bound: each look-up's table entry is rounded to
the nearest multiple of the per-image step s (returned by run()), so an output that sums n
look-ups is off by at most n*s/2 (plus float rounding, bounded by 1e-5 of the sum of |terms|).
"""
import os
import threading

import numpy as np
import pytest

_core = pytest.importorskip("qcnn.runtime._core")


HAVE_BF16 = "avx512vbmi" in _core.isa_available() and _core.cpu_has_bf16()
HAVE_VNNI = "avx512vbmi" in _core.isa_available() and _core.cpu_has_vnni()


def variants():
    """(isa, lut) pairs: the float oracle, the generic float path, int8 on every ISA here.
    'avx512vbmi' runs fp32 table builds; 'avx512vbmi+bf16' the bf16 ones and 'avx512vbmi+int8' the
    int8 ones (where the CPU has them; int8, then bf16, is the default)."""
    out = [("generic", "ref"), ("generic", "float")]
    out += [(isa, "int8") for isa in _core.isa_available()]
    if HAVE_BF16:
        out.append(("avx512vbmi+bf16", "int8"))
    if HAVE_VNNI:
        out.append(("avx512vbmi+int8", "int8"))
    return out


VARIANTS = variants()
INT8_ISAS = [isa for isa, lut in VARIANTS if lut == "int8"]


def kernel_isa(isa):
    return isa.split("+")[0]


def set_build(k, isa):
    """Selects the variant's table build on k ('avx512vbmi': fp32, '+bf16', '+int8'; ValueError where
    the layer cannot run it); returns k."""
    if k.isa == "avx512vbmi" and k.lut == "int8":
        k.table_build = isa.split("+")[1] if "+" in isa else "fp32"
    return k


def bf16_round(a):
    """float32 -> nearest bfloat16 (ties to even), back as float32: what vcvtneps2bf16 does."""
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def int8_inputs(x):
    """What the int8 table build rounds the inputs to (qlut_avx512.c quantize_inputs), in float64:
    each pixel (last axis: channels) to 8 bits with its own step, u8 up to its max if it has no
    negative value, else offset int8 up to its max |x|. One fp32 FMA, then round to nearest even."""
    x = np.asarray(x, np.float32)
    flat = x.reshape(-1, x.shape[-1])
    mx, mn = flat.max(1), flat.min(1)
    signed = mn < 0
    top = np.where(signed, np.maximum(mx, -mn), mx).astype(np.float32)
    levels = np.where(signed, np.float32(127), np.float32(255)).astype(np.float32)
    step = (top / levels).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(top > 0, levels / top, 0).astype(np.float32)
    add = np.where(signed, 128.0, 0.0)
    q = np.rint((flat.astype(np.float64) * inv[:, None] + add[:, None]).astype(np.float32))
    return ((q - add[:, None]) * step[:, None].astype(np.float64)).reshape(x.shape)


def int8_codebooks(cb, cin):
    """The int8 build's codewords (qlut_generic.c prepare), in float64: each subspace's entries
    rounded to int8 at its largest |entry| / 127 (channels past the group's end do not count)."""
    G, M, K, Cs = cb.shape
    valid = (np.arange(M)[:, None] * Cs + np.arange(Cs)[None, :]) < cin // G  # (M, Cs)
    cbv = np.where(valid[None, :, None, :], cb, 0).astype(np.float32)
    amax = np.abs(cbv).max(axis=(2, 3))
    step = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, 0).astype(np.float32)
    q = np.rint((cbv * inv[:, :, None, None]).astype(np.float32))
    return q * step[:, :, None, None].astype(np.float64)


def built_from(k, x, cb):
    """The values k's tables are built from: bf16-rounded inputs and codewords if it builds in
    bf16, 8-bit ones if in int8. The int8 bounds then hold against the float64 oracle on those
    values."""
    if k.lut != "int8" or k.isa != "avx512vbmi" or k.table_build == "fp32":
        return x, cb
    if k.table_build == "bf16":
        return bf16_round(x), bf16_round(cb)
    # float32 like the inputs (the C reference takes float32); 1 ulp off the exact products
    return int8_inputs(x).astype(np.float32), int8_codebooks(cb, x.shape[-1]).astype(np.float32)


def make_conv(rng, cin, cout, G, kh, kw, Cs, K):
    Cg = cin // G
    M = -(-Cg // Cs)
    cb = rng.standard_normal((G, M, K, Cs)).astype(np.float32)
    idx = rng.integers(0, K, size=(G, kh, kw, M, cout // G), dtype=np.uint8)
    return cb, idx, M


def np_qconv(x, cb, idx, bias, G, strides, pads, relu):
    """Eq. 6 in float64. Returns (y, abs_terms, n_lookups) per output element."""
    H, W, cin = x.shape
    _, M, K, Cs = cb.shape
    _, kh, kw, _, Og = idx.shape
    Cg = cin // G
    sh, sw = strides
    pt, pl, pb, pr = pads
    xg = np.zeros((H, W, G, M * Cs))
    xg[..., :Cg] = x.reshape(H, W, G, Cg)
    L = np.einsum("hwgmc,gmkc->hwgmk", xg.reshape(H, W, G, M, Cs), cb.astype(np.float64))
    Lp = np.zeros((H + pt + pb, W + pl + pr, G, M, K))
    Lp[pt:pt + H, pl:pl + W] = L
    valid = np.zeros((H + pt + pb, W + pl + pr))
    valid[pt:pt + H, pl:pl + W] = 1
    OH = (H + pt + pb - kh) // sh + 1
    OW = (W + pl + pr - kw) // sw + 1
    y = np.zeros((OH, OW, G, Og))
    a = np.zeros((OH, OW, G, Og))
    n = np.zeros((OH, OW, 1, 1))
    for ky in range(kh):
        for kx in range(kw):
            sl = Lp[ky:ky + sh * (OH - 1) + 1:sh, kx:kx + sw * (OW - 1) + 1:sw]  # OH,OW,G,M,K
            n += valid[ky:ky + sh * (OH - 1) + 1:sh, kx:kx + sw * (OW - 1) + 1:sw][:, :, None, None] * M
            for g in range(G):
                ii = np.broadcast_to(idx[g, ky, kx][None, None].astype(np.intp), (OH, OW, M, Og))
                t = np.take_along_axis(sl[:, :, g], ii, axis=3)  # OH,OW,M,Og
                y[:, :, g] += t.sum(axis=2)
                a[:, :, g] += np.abs(t).sum(axis=2)
    y = y.reshape(OH, OW, G * Og)
    a = a.reshape(OH, OW, G * Og)
    if bias is not None:
        y += bias
        a += np.abs(bias)
    if relu:
        y = np.maximum(y, 0)
    return y, a, np.broadcast_to(n.reshape(OH, OW, 1), y.shape)


def np_table_ranges(x, cb, G):
    """max - min of every table: (H, W, G, M)."""
    H, W, cin = x.shape
    _, M, K, Cs = cb.shape
    Cg = cin // G
    xg = np.zeros((H, W, G, M * Cs), np.float32)
    xg[..., :Cg] = x.reshape(H, W, G, Cg)
    L = np.einsum("hwgmc,gmkc->hwgmk", xg.reshape(H, W, G, M, Cs), cb)
    return L.max(-1) - L.min(-1)


def np_table_step(x, cb, G, kh=1, sh=1, pt=0, oh=None):
    """The largest int8 step: max over the tables of the rows some output reads of (max - min) / 255
    (with the conv's kh, stride, top padding and output height; default: every row)."""
    ranges = np_table_ranges(x, cb, G)
    if oh is not None:
        used = sorted({oy * sh + ky - pt for oy in range(oh) for ky in range(kh)} & set(range(len(x))))
        ranges = ranges[used]
    return float(ranges.max()) / 255.0


def check_close(got, step, lut, y64, absterms, nlook):
    if lut == "int8":
        assert step > 0
        bound = nlook * step / 2 * (1 + 1e-3) + 1e-5 * absterms + 1e-6
    else:
        assert step == 0.0
        bound = 1e-5 * (absterms + np.abs(y64)) + 1e-6
    err = np.abs(got.astype(np.float64) - y64)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"err {err[worst]} > bound {bound[worst]} at {worst}"
    if lut == "int8":
        rel = np.linalg.norm(got - y64) / max(np.linalg.norm(y64), 1e-12)
        assert rel < 0.03, f"relative L2 error {rel}"
    return err


# cin, cout, G, kh, kw, strides, pads(t,l,b,r), Cs, K, H, W, relu, bias
CONV_CASES = [
    (3, 5, 1, 1, 1, (1, 1), (0, 0, 0, 0), 2, 2, 1, 1, False, False),
    (7, 9, 1, 3, 3, (1, 1), (1, 1, 1, 1), 3, 16, 7, 5, True, True),
    (12, 6, 2, 5, 5, (2, 2), (2, 1, 0, 3), 4, 32, 9, 8, False, True),
    (9, 12, 3, 3, 3, (1, 2), (0, 1, 2, 0), 2, 64, 6, 7, True, False),
    (6, 10, 2, 11, 11, (4, 4), (2, 2, 2, 2), 2, 128, 23, 19, True, True),
    (16, 70, 1, 3, 3, (1, 1), (1, 1, 1, 1), 8, 256, 5, 5, False, True),
    (10, 130, 2, 1, 1, (1, 1), (0, 0, 0, 0), 5, 100, 3, 4, True, True),
    (5, 3, 1, 3, 3, (1, 1), (3, 3, 3, 3), 3, 17, 1, 1, False, True),
    (96, 64, 2, 5, 5, (1, 1), (2, 2, 2, 2), 8, 128, 7, 9, True, True),
    (64, 40, 1, 3, 3, (1, 1), (1, 1, 1, 1), 2, 200, 5, 6, False, True),   # 288 look-ups/output
    (128, 33, 1, 3, 3, (1, 1), (1, 0, 1, 2), 1, 3, 4, 3, True, False),    # 1152 look-ups/output
    (24, 66, 3, 1, 1, (4, 4), (0, 0, 0, 0), 8, 64, 9, 9, False, True),
    (11, 192, 1, 3, 3, (2, 1), (0, 2, 1, 0), 4, 129, 8, 11, True, True),
    (8, 384, 1, 3, 3, (1, 1), (1, 1, 1, 1), 8, 128, 13, 13, True, True),
    (4, 8, 1, 3, 3, (1, 1), (1, 1, 1, 1), 2, 64, 2, 1, False, True),      # 1-pixel rows
    (6, 64, 2, 5, 5, (1, 1), (2, 2, 2, 2), 3, 40, 3, 17, True, False),
    (8, 20, 1, 2, 2, (3, 3), (1, 0, 0, 1), 4, 32, 10, 9, True, True),     # rows between windows
    # pointwise: 7 channel blocks (4 + 3) on an odd row (2 + 2 + 1 pixels)
    (20, 420, 1, 1, 1, (1, 1), (0, 0, 0, 0), 4, 128, 3, 5, True, True),
    (12, 300, 1, 1, 1, (1, 1), (0, 0, 0, 0), 3, 256, 2, 3, False, True),  # K > 128: 5 blocks (2+2+1)
    (32, 260, 2, 1, 1, (1, 1), (0, 0, 0, 0), 4, 64, 3, 3, True, False),   # groups, 3 blocks each
    (300, 70, 1, 1, 1, (1, 1), (0, 0, 0, 0), 1, 16, 2, 3, False, True),   # 300 subspaces: 16-bit flush
    (50, 70, 1, 3, 3, (1, 1), (1, 1, 1, 1), 17, 64, 4, 5, True, True),    # bf16 pairs: 16 + 1 channels, short last
    # 128-entry tables are built 3 pixels at a time: rows of 8 and 5 pixels end in a pair
    (16, 40, 1, 3, 3, (1, 1), (1, 1, 1, 1), 8, 128, 4, 8, True, True),
    (20, 70, 1, 1, 1, (1, 1), (0, 0, 0, 0), 4, 128, 1, 5, False, True),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])
@pytest.mark.parametrize("isa,lut", VARIANTS)
def test_qconv_matches_numpy(case, isa, lut):
    cin, cout, G, kh, kw, strides, pads, Cs, K, H, W, relu, has_bias = case
    rng = np.random.default_rng(hash(case) % 2**32)
    cb, idx, M = make_conv(rng, cin, cout, G, kh, kw, Cs, K)
    bias = rng.standard_normal(cout).astype(np.float32) if has_bias else None
    x = rng.standard_normal((H, W, cin)).astype(np.float32)
    k = set_build(_core.QConvKernel(cin, cout, G, kh, kw, strides, pads, Cs, M, K, cb, idx, bias, relu,
                                    isa=kernel_isa(isa), lut=lut), isa)
    assert k.isa == (kernel_isa(isa) if lut == "int8" else "generic")
    y = np.full(k.out_shape(H, W), np.nan, np.float32)
    scratch = np.empty(k.scratch_nbytes(H, W), np.uint8)
    step = k.run(x, y, scratch)
    x, cb = built_from(k, x, cb)
    y64, absterms, nlook = np_qconv(x, cb, idx, bias, G, strides, pads, relu)
    assert y.shape == y64.shape
    check_close(y, step, lut, y64, absterms, nlook)
    if lut == "int8":
        assert step == pytest.approx(np_table_step(x, cb, G, kh, strides[0], pads[0], y.shape[0]), rel=1e-4)

    # ... and against the C float oracle on the same input.
    ref = _core.QConvKernel(cin, cout, G, kh, kw, strides, pads, Cs, M, K, cb, idx, bias, relu,
                            lut="ref")
    yr = np.empty_like(y)
    ref.run(x, yr, np.empty(ref.scratch_nbytes(H, W), np.uint8))
    check_close(y, step, lut, yr.astype(np.float64), absterms, nlook)


@pytest.mark.parametrize("isa,lut", [v for v in VARIANTS if v[1] != "ref"])
def test_pointwise_conv_runs_in_chunks_with_their_own_step(isa, lut):
    """A 1x1 / stride 1 / unpadded conv reads one input pixel per output pixel, so the runtime
    quantizes its tables chunk by chunk: one loud pixel must not coarsen the other chunks."""
    cin, cout, G, Cs, K, H, W = 64, 96, 2, 4, 128, 9, 11
    rng = np.random.default_rng(7)
    cb, idx, M = make_conv(rng, cin, cout, G, 1, 1, Cs, K)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((H, W, cin)).astype(np.float32)
    x[0, 0] *= 1000.0  # the first chunk's step is ~1000x the others'
    k = set_build(_core.QConvKernel(cin, cout, G, 1, 1, (1, 1), (0, 0, 0, 0), Cs, M, K, cb, idx, bias,
                                    False, isa=kernel_isa(isa), lut=lut), isa)
    n = k.pointwise_chunk
    assert n == 16  # 128 KB of float tables / (G * M * 128 entries * 4 bytes) = 16 pixels
    assert n < H * W  # several chunks, the last one partial (99 = 6 * 16 + 3)
    y = np.full(k.out_shape(H, W), np.nan, np.float32)
    step = k.run(x, y, np.empty(k.scratch_nbytes(H, W), np.uint8))
    x, cb = built_from(k, x, cb)
    y64, absterms, nlook = np_qconv(x, cb, idx, bias, G, (1, 1), (0, 0, 0, 0), False)
    if lut != "int8":
        check_close(y, step, lut, y64, absterms, nlook)
        return
    assert step == pytest.approx(np_table_step(x, cb, G), rel=1e-4)  # the largest chunk step
    flat_x, flat_y = x.reshape(-1, 1, cin), y.reshape(-1, cout)
    for p0 in range(0, H * W, n):  # each chunk within its own step's bound
        chunk_step = np_table_step(flat_x[p0:p0 + n], cb, G)
        assert chunk_step == pytest.approx(step, rel=1e-4) if p0 == 0 else chunk_step < step / 100
        sl = slice(p0, p0 + n)
        err = np.abs(flat_y[sl] - y64.reshape(-1, cout)[sl])
        bound = (nlook.reshape(-1, cout)[sl] * chunk_step / 2 * (1 + 1e-3)
                 + 1e-5 * absterms.reshape(-1, cout)[sl] + 1e-6)
        assert np.all(err <= bound), f"chunk at pixel {p0}: error {err.max()} over its own step's bound"


def np_row_steps(x, cb, G, rows=None, guessing=False, share=0.0, stats=None):
    """Per input row: its step in the row-step mode, the rows built in the order `rows`.
    Each row's own step is its largest table range r / 255. With share > 0 (row_step_share) a
    row whose r fits the step s of the row built before it with r >= share * 255 * s takes s.
    guessing (row_guess_limit): a row whose r lies in [guess / 2, guess] takes guess / 255, where
    guess = 1.125 x the largest range of the row built before it - or, with share > 0, of the
    row that set the guess, while the rows fit it with r >= share * guess. A row outgrowing its
    guess (r > guess) is retried at 1.25 x guess, which it then keeps if r fits it. Float32 as
    the kernel. stats (a dict) gets "retried": how many rows were retried and fit."""
    f32 = np.float32
    retried = 0
    ranges = np_table_ranges(x, cb, G).reshape(x.shape[0], -1).max(1).astype(f32)
    steps = (ranges / f32(255)).astype(np.float64)
    guess, prev = f32(0), f32(0)
    for iy in (rows if rows is not None else []):
        r = ranges[iy]
        retry = guessing and guess > 0 and r > guess
        if retry:
            guess = guess * f32(1.25)
        if guessing and guess > 0 and guess / f32(2) <= r <= guess:
            retried += retry
            step = guess / f32(255)
            if not (share > 0 and r >= f32(share) * guess):
                guess = r * f32(1.125)
        else:
            step = r / f32(255)
            if share > 0 and prev > 0 and r <= f32(255) * prev and r >= f32(share) * f32(255) * prev:
                step = prev
            guess = r * f32(1.125)
        steps[iy] = step
        prev = f32(step)
    if stats is not None:
        stats["retried"] = retried
    return steps


def built_rows(H, kh, sh, pt, OH):
    """The image rows a row-step kernel builds, in order (rows between windows are skipped)."""
    return [iy for iy in range(H) if (iy + pt) % sh < kh and iy + pt <= (OH - 1) * sh + kh - 1]


def _pointwise(case):
    return case[3] == case[4] == 1 and case[5] == (1, 1) and not any(case[6])


@pytest.mark.parametrize("case", [c for c in CONV_CASES if not _pointwise(c)],
                         ids=[f"conv{i}" for i, c in enumerate(CONV_CASES) if not _pointwise(c)])
@pytest.mark.parametrize("isa", INT8_ISAS)
@pytest.mark.parametrize("rows", ["own", "share", "guess-fails", "guess-fits", "guess-retries"])
def test_row_steps_quantize_each_input_row_with_its_own_step(case, isa, rows):
    """Over row_step_limit, each input row's tables get their own step and every output is within
    the bound of the steps of the rows it reads (not just the image's largest step). Rows of
    similar scale share a step (row_step_share), and an output's kernel rows of one step are summed
    in one call. With row_guess_limit 0 each row guesses its step from the row above: rows growing
    1.8x a row never fit the guess and are redone with their own step; rows of similar scale keep
    the guess; rows growing 1.2x a row outgrow it and are retried at 1.25x the guess."""
    cin, cout, G, kh, kw, strides, pads, Cs, K, H, W, relu, has_bias = case
    rng = np.random.default_rng(hash(case) % 2**32)
    cb, idx, M = make_conv(rng, cin, cout, G, kh, kw, Cs, K)
    bias = rng.standard_normal(cout).astype(np.float32) if has_bias else None
    # rows of very different scale, so one step per image would be far coarser for most rows
    # (or of similar scale, a little smaller each row, so the guess or the step above fits)
    scale = {"guess-fits": np.ones(H), "share": np.geomspace(1, 0.5, H),
             "guess-retries": 1.2 ** np.arange(H)}.get(rows, np.geomspace(0.01, 10, H))
    x = (rng.standard_normal((H, W, cin)) * scale[:, None, None]).astype(np.float32)
    k = set_build(_core.QConvKernel(cin, cout, G, kh, kw, strides, pads, Cs, M, K, cb, idx, bias, relu,
                                    isa=kernel_isa(isa), lut="int8"), isa)
    assert k.row_step_limit == 0  # the default, the same on every CPU: it changes the values
    assert k.row_guess_limit == 512 << 10
    assert k.row_step_share == pytest.approx(0.8)  # the default, the same on every CPU
    if rows.startswith("guess"):
        k.row_guess_limit = 0
    if rows == "share":  # share a step even 3x a row's own (rows of few tables vary a lot in range)
        k.row_step_share = 0.3
    k.row_step_limit = 1 << 40
    whole = k.scratch_nbytes(H, W)  # one step per image: tables of every row
    k.row_step_limit = 0
    if H > 1:
        assert k.scratch_nbytes(H, W) < whole  # a ring of kh rows of tables, one row of floats
    y = np.full(k.out_shape(H, W), np.nan, np.float32)
    step = k.run(x, y, np.empty(k.scratch_nbytes(H, W), np.uint8))
    x, cb = built_from(k, x, cb)
    built = built_rows(H, kh, strides[0], pads[0], y.shape[0])
    stats = {}
    steps = np_row_steps(x, cb, G, built, guessing=rows.startswith("guess"), share=k.row_step_share,
                         stats=stats)
    if rows == "guess-retries" and len(built) > 2 and strides[0] == 1:
        assert stats["retried"] > 0  # the case exercises the retry (built rows 1.2x apart)
    # the largest step of the rows some output reads is reported (rows between windows are skipped)
    assert step == pytest.approx(max(steps[built]), rel=1e-4)
    if rows == "own":  # rows 1.2-1000x apart in scale never share: each has its own step
        assert step == pytest.approx(np_table_step(x, cb, G, kh, strides[0], pads[0], y.shape[0]), rel=1e-4)
    own = np_row_steps(x, cb, G)
    if rows in ("guess-fits", "share") and len(built) > 1:  # steps were shared or guessed (rows of few tables vary more)
        assert np.any(steps[built[1:]] > own[built[1:]] * 1.0001)
    assert np.all(steps[built] >= own[built] * (1 - 1e-6))  # never finer than a row's own step ...
    coarsest = max(2.0, 1 / k.row_step_share)  # ... nor coarser than the guess or sharing allow
    assert np.all(steps[built] <= own[built] * coarsest * (1 + 1e-5))
    y64, absterms, _ = np_qconv(x, cb, idx, bias, G, strides, pads, relu)
    # bound: M look-ups per (kernel tap on an image row), each off by at most half its row's step
    sh = strides[0]
    OH, OW = y64.shape[:2]
    pt, pl, pb, pr = pads
    bound = np.zeros((OH, OW, 1))
    for oy in range(OH):
        for ky in range(kh):
            iy = oy * sh + ky - pt
            if 0 <= iy < H:
                ix = np.arange(OW)[:, None] * strides[1] + np.arange(kw)[None, :] - pl
                taps = ((ix >= 0) & (ix < W)).sum(1)
                bound[oy, :, 0] += taps * M * steps[iy] / 2
    bound = bound * (1 + 1e-3) + 1e-5 * absterms + 1e-6
    err = np.abs(y.astype(np.float64) - y64)
    assert np.all(err <= bound), f"error {err.max()} over the row steps' bound"
    if H >= 4 and rows in ("own", "guess-fails"):  # rows 1000x apart in scale: far more accurate than one step for the image
        k.row_step_limit = 1 << 40
        y1 = np.full(k.out_shape(H, W), np.nan, np.float32)
        k.run(x, y1, np.empty(k.scratch_nbytes(H, W), np.uint8))
        assert err.mean() < 0.5 * np.abs(y1.astype(np.float64) - y64).mean()


POOLS = [((2, 2), (2, 2), (0, 0, 0, 0), False),  # VGG's
          ((3, 3), (2, 2), (0, 0, 0, 0), False),  # AlexNet's: windows share a row
          ((3, 3), (2, 2), (1, 1, 1, 1), True),   # padding above the first row, ceil mode
          ((2, 3), (3, 2), (1, 0, 0, 1), True),   # rows between windows (stride above the window)
          ((1, 1), (1, 1), (0, 0, 0, 0), False)]  # every conv row its own pooled row


@pytest.mark.parametrize("case", [c for c in CONV_CASES if not _pointwise(c)],
                         ids=[f"conv{i}" for i, c in enumerate(CONV_CASES) if not _pointwise(c)])
@pytest.mark.parametrize("isa,lut", [v for v in VARIANTS if v[1] != "ref"])
def test_qconv_maxpool_fused_equals_conv_then_maxpool(case, isa, lut):
    """QConvMaxPoolKernel: the same floats as conv.run (then lrn) then maxpool, for every pooling
    shape, with and without guessed row steps and an LRN between, with a NaN in the image, and
    for layers not run by rows (float tables, or one step per image), which run whole and are
    pooled after."""
    cin, cout, G, kh, kw, strides, pads, Cs, K, H, W, relu, has_bias = case
    rng = np.random.default_rng(hash(case) % 2**32 + 7)
    cb, idx, M = make_conv(rng, cin, cout, G, kh, kw, Cs, K)
    bias = rng.standard_normal(cout).astype(np.float32) if has_bias else None
    k = set_build(_core.QConvKernel(cin, cout, G, kh, kw, strides, pads, Cs, M, K, cb, idx, bias, relu,
                                    isa=kernel_isa(isa), lut=lut), isa)
    x = (rng.standard_normal((H, W, cin)) * np.geomspace(0.5, 2, H)[:, None, None]).astype(np.float32)
    for trial, (kernel, pstrides, ppads, ceil) in enumerate(POOLS):
        if lut == "int8":  # alternate exact and guessed row steps, then one step for the image
            k.row_guess_limit = 0 if trial % 2 else 512 << 10
            k.row_step_limit = 1 << 40 if trial == 4 else 0
        # every other pooling with an LRN between (AlexNet's conv2 -> LRN -> pool)
        lrn = (int(rng.integers(1, 8)), float(rng.uniform(1e-4, 1e-2)), [0.75, 0.5][trial % 4 // 2],
               float(rng.uniform(0.5, 2))) if trial % 2 == 0 else None
        fused = _core.QConvMaxPoolKernel(k, kernel, pstrides, ppads, ceil, lrn=lrn)
        assert fused.has_lrn == (lrn is not None)
        try:
            shape = fused.out_shape(H, W)
        except ValueError:
            continue  # the window does not fit the conv's output
        xt = x.copy()
        if trial == 2:
            xt[H // 2, 0, 0] = np.nan
        y = np.full(shape, -7.0, np.float32)
        step = fused.run(xt, y, np.empty(fused.scratch_nbytes(H, W), np.uint8))
        conv_out = np.full(k.out_shape(H, W), np.nan, np.float32)
        want_step = k.run(xt, conv_out, np.empty(k.scratch_nbytes(H, W), np.uint8))
        if lrn is not None:
            conv_out = _core.lrn(conv_out, np.empty_like(conv_out), *lrn)
        want = _core.maxpool(conv_out, np.empty(shape, np.float32), *kernel, *pstrides, *ppads)
        msg = str((case, kernel, pstrides, ppads, ceil, trial, lrn))
        np.testing.assert_array_equal(y, want, err_msg=msg)  # the LRN too: the same ISA as lrn()
        assert step == want_step or (np.isnan(step) and np.isnan(want_step)), msg


def test_qconv_maxpool_validation(check_fused_pool_run_refuses):
    rng = np.random.default_rng(3)
    cb, idx, M = make_conv(rng, 4, 8, 1, 3, 3, 2, 16)
    conv = _core.QConvKernel(4, 8, 1, 3, 3, (1, 1), (1, 1, 1, 1), 2, M, 16, cb, idx)
    with pytest.raises(ValueError, match="pooling"):
        _core.QConvMaxPoolKernel(conv, (2, 0), (2, 2))
    with pytest.raises(ValueError, match="pooling"):
        _core.QConvMaxPoolKernel(conv, (2, 2), (2, 2), (0, -1, 0, 0))
    with pytest.raises(ValueError, match="lrn"):
        _core.QConvMaxPoolKernel(conv, (2, 2), (2, 2), lrn=(0, 1e-4, 0.75, 1.0))
    fused = _core.QConvMaxPoolKernel(conv, (2, 2), (2, 2))
    assert fused.out_shape(9, 9) == (4, 4, 8) and fused.conv is conv
    x = np.ones((9, 9, 4), np.float32)
    check_fused_pool_run_refuses(fused, x, (4, 4, 8), (9, 9, 8))
    with pytest.raises(ValueError, match="scratch"):
        fused.run(x, np.empty((4, 4, 8), np.float32), None)
    with pytest.raises(ValueError, match="does not fit"):
        _core.QConvMaxPoolKernel(conv, (5, 5), (1, 1)).out_shape(3, 3)


def test_only_pointwise_layers_are_chunked():
    rng = np.random.default_rng(0)
    cb, idx, M = make_conv(rng, 16, 8, 1, 1, 1, 4, 16)
    for strides, pads in (((2, 2), (0, 0, 0, 0)), ((1, 1), (1, 1, 1, 1))):
        k = _core.QConvKernel(16, 8, 1, 1, 1, strides, pads, 4, M, 16, cb, idx, None, False)
        assert k.pointwise_chunk == 0
    k = _core.QConvKernel(16, 8, 1, 1, 1, (1, 1), (0, 0, 0, 0), 4, M, 16, cb, idx, None, False)
    assert k.pointwise_chunk > 0
    assert _core.QConvKernel(16, 8, 1, 1, 1, (1, 1), (0, 0, 0, 0), 4, M, 16, cb, idx, None, False,
                             lut="ref").pointwise_chunk == 0
    cb3, idx3, M3 = make_conv(rng, 16, 8, 1, 3, 3, 4, 16)
    assert _core.QConvKernel(16, 8, 1, 3, 3, (1, 1), (1, 1, 1, 1), 4, M3, 16, cb3, idx3, None,
                             False).pointwise_chunk == 0


# in, out, Cs, K, relu, bias
FC_CASES = [
    (10, 7, 3, 2, False, False),
    (100, 130, 4, 32, True, True),
    (64, 1000, 1, 16, False, True),
    (33, 65, 4, 256, True, False),
    (1024, 64, 1, 64, False, True),
    (50, 200, 7, 128, True, True),
    (2048, 96, 8, 100, False, True),
    (40, 50, 2, 40, True, True),     # AVX2: 3, 5 and 6 vpshufb chunks
    (30, 33, 3, 70, False, True),
    (20, 40, 1, 90, False, False),
    (300, 1100, 3, 32, True, True),  # several chunks of channel blocks + a partial one
    (7, 70, 1, 5, False, True),      # 7 subspaces: 4 share a table, then 3
    (37, 70, 1, 9, True, True),      # AVX-512 FC tables built 16 subspaces at a time: 16+16+5
    (70, 90, 4, 20, False, True),    # ... 16+2, the last subspace short (2 of 4 channels)
    (100, 80, 20, 128, True, True),  # 20 channels per subspace: bf16 builds convert 16 + 4
]


@pytest.mark.parametrize("case", FC_CASES, ids=[f"fc{i}" for i in range(len(FC_CASES))])
@pytest.mark.parametrize("isa,lut", VARIANTS)
def test_qfc_matches_numpy(case, isa, lut):
    nin, nout, Cs, K, relu, has_bias = case
    rng = np.random.default_rng(hash(case) % 2**32)
    cb, idx, M = make_conv(rng, nin, nout, 1, 1, 1, Cs, K)
    bias = rng.standard_normal(nout).astype(np.float32) if has_bias else None
    x = rng.standard_normal(nin).astype(np.float32)
    k = _core.QFcKernel(nin, nout, Cs, M, K, cb[0], idx[0, 0, 0], bias, relu, isa=kernel_isa(isa), lut=lut)
    if isa.endswith("+int8"):
        pytest.skip("FC layers build their tables in fp32 or bf16")
    if isa.endswith("+bf16") and not k.bf16_build:
        pytest.skip("FC with K <= 32 and >= 16 subspaces builds its tables in fp32")
    set_build(k, isa)
    y = np.full(nout, np.nan, np.float32)
    step = k.run(x, y, np.empty(k.scratch_nbytes(), np.uint8))
    x, cb = built_from(k, x, cb)
    y64, absterms, nlook = np_qconv(x.reshape(1, 1, nin), cb, idx, bias, 1, (1, 1), (0, 0, 0, 0), relu)
    check_close(y, step, lut, y64.reshape(-1), absterms.reshape(-1), nlook.reshape(-1))


@pytest.mark.skipif(not {"avx2", "avx512vbmi"} <= set(_core.isa_available()), reason="needs AVX2 and AVX-512")
def test_qfc_int8_is_bit_identical_across_simd_layouts():
    # AVX-512 FC with K <= 32 packs indices at ceil(log2 K) bits and sums 4 subspaces per lane
    # (VNNI, where the CPU has it); AVX2 keeps one byte per index: the integer sums, and so the
    # outputs, must be the same. M not a multiple of 4, outputs not a multiple of 64, every K.
    rng = np.random.default_rng(5)
    for nin, nout, Cs, K in [(9216, 4096, 4, 32), (4096, 1000, 1, 16), (100, 37, 3, 32), (64, 130, 2, 8),
                             (30, 65, 1, 2), (37, 200, 5, 17), (13, 300, 1, 3), (6, 64, 1, 64)]:
        cb, idx, M = make_conv(rng, nin, nout, 1, 1, 1, Cs, K)
        bias = rng.standard_normal(nout).astype(np.float32)
        x = np.abs(rng.standard_normal(nin)).astype(np.float32)
        ys = []
        for isa in ("avx2", "avx512vbmi"):
            k = set_build(_core.QFcKernel(nin, nout, Cs, M, K, cb[0], idx[0, 0, 0], bias, True, isa=isa,
                                          lut="int8"), isa)  # fp32 builds on both
            y = np.full(nout, np.nan, np.float32)
            k.run(x, y, np.empty(k.scratch_nbytes(), np.uint8))
            ys.append(y)
        np.testing.assert_array_equal(ys[0], ys[1], err_msg=str((nin, nout, Cs, K)))


@pytest.mark.parametrize("isa", INT8_ISAS)
def test_int8_deterministic_across_runs_and_threads(isa):
    rng = np.random.default_rng(7)
    cin, cout, G, Cs, K, H, W = 48, 128, 2, 8, 128, 11, 13
    cb, idx, M = make_conv(rng, cin, cout, G, 5, 5, Cs, K)
    bias = rng.standard_normal(cout).astype(np.float32)
    k = set_build(_core.QConvKernel(cin, cout, G, 5, 5, (1, 1), (2, 2, 2, 2), Cs, M, K, cb, idx, bias,
                                    True, isa=kernel_isa(isa), lut="int8"), isa)
    xs = [rng.standard_normal((H, W, cin)).astype(np.float32) for _ in range(4)]

    def run(x):
        y = np.empty(k.out_shape(H, W), np.float32)
        k.run(x, y, np.empty(k.scratch_nbytes(H, W), np.uint8))
        return y

    expected = [run(x) for x in xs]
    for x, e in zip(xs, expected):
        assert np.array_equal(run(x), e)  # bit-identical on repeat

    results = {}

    def worker(t):
        results[t] = [run(xs[(t + i) % 4]) for i in range(20)]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t in range(4):
        for i, y in enumerate(results[t]):
            assert np.array_equal(y, expected[(t + i) % 4])


def test_isa_detection_matches_cpuinfo(monkeypatch):
    avail = _core.isa_available()
    assert avail[0] == "generic"
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = None
    if flags is not None:
        has512 = all(f in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512vbmi"))
        assert ("avx2" in avail) == ("avx2" in flags and "fma" in flags)
        assert ("avx512vbmi" in avail) == (has512 and "avx2" in flags and "fma" in flags)
        assert _core.cpu_has_bf16() == ("avx512f" in flags and "avx512_bf16" in flags)
    monkeypatch.delenv("QCNN_ISA", raising=False)
    assert _core.isa_selected() == avail[-1]
    monkeypatch.setenv("QCNN_ISA", "generic")
    assert _core.isa_selected() == "generic"
    monkeypatch.setenv("QCNN_ISA", "avx512vbmi")  # never raises above what the CPU has
    assert _core.isa_selected() == avail[-1]


def test_table_build_defaults_and_choices(monkeypatch):
    """int8 layers on AVX-512 build their tables in int8 where the CPU has VNNI, else bf16 where it
    has BF16, else fp32; table_build / QCNN_TABLE_BUILD pick another only where it can run."""
    rng = np.random.default_rng(3)
    cb, idx, M = make_conv(rng, 16, 70, 1, 3, 3, 4, 128)

    def conv(isa, lut="int8", cb=cb):
        return _core.QConvKernel(16, 70, 1, 3, 3, (1, 1), (1, 1, 1, 1), 4, M, 128, cb, idx, None, False,
                                 isa=isa, lut=lut)

    def can(kind, isa):
        return kind == "fp32" or (isa == "avx512vbmi" and (HAVE_BF16 if kind == "bf16" else HAVE_VNNI))

    def default(isa):
        return "int8" if can("int8", isa) else "bf16" if can("bf16", isa) else "fp32"

    monkeypatch.delenv("QCNN_TABLE_BUILD", raising=False)
    for isa in _core.isa_available():
        k = conv(isa)
        assert k.table_build == default(isa)
        assert k.bf16_build == (default(isa) == "bf16")
        for kind in ("bf16", "int8", "fp32"):
            if can(kind, isa):
                k.table_build = kind
                assert k.table_build == kind
            else:
                with pytest.raises(ValueError, match=f"table_build '{kind}': not available"):
                    k.table_build = kind
                assert k.table_build != kind
        assert k.table_build == "fp32" and not k.bf16_build
        with pytest.raises(ValueError, match="one of"):
            k.table_build = "int4"
        if not can("bf16", isa):
            with pytest.raises(ValueError, match="bf16_build: needs"):
                k.bf16_build = True
    assert conv("generic", "float").table_build == "fp32"
    top = _core.isa_available()[-1]
    for kind in ("fp32", "bf16", "int8"):  # read when a layer is prepared
        monkeypatch.setenv("QCNN_TABLE_BUILD", kind)
        assert conv(top).table_build == (kind if can(kind, top) else default(top))
    monkeypatch.delenv("QCNN_TABLE_BUILD")
    bad = cb.copy()
    bad[0, 0, 5, 1] = np.nan  # int8 codewords would turn it into a number: a float build instead
    assert conv(top, cb=bad).table_build == ("bf16" if can("bf16", top) else "fp32")
    # FC layers never build in int8; those with small tables keep fp32
    cbf, idxf, Mf = make_conv(rng, 64, 40, 1, 1, 1, 2, 32)
    fc = _core.QFcKernel(64, 40, 2, Mf, 32, cbf[0], idxf[0, 0, 0], None, False)
    assert fc.table_build == "fp32"
    if HAVE_VNNI:
        with pytest.raises(ValueError, match="not available"):
            fc.table_build = "int8"
    cbf, idxf, Mf = make_conv(rng, 64, 40, 1, 1, 1, 2, 64)
    fc = _core.QFcKernel(64, 40, 2, Mf, 64, cbf[0], idxf[0, 0, 0], None, False)
    assert fc.table_build == ("bf16" if can("bf16", top) else "fp32")


@pytest.mark.skipif(not HAVE_VNNI, reason="needs AVX-512 VBMI and VNNI")
@pytest.mark.parametrize("cin,H,W", [(2048, 3, 11), (3, 40, 300)])
def test_int8_build_rounds_inputs_in_chunks(cin, H, W):
    """The int8 build rounds 16 KB of a row's input bytes at a time (2048 channels: 8 pixels, so a row
    of 11 spans two passes) and at most 256 pixels (3 channels: a row of 300 spans two), with one
    step per image (row_step_limit raised) or per row."""
    rng = np.random.default_rng(cin)
    Cs, K, cout = (8, 128, 64) if cin > 8 else (3, 64, 70)
    cb, idx, M = make_conv(rng, cin, cout, 1, 3, 3, Cs, K)
    x = np.abs(rng.standard_normal((H, W, cin))).astype(np.float32)
    for limit in (0, 1 << 40):
        k = _core.QConvKernel(cin, cout, 1, 3, 3, (1, 1), (1, 1, 1, 1), Cs, M, K, cb, idx, None, True)
        assert k.table_build == "int8"
        k.row_step_limit = limit
        y = np.full(k.out_shape(H, W), np.nan, np.float32)
        step = k.run(x, y, np.empty(k.scratch_nbytes(H, W), np.uint8))
        xe, cbe = built_from(k, x, cb)
        y64, absterms, nlook = np_qconv(xe, cbe, idx, None, 1, (1, 1), (1, 1, 1, 1), True)
        check_close(y, step, "int8", y64, absterms, nlook)


@pytest.mark.skipif(not HAVE_VNNI, reason="needs AVX-512 VBMI and VNNI")
@pytest.mark.parametrize("Cs", [8, 6, 3])  # quads filled, padded, and a subspace layout not in quads
def test_int8_build_rounds_each_pixel_to_8_bits(Cs):
    """A pixel without negative values is rounded as u8 over [0, its max] (all-zero pixels stay
    zero), others as int8 over +-max|x|; the outputs stay within the int8 bound of those values,
    close to the fp32 build's, and a NaN input gives NaN outputs as in the other builds."""
    cin, cout, K, H, W = 24, 70, 128, 5, 7
    rng = np.random.default_rng(Cs)
    cb, idx, M = make_conv(rng, cin, cout, 1, 3, 3, Cs, K)
    x = np.abs(rng.standard_normal((H, W, cin))).astype(np.float32)
    x[0, 0] = 0.0
    x[1] = rng.standard_normal((W, cin))  # a row of signed pixels
    x[2, 3, 5] = -1e-3  # one slightly negative channel: the whole pixel is signed
    rounded = int8_inputs(x)
    levels = rounded[0, 1:] / (x[0, 1:].max(-1, keepdims=True) / np.float32(255))
    assert np.allclose(levels, np.rint(levels), atol=1e-3)  # u8 pixels: multiples of max/255
    assert not rounded[0, 0].any()
    k = _core.QConvKernel(cin, cout, 1, 3, 3, (1, 1), (1, 1, 1, 1), Cs, M, K, cb, idx, None, False)
    assert k.table_build == "int8"
    y = np.full(k.out_shape(H, W), np.nan, np.float32)
    step = k.run(x, y, np.empty(k.scratch_nbytes(H, W), np.uint8))
    xe, cbe = built_from(k, x, cb)
    y64, absterms, nlook = np_qconv(xe, cbe, idx, None, 1, (1, 1), (1, 1, 1, 1), False)
    check_close(y, step, "int8", y64, absterms, nlook)
    k.table_build = "fp32"
    y32 = np.full_like(y, np.nan)
    k.run(x, y32, np.empty(k.scratch_nbytes(H, W), np.uint8))
    assert np.linalg.norm(y - y32) / np.linalg.norm(y32) < 0.02
    x[2, 2, 0] = np.nan
    for kind in ("int8", "fp32"):
        k.table_build = kind
        k.run(x, y, np.empty(k.scratch_nbytes(H, W), np.uint8))
        assert np.isnan(y).any(), kind


def test_bad_inputs_raise_value_error():
    rng = np.random.default_rng(0)
    cb, idx, M = make_conv(rng, 8, 4, 1, 3, 3, 4, 16)
    args = (8, 4, 1, 3, 3, (1, 1), (1, 1, 1, 1), 4, M, 16)
    with pytest.raises(ValueError, match="dtype"):
        _core.QConvKernel(*args, cb.astype(np.float64), idx)
    with pytest.raises(ValueError, match="shape"):
        _core.QConvKernel(*args, cb, idx[..., :3])
    with pytest.raises(ValueError, match="nsub"):
        _core.QConvKernel(8, 4, 1, 3, 3, (1, 1), (1, 1, 1, 1), 4, M + 1, 16, cb, idx)
    bad = idx.copy()
    bad[0, 1, 1, 0, 2] = 16
    with pytest.raises(ValueError, match="ncode"):
        _core.QConvKernel(*args, cb, bad)
    with pytest.raises(ValueError, match="isa"):
        _core.QConvKernel(*args, cb, idx, isa="sse9")
    with pytest.raises(ValueError, match="lut"):
        _core.QConvKernel(*args, cb, idx, lut="int4")
    k = _core.QConvKernel(*args, cb, idx)
    x = np.zeros((5, 6, 8), np.float32)
    y = np.zeros(k.out_shape(5, 6), np.float32)
    with pytest.raises(ValueError, match="scratch"):
        k.run(x, y, np.empty(k.scratch_nbytes(5, 6) - 1, np.uint8))
    s = np.empty(k.scratch_nbytes(5, 6), np.uint8)
    with pytest.raises(ValueError, match="x"):
        k.run(np.zeros((5, 6, 7), np.float32), y, s)
    with pytest.raises(ValueError, match=r"expected shape \(5, 6, 4\)"):
        k.run(x, np.zeros((5, 5, 4), np.float32), s)
    with pytest.raises(ValueError, match="C-contiguous"):
        k.run(np.zeros((6, 5, 8), np.float32).transpose(1, 0, 2), y, s)
    k.run(x, y, s)  # a valid call still works
    assert np.all(y == 0)


def test_readonly_weights_are_accepted(tmp_path):
    """The runtime hands in views of a read-only mmap."""
    rng = np.random.default_rng(1)
    cb, idx, M = make_conv(rng, 6, 8, 1, 3, 3, 3, 16)
    f = tmp_path / "w.bin"
    f.write_bytes(cb.tobytes() + idx.tobytes())
    mm = np.memmap(f, mode="r", dtype=np.uint8)
    cbv = mm[: cb.nbytes].view(np.float32).reshape(cb.shape)
    idxv = mm[cb.nbytes:].reshape(idx.shape)
    assert not cbv.flags.writeable
    for lut in ("ref", "int8"):
        k = _core.QConvKernel(6, 8, 1, 3, 3, (1, 1), (1, 1, 1, 1), 3, M, 16, cbv, idxv, lut=lut)
        x = rng.standard_normal((4, 4, 6)).astype(np.float32)
        y = np.empty(k.out_shape(4, 4), np.float32)
        step = k.run(x, y, np.empty(k.scratch_nbytes(4, 4), np.uint8))
        y64, a, n = np_qconv(x, cb, idx, None, 1, (1, 1), (1, 1, 1, 1), False)
        check_close(y, step, lut, y64, a, n)
