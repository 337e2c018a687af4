# Product-quantized (LUT) conv / fc kernel wrappers and ISA dispatch. Owner: kernels work.
#
# The C side (runtime/kernels/qcnn_kernels.h, qlut_*.c) prepares a layer once and runs it per
# image with caller-provided scratch; these classes validate shapes/dtypes, keep the weight
# arrays alive (they may be views of an mmap) and release the GIL while computing.
# C names are aliased with a _qk prefix so other .pxi files may declare the same header.

from libc.stdint cimport uint8_t

import numpy as _qk_np

cdef extern from "qcnn_kernels.h" nogil:
    ctypedef int _qk_isa "qcnn_isa"
    ctypedef int _qk_lut_mode "qcnn_lut_mode"
    _qk_isa _QK_ISA_GENERIC "QCNN_ISA_GENERIC"
    _qk_isa _QK_ISA_AVX2 "QCNN_ISA_AVX2"
    _qk_isa _QK_ISA_AVX512VBMI "QCNN_ISA_AVX512VBMI"
    _qk_lut_mode _QK_LUT_REF "QCNN_LUT_REF"
    _qk_lut_mode _QK_LUT_FLOAT "QCNN_LUT_FLOAT"
    _qk_lut_mode _QK_LUT_INT8 "QCNN_LUT_INT8"

    _qk_isa _qk_isa_detect "qcnn_isa_detect"()
    _qk_isa _qk_isa_select "qcnn_isa_select"()
    const char *_qk_isa_name "qcnn_isa_name"(_qk_isa isa)

    ctypedef struct _qk_conv_params "qcnn_qconv_params":
        int cin, cout, groups
        int kh, kw, stride_h, stride_w
        int pad_top, pad_left, pad_bottom, pad_right
        int subvec, nsub, ncode
        const float *codebooks
        const uint8_t *indices
        const float *bias
        int relu
    ctypedef struct _qk_fc_params "qcnn_qfc_params":
        int in_ "in"
        int out
        int subvec, nsub, ncode
        const float *codebooks
        const uint8_t *indices
        const float *bias
        int relu
    ctypedef struct _qk_prepared "qcnn_qconv_prepared":
        pass

    void _qk_conv_out_size "qcnn_conv_out_size"(int h, int w, int kh, int kw, int stride_h,
                                                int stride_w, int pad_top, int pad_left,
                                                int pad_bottom, int pad_right, int *oh, int *ow)
    _qk_prepared *_qk_conv_prepare "qcnn_qconv_prepare"(const _qk_conv_params *p, _qk_isa isa,
                                                         _qk_lut_mode mode, const char **err)
    _qk_prepared *_qk_fc_prepare "qcnn_qfc_prepare"(const _qk_fc_params *p, _qk_isa isa,
                                                     _qk_lut_mode mode, const char **err)
    _qk_isa _qk_prepared_isa "qcnn_qconv_isa"(const _qk_prepared *q)
    int _qk_runs_by_rows "qcnn_qconv_runs_by_rows"(const _qk_prepared *q, int h, int w)
    size_t _qk_conv_scratch "qcnn_qconv_scratch_bytes"(const _qk_prepared *q, int h, int w)
    int _qk_pointwise_chunk "qcnn_qconv_pointwise_chunk"(const _qk_prepared *q)
    void _qk_set_table_budget "qcnn_qconv_set_table_budget"(_qk_prepared *q, size_t nbytes)
    size_t _qk_table_budget "qcnn_qconv_table_budget"(const _qk_prepared *q)
    void _qk_set_row_step_limit "qcnn_qconv_set_row_step_limit"(_qk_prepared *q, size_t nbytes)
    size_t _qk_row_step_limit "qcnn_qconv_row_step_limit"(const _qk_prepared *q)
    void _qk_set_row_guess_limit "qcnn_qconv_set_row_guess_limit"(_qk_prepared *q, size_t nbytes)
    size_t _qk_row_guess_limit "qcnn_qconv_row_guess_limit"(const _qk_prepared *q)
    void _qk_set_row_step_share "qcnn_qconv_set_row_step_share"(_qk_prepared *q, float share)
    float _qk_row_step_share "qcnn_qconv_row_step_share"(const _qk_prepared *q)
    int _qk_set_bf16_build "qcnn_qconv_set_bf16_build"(_qk_prepared *q, int on)
    int _qk_bf16_build "qcnn_qconv_bf16_build"(const _qk_prepared *q)
    int _qk_set_table_build "qcnn_qconv_set_table_build"(_qk_prepared *q, int kind)
    int _qk_table_build "qcnn_qconv_table_build"(const _qk_prepared *q)
    int _qk_cpu_has_bf16 "qcnn_cpu_has_avx512bf16"()
    int _qk_cpu_has_vnni "qcnn_cpu_has_avx512vnni"()
    void _qk_conv_run "qcnn_qconv_run"(const _qk_prepared *q, const float *x, int h, int w,
                                       float *y, void *scratch, float *lut_step)
    void _qk_conv_free "qcnn_qconv_free"(_qk_prepared *q)


_QK_ISA_NAMES = ("generic", "avx2", "avx512vbmi")
_QK_TABLE_BUILDS = ("fp32", "bf16", "int8")  # qcnn_table_build's order
_QK_LUT_MODES = {"ref": _QK_LUT_REF, "float": _QK_LUT_FLOAT, "int8": _QK_LUT_INT8}


def isa_available():
    """Names of the ISA levels this CPU (and OS) can run, lowest first."""
    return list(_QK_ISA_NAMES[: <int>_qk_isa_detect() + 1])


def cpu_has_bf16():
    """True if the CPU (and OS) support AVX512_BF16, which int8 layers use to build tables."""
    return bool(_qk_cpu_has_bf16())


def cpu_has_vnni():
    """True if the CPU (and OS) support AVX512_VNNI, which int8 conv layers use to build tables
    (and the int8 dense kernels to multiply)."""
    return bool(_qk_cpu_has_vnni())


def isa_selected():
    """The ISA 'auto' resolves to: the best available, lowered by env QCNN_ISA if set."""
    return _QK_ISA_NAMES[<int>_qk_isa_select()]


cdef _qk_isa _qk_parse_isa(str isa) except *:
    if isa == "auto":
        return _qk_isa_select()
    if isa not in _QK_ISA_NAMES:
        raise ValueError(f"isa: expected one of 'auto', {', '.join(map(repr, _QK_ISA_NAMES))}; got {isa!r}")
    if isa not in isa_available():
        raise ValueError(f"isa: {isa!r} is not supported by this CPU (available: {isa_available()})")
    return <_qk_isa>_QK_ISA_NAMES.index(isa)


cdef _qk_lut_mode _qk_parse_lut(str lut) except *:
    if lut not in _QK_LUT_MODES:
        raise ValueError(f"lut: expected one of 'int8', 'float', 'ref'; got {lut!r}")
    return <_qk_lut_mode>_QK_LUT_MODES[lut]


def _qk_check(name, a, dtype, shape, writable=False):
    """Raise ValueError unless `a` is a C-contiguous ndarray of this dtype and shape."""
    dt = _qk_np.dtype(dtype)
    if not isinstance(a, _qk_np.ndarray):
        raise ValueError(f"{name}: expected a numpy {dt} array of shape {tuple(shape)}, got {type(a).__name__}")
    if a.dtype != dt:
        raise ValueError(f"{name}: expected dtype {dt}, got {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")
    if not a.flags.aligned:  # C kernels read whole floats (UBSan: misaligned load)
        raise ValueError(f"{name}: expected an aligned array")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name}: expected a writable array")


cdef const float *_qk_fptr(a):
    cdef const float[::1] v = a.reshape(-1)
    return &v[0]

cdef float *_qk_fptr_w(a):
    cdef float[::1] v = a.reshape(-1)
    return &v[0]

cdef const uint8_t *_qk_bptr(a):
    cdef const uint8_t[::1] v = a.reshape(-1)
    return &v[0]


cdef class _QkBase:
    """Shared part of QConvKernel / QFcKernel: owns the prepared C object."""
    cdef _qk_prepared *_q
    cdef object _codebooks, _indices, _bias  # keep the weight arrays (maybe mmap views) alive
    cdef readonly str lut

    def __cinit__(self, *args, **kwargs):
        self._q = NULL

    def __dealloc__(self):
        if self._q != NULL:
            _qk_conv_free(self._q)
            self._q = NULL

    @property
    def isa(self):
        """The ISA the prepared kernel actually runs ('generic' for lut='ref'/'float')."""
        return _QK_ISA_NAMES[<int>_qk_prepared_isa(self._q)]

    @property
    def table_budget(self):
        """Bytes of float tables per chunk of a pointwise layer (each chunk has its own int8 step,
        so results depend on it). Set it before sharing the kernel between threads;
        scratch_nbytes() depends on it."""
        return _qk_table_budget(self._q)

    @table_budget.setter
    def table_budget(self, size_t nbytes):
        _qk_set_table_budget(self._q, nbytes)

    @property
    def row_step_limit(self):
        """Int8 layers (not pointwise) whose whole-image float tables exceed this many bytes
        quantize each input row with its own step (finer than one per image) and stream the rows
        through a ring of kernel-height rows: one build and tables that stay in cache. Default 0:
        every such layer; the others use one step for the whole image. Results depend on it, so
        the default is the same on every CPU. Set it before sharing the kernel between threads;
        scratch_nbytes() depends on it."""
        return _qk_row_step_limit(self._q)

    @row_step_limit.setter
    def row_step_limit(self, size_t nbytes):
        _qk_set_row_step_limit(self._q, nbytes)

    @property
    def row_guess_limit(self):
        """Row-step layers whose float tables of one input row reach this many bytes (default
        512 KB, more than half of a typical L2) take each row's step from the row above (its
        largest range x 1.125) and build and quantize the row in L1-sized segments; a row that
        does not fit the guess, or uses under half of it, is redone with its own step
        (qlut_generic.c). Results depend on it, so the default is the same on every CPU."""
        return _qk_row_guess_limit(self._q)

    @row_guess_limit.setter
    def row_guess_limit(self, size_t nbytes):
        _qk_set_row_guess_limit(self._q, nbytes)

    @property
    def row_step_share(self):
        """Row-step layers: a row keeps the step s of the row built before it when its largest
        range r fits it with r >= row_step_share * 255 * s (0: each row its own step); kernel
        rows of one step are summed in one call. Changes the values."""
        return _qk_row_step_share(self._q)

    @row_step_share.setter
    def row_step_share(self, float share):
        _qk_set_row_step_share(self._q, share)

    @property
    def bf16_build(self):
        """True if this int8 AVX-512 layer builds its tables with bf16 dot products
        (table_build == 'bf16'). Setting False selects fp32 FMAs; True where bf16 is unavailable
        raises ValueError. Set it before sharing the kernel between threads."""
        return bool(_qk_bf16_build(self._q))

    @bf16_build.setter
    def bf16_build(self, bint on):
        if _qk_set_bf16_build(self._q, on) != on:
            raise ValueError(f"bf16_build: needs lut='int8', isa='avx512vbmi' and a CPU with "
                             f"AVX512_BF16 (this layer: lut={self.lut!r}, isa={self.isa!r})")

    @property
    def table_build(self):
        """How this layer builds its int8 tables: 'fp32' (FMAs), 'bf16' (vdpbf16ps products) or
        'int8' (vpdpbusd products of inputs rounded to 8 bits per pixel and int8 codewords; see
        qcnn_kernels.h). The default is the fastest the CPU has for the layer; env
        QCNN_TABLE_BUILD at prepare time picks another. Setting one the layer or CPU cannot run
        raises ValueError. Set it before sharing the kernel between threads."""
        return _QK_TABLE_BUILDS[_qk_table_build(self._q)]

    @table_build.setter
    def table_build(self, kind):
        if kind not in _QK_TABLE_BUILDS:
            raise ValueError(f"table_build: one of {_QK_TABLE_BUILDS}, not {kind!r}")
        want = _QK_TABLE_BUILDS.index(kind)
        if _qk_set_table_build(self._q, want) != want:
            raise ValueError(f"table_build {kind!r}: not available for this layer (lut={self.lut!r}, "
                             f"isa={self.isa!r}; 'bf16' needs AVX512_BF16, 'int8' AVX512_VNNI and a "
                             f"conv layer)")

    @property
    def pointwise_chunk(self):
        """Pixels per chunk of a pointwise (1x1, stride 1, unpadded) layer, each chunk with its own
        int8 step; 0 for other layers (one step per image)."""
        return _qk_pointwise_chunk(self._q)

    cdef _scratch_ptr(self, scratch, size_t need):
        cdef uint8_t[::1] s
        try:
            s = scratch
        except (TypeError, ValueError, BufferError) as e:
            raise ValueError(f"scratch: expected a writable contiguous uint8 buffer, got {type(scratch).__name__}") from e
        if <size_t>s.shape[0] < need:
            raise ValueError(f"scratch: expected at least {need} bytes, got {s.shape[0]}")
        return s


cdef class QConvKernel(_QkBase):
    """Product-quantized convolution, one NHWC image per run().

    QConvKernel(cin, cout, groups, kh, kw, strides=(sh, sw), pads=(top, left, bottom, right),
                subvec, nsub, ncode, codebooks, indices, bias=None, relu=False,
                isa="auto", lut="int8")
      codebooks float32 [groups][nsub][ncode][subvec], indices uint8
      [groups][kh][kw][nsub][cout/groups], bias float32 [cout] or None.
    """
    cdef readonly int cin, cout, groups, kh, kw, stride_h, stride_w
    cdef readonly int pad_top, pad_left, pad_bottom, pad_right, subvec, nsub, ncode
    cdef readonly bint relu

    def __init__(self, int cin, int cout, int groups, int kh, int kw, strides, pads, int subvec,
                 int nsub, int ncode, codebooks, indices, bias=None, relu=False, str isa="auto",
                 str lut="int8"):
        cdef _qk_conv_params p
        cdef const char *err = NULL
        cdef _qk_isa cisa = _qk_parse_isa(isa)
        cdef _qk_lut_mode mode = _qk_parse_lut(lut)
        if self._q != NULL:
            raise RuntimeError("QConvKernel is already initialized")
        strides = tuple(strides)
        pads = tuple(pads)
        if len(strides) != 2:
            raise ValueError(f"strides: expected (stride_h, stride_w), got {strides!r}")
        if len(pads) != 4:
            raise ValueError(f"pads: expected (top, left, bottom, right), got {pads!r}")
        if groups <= 0 or cin <= 0 or cout <= 0 or cin % groups or cout % groups:
            raise ValueError(f"cin={cin} and cout={cout} must be positive multiples of groups={groups}")
        if subvec <= 0 or nsub != (cin // groups + subvec - 1) // subvec:
            raise ValueError(f"nsub: expected ceil((cin/groups)/subvec) = "
                             f"{(cin // groups + max(subvec, 1) - 1) // max(subvec, 1)}, got {nsub}")
        if not 1 <= ncode <= 256:
            raise ValueError(f"ncode: expected 1..256, got {ncode}")
        if kh <= 0 or kw <= 0 or min(strides) <= 0 or min(pads) < 0:
            raise ValueError(f"expected kh, kw, strides > 0 and pads >= 0; got kh={kh} kw={kw} strides={strides} pads={pads}")
        _qk_check("codebooks", codebooks, _qk_np.float32, (groups, nsub, ncode, subvec))
        _qk_check("indices", indices, _qk_np.uint8, (groups, kh, kw, nsub, cout // groups))
        if bias is not None:
            _qk_check("bias", bias, _qk_np.float32, (cout,))
        self.cin, self.cout, self.groups, self.kh, self.kw = cin, cout, groups, kh, kw
        self.stride_h, self.stride_w = strides
        self.pad_top, self.pad_left, self.pad_bottom, self.pad_right = pads
        self.subvec, self.nsub, self.ncode, self.relu, self.lut = subvec, nsub, ncode, relu, lut
        self._codebooks, self._indices, self._bias = codebooks, indices, bias
        p.cin, p.cout, p.groups, p.kh, p.kw = cin, cout, groups, kh, kw
        p.stride_h, p.stride_w = self.stride_h, self.stride_w
        p.pad_top, p.pad_left, p.pad_bottom, p.pad_right = pads
        p.subvec, p.nsub, p.ncode = subvec, nsub, ncode
        p.codebooks = _qk_fptr(codebooks)
        p.indices = _qk_bptr(indices)
        p.bias = _qk_fptr(bias) if bias is not None else NULL
        p.relu = 1 if relu else 0
        self._q = _qk_conv_prepare(&p, cisa, mode, &err)
        if self._q == NULL:
            raise ValueError(f"QConvKernel: {(<bytes>err).decode() if err != NULL else 'prepare failed'}")
        if mode == _QK_LUT_INT8 and _qk_prepared_isa(self._q) != _QK_ISA_GENERIC:
            self._indices = None  # the SIMD kernels read their own re-laid-out copy; free this one

    def out_shape(self, int h, int w):
        """(oh, ow, cout) for an h x w input."""
        cdef int oh, ow
        _qk_conv_out_size(h, w, self.kh, self.kw, self.stride_h, self.stride_w, self.pad_top,
                          self.pad_left, self.pad_bottom, self.pad_right, &oh, &ow)
        return (oh, ow, self.cout)

    def scratch_nbytes(self, int h, int w):
        """Bytes of scratch run() needs for an h x w input."""
        if h <= 0 or w <= 0:
            raise ValueError(f"expected h, w > 0, got {h}x{w}")
        return _qk_conv_scratch(self._q, h, w)

    def run(self, x, y, scratch):
        """y[oh][ow][cout] = layer(x[h][w][cin]). Returns the int8 table step (0.0 for float
        modes): each look-up is off by at most step/2. Runs without the GIL."""
        if not isinstance(x, _qk_np.ndarray) or x.ndim != 3:
            raise ValueError(f"x: expected a float32 array [h][w][{self.cin}], got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        cdef int h = x.shape[0], w = x.shape[1]
        if h <= 0 or w <= 0:
            raise ValueError(f"x: expected a non-empty image, got shape {x.shape}")
        _qk_check("x", x, _qk_np.float32, (h, w, self.cin))
        oshape = self.out_shape(h, w)
        if oshape[0] <= 0 or oshape[1] <= 0:
            raise ValueError(f"x: input {h}x{w} is smaller than the padded kernel")
        _qk_check("y", y, _qk_np.float32, oshape, writable=True)
        cdef size_t need = _qk_conv_scratch(self._q, h, w)
        cdef uint8_t[::1] s = self._scratch_ptr(scratch, need)
        cdef const float *xp = _qk_fptr(x)
        cdef float *yp = _qk_fptr_w(y)
        cdef float step = 0
        with nogil:
            _qk_conv_run(self._q, xp, h, w, yp, &s[0], &step)
        return step


cdef class QFcKernel(_QkBase):
    """Product-quantized fully connected layer: y[out] = layer(x[in]).

    QFcKernel(in_features, out_features, subvec, nsub, ncode, codebooks, indices, bias=None,
              relu=False, isa="auto", lut="int8")
      codebooks float32 [nsub][ncode][subvec], indices uint8 [nsub][out_features].
    """
    cdef readonly int in_features, out_features, subvec, nsub, ncode
    cdef readonly bint relu

    def __init__(self, int in_features, int out_features, int subvec, int nsub, int ncode,
                 codebooks, indices, bias=None, relu=False, str isa="auto", str lut="int8"):
        cdef _qk_fc_params p
        cdef const char *err = NULL
        cdef _qk_isa cisa = _qk_parse_isa(isa)
        cdef _qk_lut_mode mode = _qk_parse_lut(lut)
        if self._q != NULL:
            raise RuntimeError("QFcKernel is already initialized")
        if in_features <= 0 or out_features <= 0 or subvec <= 0:
            raise ValueError(f"expected in_features, out_features, subvec > 0")
        if nsub != (in_features + subvec - 1) // subvec:
            raise ValueError(f"nsub: expected ceil(in_features/subvec) = "
                             f"{(in_features + subvec - 1) // subvec}, got {nsub}")
        if not 1 <= ncode <= 256:
            raise ValueError(f"ncode: expected 1..256, got {ncode}")
        _qk_check("codebooks", codebooks, _qk_np.float32, (nsub, ncode, subvec))
        _qk_check("indices", indices, _qk_np.uint8, (nsub, out_features))
        if bias is not None:
            _qk_check("bias", bias, _qk_np.float32, (out_features,))
        self.in_features, self.out_features = in_features, out_features
        self.subvec, self.nsub, self.ncode, self.relu, self.lut = subvec, nsub, ncode, relu, lut
        self._codebooks, self._indices, self._bias = codebooks, indices, bias
        p.in_, p.out, p.subvec, p.nsub, p.ncode = in_features, out_features, subvec, nsub, ncode
        p.codebooks = _qk_fptr(codebooks)
        p.indices = _qk_bptr(indices)
        p.bias = _qk_fptr(bias) if bias is not None else NULL
        p.relu = 1 if relu else 0
        self._q = _qk_fc_prepare(&p, cisa, mode, &err)
        if self._q == NULL:
            raise ValueError(f"QFcKernel: {(<bytes>err).decode() if err != NULL else 'prepare failed'}")
        if mode == _QK_LUT_INT8 and _qk_prepared_isa(self._q) != _QK_ISA_GENERIC:
            self._indices = None  # the SIMD kernels read their own re-laid-out copy; free this one

    def scratch_nbytes(self):
        return _qk_conv_scratch(self._q, 1, 1)

    def run(self, x, y, scratch):
        """y[out] = layer(x[in]); returns the int8 table step (0.0 for float modes)."""
        _qk_check("x", x, _qk_np.float32, (self.in_features,))
        _qk_check("y", y, _qk_np.float32, (self.out_features,), writable=True)
        cdef size_t need = _qk_conv_scratch(self._q, 1, 1)
        cdef uint8_t[::1] s = self._scratch_ptr(scratch, need)
        cdef const float *xp = _qk_fptr(x)
        cdef float *yp = _qk_fptr_w(y)
        cdef float step = 0
        with nogil:
            _qk_conv_run(self._q, xp, 1, 1, yp, &s[0], &step)
        return step
