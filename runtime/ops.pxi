# Dense and elementwise op wrappers. Owner: ops work.
#
# Python-facing wrappers of runtime/kernels/ops.h. Activations are float32 C-contiguous numpy
# arrays (or any buffer) in NHWC layout [H][W][C], one image per call. Every wrapper checks
# shapes and dtypes first (ValueError naming expected vs got), then runs the C code with the
# GIL released. Names private to this file start with _ops_ because all .pxi files share one
# module namespace.

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stddef cimport size_t
from libc.string cimport memset

import numpy as _ops_np

cdef extern from "ops.h" nogil:
    int qcnn_ops_resolve_isa(int requested)

    ctypedef struct qcnn_pool_params:
        int kh, kw, stride_h, stride_w
        int pad_top, pad_left, pad_bottom, pad_right
        int count_include_pad
    ctypedef struct qcnn_lrn_params:
        int size
        float alpha, beta, bias

    ctypedef struct qcnn_dconv_params:
        int cin, cout, groups
        int kh, kw, stride_h, stride_w
        int pad_top, pad_left, pad_bottom, pad_right
        int relu
        const float *weight
        const float *packed
        const float *bias
    int qcnn_dconv_out_size(const qcnn_dconv_params *p, int h, int w, int *oh, int *ow)
    size_t qcnn_dconv_packed_floats(const qcnn_dconv_params *p)
    void qcnn_dconv_pack(const qcnn_dconv_params *p, const float *w_onnx, float *packed)
    void qcnn_dconv_ref(const qcnn_dconv_params *p, const float *x, int h, int w, float *y,
                        int ystride)
    size_t qcnn_dconv_scratch_floats(const qcnn_dconv_params *p, int h, int w)
    void qcnn_dconv_run(const qcnn_dconv_params *p, int isa, const float *x, int h, int w,
                        float *y, int ystride, float *scratch)

    ctypedef struct qcnn_iconv_params:
        qcnn_dconv_params geom
        int nseg, seglen, nquad
        const signed char *wq
        const short *wq16
        const signed char *wq_amx
        const float *wscale
        const int *wsum
        const short *wino_u
        const float *wino_uscale
        int wino_always
    size_t qcnn_iconv_init(qcnn_iconv_params *p, const qcnn_dconv_params *geom)
    size_t qcnn_iconv_channels(const qcnn_iconv_params *p)
    void qcnn_iconv_pack(const qcnn_iconv_params *p, const float *w_onnx, signed char *wq,
                         float *wscale, int *wsum)
    void qcnn_iconv_widen(const qcnn_iconv_params *p, short *wq16)
    int qcnn_iconv_fast_available()
    int qcnn_wino_applies(const qcnn_dconv_params *g)
    int qcnn_wino_pays(const qcnn_dconv_params *g, int oh, int ow)
    int qcnn_wino_pays_avx2(const qcnn_dconv_params *g, int oh, int ow)
    size_t qcnn_wino_weight_count(const qcnn_dconv_params *g)
    void qcnn_wino_pack(const qcnn_dconv_params *g, const float *w_onnx, short *u, float *uscale)
    int qcnn_iconv_avx2_available()
    int qcnn_iconv_amx_available()
    size_t qcnn_iconv_pack_amx(const qcnn_iconv_params *p, signed char *wq_amx)
    int qcnn_iconv_amx_pays(const qcnn_iconv_params *p)
    size_t qcnn_iconv_scratch_bytes(const qcnn_iconv_params *p, int h, int w)
    int qcnn_iconv_run(const qcnn_iconv_params *p, int fast, const float *x, int h, int w,
                       float *y, int ystride, void *scratch)
    size_t qcnn_iconv_pool_scratch_bytes(const qcnn_iconv_params *p, const qcnn_pool_params *pool,
                                         int h, int w)
    int qcnn_iconv_run_maxpool(const qcnn_iconv_params *p, int fast, const float *x, int h, int w,
                               const qcnn_lrn_params *lrn, const qcnn_pool_params *pool, float *y, int poh,
                               int pow_, void *scratch)
    size_t qcnn_qconv_pool_scratch_bytes(const _qk_prepared *q, const qcnn_pool_params *pool, int h,
                                         int w, int ow, int cout)
    int qcnn_qconv_run_maxpool(const _qk_prepared *q, const float *x, int h, int w, int oh, int ow,
                               int cout, const qcnn_lrn_params *lrn, const qcnn_pool_params *pool, float *y,
                               int poh, int pow_, int isa, void *scratch, float *lut_step)

    ctypedef struct qcnn_dfc_params:
        int in_ "in"
        int out, relu
        const float *weight
        const float *bias
    void qcnn_dfc_ref(const qcnn_dfc_params *p, const float *x, float *y)
    void qcnn_dfc_run(const qcnn_dfc_params *p, int isa, const float *x, float *y)

    void qcnn_relu(const float *x, float *y, size_t n)
    void qcnn_add(const float *a, const float *b, float *y, size_t n, int relu)
    void qcnn_softmax(const float *x, float *y, int rows, int n)
    void qcnn_copy_channels(const float *x, size_t npix, int cx, float *y, int cy, int c_offset)
    void qcnn_nhwc_to_nchw(const float *x, int h, int w, int c, float *y)
    size_t qcnn_nchw_to_nhwc(const float *x, int c, int h, int w, float *y, int isa)
    void qcnn_lrn_ref(const float *x, float *y, size_t npix, int c, int size, float alpha,
                      float beta, float bias)
    void qcnn_lrn(const float *x, float *y, size_t npix, int c, int size, float alpha,
                  float beta, float bias, int isa)

    int qcnn_pool_out_size(int in_, int k, int stride, int pad_begin, int pad_end, int ceil_mode)
    void qcnn_maxpool_ref(const qcnn_pool_params *p, const float *x, int h, int w, int c,
                          float *y, int oh, int ow)
    void qcnn_maxpool(const qcnn_pool_params *p, const float *x, int h, int w, int c, float *y,
                      int oh, int ow, int isa)
    void qcnn_avgpool(const qcnn_pool_params *p, const float *x, int h, int w, int c, float *y,
                      int oh, int ow)
    void qcnn_global_avgpool(const float *x, int h, int w, int c, float *y)


# "ref" is the plain reference loop; the others name a fast path (qcnn_isa values).
_OPS_F32 = _ops_np.dtype(_ops_np.float32)
_OPS_ISA_CODES = {"auto": -1, "generic": 0, "avx2": 1, "avx512": 2}
_OPS_ISA_NAMES = {0: "generic", 1: "avx2", 2: "avx512"}


# Resolved once per name and process: CPUID is slow under a hypervisor and would dominate
# small ops (a 30 us pool), so QCNN_ISA is read at the first call that says "auto".
_OPS_ISA_RESOLVED = {}


cdef int _ops_isa(object isa, bint allow_ref) except -3:
    """Resolve an isa name to a code (-2 = reference loops); ValueError if unusable."""
    if allow_ref and isa == "ref":
        return -2
    code = _OPS_ISA_RESOLVED.get(isa)
    if code is not None:
        return code
    if isa not in _OPS_ISA_CODES:
        choices = ["ref"] + list(_OPS_ISA_CODES) if allow_ref else list(_OPS_ISA_CODES)
        raise ValueError(f"isa must be one of {choices}, got {isa!r}")
    code = qcnn_ops_resolve_isa(_OPS_ISA_CODES[isa])
    if code < 0:
        raise ValueError(f"isa {isa!r} is not supported by this CPU")
    _OPS_ISA_RESOLVED[isa] = code
    return code


def ops_available_isas():
    """Fast-path ISAs this CPU can run (always includes 'generic')."""
    return [name for name in ("generic", "avx2", "avx512")
            if qcnn_ops_resolve_isa(_OPS_ISA_CODES[name]) >= 0]


cdef object _ops_check(object a, str name, int ndim, bint writable=False):
    """Check a float32, C-contiguous array of `ndim` dims (0: any); returns it as an ndarray.
    Buffers such as memoryviews are viewed without copying, so outputs stay shared."""
    if not isinstance(a, _ops_np.ndarray):
        try:
            a = _ops_np.asarray(memoryview(a))
        except TypeError:
            raise ValueError(f"{name}: expected a float32 array or buffer, got {type(a).__name__}") from None
    if a.dtype is not _OPS_F32 and a.dtype != _OPS_F32:  # `is`: fast path for the common case
        raise ValueError(f"{name}: expected dtype float32, got {a.dtype}")
    if ndim > 0 and a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got a strided view")
    if not a.flags.aligned:  # C kernels read whole floats (UBSan: misaligned load)
        raise ValueError(f"{name}: expected an aligned array, got one at an odd address")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name}: expected a writable array, got a read-only one")
    return a


cdef void _ops_shape(object a, str name, tuple expected) except *:
    if tuple(a.shape) != expected:
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(a.shape)}")


cdef inline float *_ops_ptr(object a) except NULL:
    """Data pointer of a checked, non-empty float32 C-contiguous array (via the buffer
    protocol: cheap, and fine for read-only inputs). The caller keeps `a` alive."""
    cdef Py_buffer view
    PyObject_GetBuffer(a, &view, PyBUF_SIMPLE)
    cdef float *p = <float *>view.buf
    PyBuffer_Release(&view)
    return p


cdef inline bint _ops_ranges_overlap(size_t pa, size_t na, size_t pb, size_t nb):
    return na > 0 and nb > 0 and pa < pb + nb and pb < pa + na


cdef bint _ops_overlap(object a, object b) except -1:
    """Whether two checked C-contiguous arrays share memory (a bounds test, which is exact
    for contiguous arrays, and much cheaper than numpy's general one)."""
    if a.size == 0 or b.size == 0:
        return False
    return _ops_ranges_overlap(<size_t>_ops_ptr(a), a.nbytes, <size_t>_ops_ptr(b), b.nbytes)


cdef void _ops_same_or_disjoint(object out, object inp, str name) except *:
    """Elementwise ops may run in place (out is inp) but not on partly overlapping buffers."""
    if out.size and inp.size and _ops_ptr(out) != _ops_ptr(inp) and _ops_overlap(out, inp):
        raise ValueError(f"{name}: expected the same buffer as the output or a disjoint one, "
                         "got a partly overlapping one")


cdef inline void _ops_nonempty(object a, str name) except *:
    if a.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {a.shape}")


def int8_conv_fast_available():
    """True if this CPU runs the int8 dense conv's AVX-512 VNNI kernel."""
    return bool(qcnn_iconv_fast_available())


def int8_conv_amx_available():
    """True if this CPU (and OS) runs the int8 dense conv's AMX kernel and QCNN_AMX is not 0."""
    return bool(qcnn_iconv_amx_available())


def _winograd_enabled():
    """QCNN_WINOGRAD=0 turns the Winograd int8 convs off (for comparisons); read per kernel."""
    import os
    return os.environ.get("QCNN_WINOGRAD", "1") != "0"


cdef class _Int8Weights:
    """The int8 weights of a dense conv or FC layer (qcnn_iconv_pack: int8 per output channel,
    their scales and sums) plus the copy the chosen kernel reads: AMX tiles' layout, or 16-bit
    values for AVX2. pack() fills the pointers of a qcnn_iconv_params set up by qcnn_iconv_init."""
    cdef readonly object wq, wq16, wq_amx, wscale, wsum, wino_u, wino_uscale
    cdef readonly bint fast  # a SIMD kernel runs (else portable C)

    cdef void pack(self, qcnn_iconv_params *ip, const qcnn_dconv_params *geom, const float *weight,
                   int isa_code, object amx, object winograd=False) except *:
        cdef signed char[::1] wq_v, wq_amx_v
        cdef short[::1] wq16_v, wino_v
        cdef int[::1] wsum_v
        self.wq16 = self.wq_amx = self.wino_u = self.wino_uscale = None
        self.wq = _ops_np.empty(qcnn_iconv_init(ip, geom), dtype=_ops_np.int8)
        nch = qcnn_iconv_channels(ip)
        self.wscale = _ops_np.empty(nch, dtype=_ops_np.float32)
        self.wsum = _ops_np.empty(nch, dtype=_ops_np.int32)
        wq_v = self.wq
        wsum_v = self.wsum
        qcnn_iconv_pack(ip, weight, &wq_v[0], _ops_ptr(self.wscale), &wsum_v[0])
        ip.wq = &wq_v[0]
        ip.wscale = _ops_ptr(self.wscale)
        ip.wsum = &wsum_v[0]
        self.fast = isa_code == 2 and qcnn_iconv_fast_available()
        if (self.fast and amx is not False and qcnn_iconv_amx_available()
                and (amx is True or qcnn_iconv_amx_pays(ip))):
            self.wq_amx = _ops_np.empty(qcnn_iconv_pack_amx(ip, NULL), dtype=_ops_np.int8)
            wq_amx_v = self.wq_amx
            qcnn_iconv_pack_amx(ip, &wq_amx_v[0])
            ip.wq_amx = &wq_amx_v[0]
        if not self.fast and isa_code >= 1 and qcnn_iconv_avx2_available():
            # the AVX2 kernel multiplies 16-bit copies of the weights (vpmaddwd)
            self.wq16 = _ops_np.empty(self.wq.shape[0], dtype=_ops_np.int16)
            wq16_v = self.wq16
            qcnn_iconv_widen(ip, &wq16_v[0])
            ip.wq16 = &wq16_v[0]
            self.fast = True
        auto = winograd is None  # where its fast kernels (AVX-512 VNNI, AVX2) run, and then only
        if auto:                 # on images where it pays (qcnn_wino_pays(_avx2), per run)
            winograd = self.fast and self.wq_amx is None and _winograd_enabled()
        if winograd and qcnn_wino_applies(geom):
            self.wino_u = _ops_np.empty(qcnn_wino_weight_count(geom), dtype=_ops_np.int16)
            self.wino_uscale = _ops_np.empty(36 * geom.cout, dtype=_ops_np.float32)
            wino_v = self.wino_u
            qcnn_wino_pack(geom, weight, &wino_v[0], _ops_ptr(self.wino_uscale))
            ip.wino_u = &wino_v[0]
            ip.wino_uscale = _ops_ptr(self.wino_uscale)
            ip.wino_always = not auto

    @property
    def isa(self):
        """Which int8 kernel runs: 'amx', 'avx512vnni', 'avx2' or 'generic'."""
        if not self.fast:
            return "generic"
        if self.wq_amx is not None:
            return "amx"
        return "avx2" if self.wq16 is not None else "avx512vnni"


cdef class DenseConvKernel:
    """Dense ONNX Conv (dilation 1) over one NHWC image, weights packed once at construction.

    weight: float32 [cout][cin/groups][kh][kw] (ONNX layout); bias: [cout] or None.
    strides (sh, sw); pads (top, left, bottom, right) — note: ONNX orders pads as
    (top, left, bottom, right) too. isa: "auto" | "generic" | "avx2" | "avx512" | "ref".

    precision "int8": uint8 input (per image) x int8 weights (per channel), summed exactly in
    int32 (ops.h, qcnn_iconv_params) — with the AMX tile kernel when isa is avx512, the CPU has
    AMX and amx is None (the default: where it beats VNNI) or True (always), else the VNNI kernel
    when the CPU has it and isa is avx512, the AVX2
    kernel when isa is avx2 (or avx512 without VNNI), else portable C; all of them compute the
    same integers (int8_isa tells which ran). An image holding NaN or infinity runs in fp32
    instead. "fp32" (default): float arithmetic.

    winograd (int8 only): run a 3x3 stride-1 ungrouped conv (cin a multiple of 32, cout of 64) as
    Winograd F(4x4, 3x3) in 16-bit integers (ops.h, qcnn_wino_row): same input rounding, the
    transformed weights rounded to 11-13 bits, about 1.5x the VNNI kernel's speed and 2x the AVX2
    one's. None (default): where it applies and the VNNI or AVX2 kernel would run (not AMX),
    unless QCNN_WINOGRAD=0; True: wherever it applies, on any isa (portable C without AVX2);
    False: never.
    """
    cdef qcnn_dconv_params p
    cdef qcnn_iconv_params ip
    cdef int isa_code
    cdef bint int8_fast
    cdef readonly object weight, packed, bias
    cdef readonly _Int8Weights int8  # precision "int8": its weights; else None
    cdef readonly str isa, precision

    def __init__(self, weight, bias=None, strides=(1, 1), pads=(0, 0, 0, 0), int groups=1,
                 bint relu=False, isa="auto", precision="fp32", amx=None, winograd=None):
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be 'fp32' or 'int8', got {precision!r}")
        w = _ops_check(_ops_np.ascontiguousarray(weight, dtype=_ops_np.float32), "weight", 4)
        cout, cin_g, kh, kw = (int(d) for d in w.shape)
        if groups < 1 or cout % groups != 0:
            raise ValueError(f"groups: expected a divisor of cout={cout}, got {groups}")
        if min(cout, cin_g, kh, kw) < 1:
            raise ValueError(f"weight: expected non-empty [cout][cin/g][kh][kw], got {w.shape}")
        strides = tuple(int(s) for s in strides)
        pads = tuple(int(q) for q in pads)
        if len(strides) != 2 or min(strides) < 1:
            raise ValueError(f"strides: expected 2 positive ints, got {strides}")
        if len(pads) != 4 or min(pads) < 0:
            raise ValueError(f"pads: expected 4 non-negative ints (t, l, b, r), got {pads}")
        self.isa_code = _ops_isa(isa, True)
        self.isa = isa if isa == "ref" else _OPS_ISA_NAMES[self.isa_code]
        self.weight = w
        self.p.cin = cin_g * groups
        self.p.cout = cout
        self.p.groups = groups
        self.p.kh, self.p.kw = kh, kw
        self.p.stride_h, self.p.stride_w = strides
        self.p.pad_top, self.p.pad_left, self.p.pad_bottom, self.p.pad_right = pads
        self.p.relu = relu
        self.p.weight = _ops_ptr(w)
        if bias is not None:
            b = _ops_check(_ops_np.ascontiguousarray(bias, dtype=_ops_np.float32), "bias", 1)
            _ops_shape(b, "bias", (cout,))
            self.bias = b
            self.p.bias = _ops_ptr(b)
        else:
            self.bias = None
            self.p.bias = NULL
        self.packed = _ops_np.empty(qcnn_dconv_packed_floats(&self.p), dtype=_ops_np.float32)
        qcnn_dconv_pack(&self.p, self.p.weight, _ops_ptr(self.packed))
        self.p.packed = _ops_ptr(self.packed)
        self.precision = precision
        self.int8 = None
        if precision == "int8":
            if self.isa_code == -2:
                raise ValueError("precision 'int8' has no 'ref' isa (its reference is isa='generic')")
            self.int8 = _Int8Weights()
            if winograd and not qcnn_wino_applies(&self.p):
                raise ValueError("winograd: needs a 3x3 stride-1 ungrouped conv with cin a multiple of 32 "
                                 f"and cout a multiple of 64, got {kh}x{kw} strides {strides} groups {groups} "
                                 f"cin {self.p.cin} cout {cout}")
            self.int8.pack(&self.ip, &self.p, self.p.weight, self.isa_code, amx, winograd)
            self.int8_fast = self.int8.fast
        elif winograd:
            raise ValueError("winograd: only with precision 'int8'")

    @property
    def winograd(self):
        """True when the int8 conv runs as Winograd F(4x4, 3x3) (ops.h, qcnn_wino_row): always
        if asked for with winograd=True; by default only on images where it pays
        (winograd_for(h, w) says which)."""
        return self.int8 is not None and self.int8.wino_u is not None

    def winograd_for(self, int h, int w):
        """Whether a run on an h x w image takes the Winograd kernel."""
        if not self.winograd:
            return False
        oh, ow, _ = self.out_shape(h, w)
        if self.ip.wino_always:
            return True
        if self.int8.wq16 is not None:  # against the direct AVX2 kernel
            return bool(qcnn_wino_pays_avx2(&self.p, oh, ow))
        return bool(qcnn_wino_pays(&self.p, oh, ow))

    @property
    def int8_isa(self):
        """Which int8 kernel runs: 'amx', 'avx512vnni', 'avx2', 'generic', or None for precision fp32."""
        return None if self.int8 is None else self.int8.isa

    @property
    def cin(self):
        return self.p.cin

    @property
    def cout(self):
        return self.p.cout

    def out_shape(self, int h, int w):
        """(oh, ow, cout) for an h x w input; ValueError if the kernel does not fit."""
        cdef int oh, ow
        if h < 1 or w < 1 or not qcnn_dconv_out_size(&self.p, h, w, &oh, &ow):
            raise ValueError(f"input {h}x{w} (padded) is smaller than the {self.p.kh}x{self.p.kw} kernel")
        return (oh, ow, self.p.cout)

    def scratch_nbytes(self, int h, int w):
        if self.isa_code == -2:
            return 0
        need = int(qcnn_dconv_scratch_floats(&self.p, h, w) * sizeof(float))
        if self.precision == "int8":  # the fp32 path stays the fallback for non-finite inputs
            need = max(need, int(qcnn_iconv_scratch_bytes(&self.ip, h, w)))
        return need

    def run(self, x_hwc, y_hwc, scratch=None, int out_channel_offset=0):
        """y_hwc[:] = conv(x_hwc). scratch: writable buffer of >= scratch_nbytes(h, w) bytes.

        y_hwc may have more than cout channels: the result then goes to channels
        [out_channel_offset, out_channel_offset + cout) and the others are left alone, so
        e.g. the two expand convs of a SqueezeNet fire module can write straight into the
        Concat's output instead of being copied there."""
        x = _ops_check(x_hwc, "x", 3)
        y = _ops_check(y_hwc, "y", 3, True)
        h, w, c = x.shape
        if c != self.p.cin:
            raise ValueError(f"x: expected {self.p.cin} channels, got shape {x.shape}")
        oh, ow, cout = self.out_shape(h, w)
        cdef int ystride = y.shape[2]
        if (out_channel_offset < 0 or tuple(y.shape[:2]) != (oh, ow)
                or out_channel_offset + cout > ystride):
            want = (oh, ow, cout) if out_channel_offset == 0 else (oh, ow, f">= {out_channel_offset + cout}")
            raise ValueError(f"y: expected shape {want} (out_channel_offset={out_channel_offset}), "
                             f"got {tuple(y.shape)}")
        if _ops_overlap(x, y):
            raise ValueError("y: expected a buffer distinct from x, got an overlapping one")
        cdef size_t need = self.scratch_nbytes(h, w)
        cdef unsigned char[::1] s
        cdef float *sp = NULL
        if need:
            if scratch is None:
                raise ValueError(f"scratch: expected a buffer of >= {need} bytes, got None")
            s = memoryview(scratch).cast("B")
            if <size_t>s.shape[0] < need:
                raise ValueError(f"scratch: expected >= {need} bytes, got {s.shape[0]}")
            if (_ops_ranges_overlap(<size_t>&s[0], need, <size_t>_ops_ptr(x), x.nbytes) or
                    _ops_ranges_overlap(<size_t>&s[0], need, <size_t>_ops_ptr(y), y.nbytes)):
                raise ValueError("scratch: expected a buffer separate from x and y, got an overlapping one")
            sp = <float *>&s[0]
        cdef const float *xp = _ops_ptr(x)
        cdef float *yp = _ops_ptr(y) + out_channel_offset
        cdef int ih = h, iw = w, code = self.isa_code, fast = self.int8_fast, done = 0
        cdef bint int8 = self.precision == "int8"
        with nogil:
            if code == -2:
                qcnn_dconv_ref(&self.p, xp, ih, iw, yp, ystride)
            else:
                if int8:
                    done = qcnn_iconv_run(&self.ip, fast, xp, ih, iw, yp, ystride, sp)
                if not done:
                    qcnn_dconv_run(&self.p, code, xp, ih, iw, yp, ystride, sp)
        return y_hwc


cdef int _pool_init(qcnn_pool_params *p, kernel, strides, pads) except -1:
    """Fill p from ONNX MaxPool attributes; ValueError if they are invalid."""
    kh, kw = (int(v) for v in kernel)
    sh, sw = (int(v) for v in strides)
    pt, pl, pb, pr = (int(v) for v in pads)
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or min(pt, pl, pb, pr) < 0:
        raise ValueError(f"pooling: expected kernel/strides >= 1 and pads >= 0, got "
                         f"kernel ({kh}, {kw}) strides ({sh}, {sw}) pads ({pt}, {pl}, {pb}, {pr})")
    p.kh, p.kw, p.stride_h, p.stride_w = kh, kw, sh, sw
    p.pad_top, p.pad_left, p.pad_bottom, p.pad_right = pt, pl, pb, pr
    p.count_include_pad = 0
    return 0


cdef bint _lrn_init(qcnn_lrn_params *p, lrn) except -1:
    """Fill p from (size, alpha, beta, bias) as the ONNX LRN; False for lrn None."""
    if lrn is None:
        return False
    size, alpha, beta, bias = lrn
    if int(size) < 1:
        raise ValueError(f"lrn: expected size >= 1, got {size}")
    p.size, p.alpha, p.beta, p.bias = int(size), alpha, beta, bias
    return True


cdef tuple _pooled_shape(const qcnn_pool_params *q, bint ceil_mode, int oh, int ow, int c):
    """(poh, pow, c) of pooling an oh x ow x c conv output; ValueError if it does not fit."""
    poh = qcnn_pool_out_size(oh, q.kh, q.stride_h, q.pad_top, q.pad_bottom, ceil_mode)
    pw = qcnn_pool_out_size(ow, q.kw, q.stride_w, q.pad_left, q.pad_right, ceil_mode)
    if poh < 1 or pw < 1:
        raise ValueError(f"pooling {q.kh}x{q.kw} does not fit the conv's {oh}x{ow} output")
    return (poh, pw, c)


cdef unsigned char[::1] _fused_pool_buffers(x, y, want, scratch, size_t need):
    """The checks a fused conv + pool run makes of y (shape want, apart from x) and of scratch
    (>= need bytes, apart from x and y); returns scratch as bytes."""
    if tuple(y.shape) != want:
        raise ValueError(f"y: expected shape {want}, got {tuple(y.shape)}")
    if _ops_overlap(x, y):
        raise ValueError("y: expected a buffer distinct from x, got an overlapping one")
    if scratch is None:
        raise ValueError(f"scratch: expected a buffer of >= {need} bytes, got None")
    cdef unsigned char[::1] s = memoryview(scratch).cast("B")
    if <size_t>s.shape[0] < need:
        raise ValueError(f"scratch: expected >= {need} bytes, got {s.shape[0]}")
    if (_ops_ranges_overlap(<size_t>&s[0], need, <size_t>_ops_ptr(x), x.nbytes) or
            _ops_ranges_overlap(<size_t>&s[0], need, <size_t>_ops_ptr(y), y.nbytes)):
        raise ValueError("scratch: expected a buffer separate from x and y, got an overlapping one")
    return s


cdef class ConvMaxPoolKernel:
    """A dense conv (DenseConvKernel, its ReLU included), optionally an LRN, and the MaxPool that
    reads the result, run as one step: with int8 precision the conv rows are normalised and pooled
    a band at a time while still in cache (qcnn_iconv_run_maxpool), so no full intermediate is
    written; otherwise (fp32, the reference, or an image holding NaN or infinity) the conv runs
    whole into the scratch, then the LRN, and is pooled from there. Either way the values are
    those of conv.run, lrn, then maxpool.

    kernel (kh, kw), strides (sh, sw), pads (t, l, b, r) and ceil_mode as the ONNX MaxPool;
    lrn: None or (size, alpha, beta, bias) as the ONNX LRN."""
    cdef readonly DenseConvKernel conv
    cdef qcnn_pool_params pool
    cdef qcnn_lrn_params lrnp
    cdef readonly bint ceil_mode, has_lrn

    def __init__(self, DenseConvKernel conv, kernel, strides, pads=(0, 0, 0, 0), bint ceil_mode=False,
                 lrn=None):
        _pool_init(&self.pool, kernel, strides, pads)
        self.conv = conv
        self.ceil_mode = ceil_mode
        self.has_lrn = _lrn_init(&self.lrnp, lrn)

    @property
    def precision(self):
        return self.conv.precision

    @property
    def int8_isa(self):
        return self.conv.int8_isa

    @property
    def winograd(self):
        return self.conv.winograd

    def conv_shape(self, int h, int w):
        return self.conv.out_shape(h, w)

    def out_shape(self, int h, int w):
        """(poh, pow, cout) for an h x w input; ValueError if the conv or the pooling does not fit."""
        oh, ow, c = self.conv.out_shape(h, w)
        return _pooled_shape(&self.pool, self.ceil_mode, oh, ow, c)

    def scratch_nbytes(self, int h, int w):
        """The conv's scratch, then room for its whole output (the unfused path)."""
        oh, ow, c = self.conv.out_shape(h, w)
        need = int(self.conv.scratch_nbytes(h, w))
        need = (need + 63) // 64 * 64 + 4 * oh * ow * c + 64
        if self.has_lrn:  # the unfused path's LRN output
            need += 4 * oh * ow * c + 64
        if self.conv.precision == "int8" and self.conv.isa_code != -2:
            need = max(need, int(qcnn_iconv_pool_scratch_bytes(&self.conv.ip, &self.pool, h, w)))
        return need

    def run(self, x_hwc, y_hwc, scratch=None):
        """y_hwc[:] = maxpool(conv(x_hwc)). scratch: writable, >= scratch_nbytes(h, w) bytes."""
        x = _ops_check(x_hwc, "x", 3)
        y = _ops_check(y_hwc, "y", 3, True)
        h, w, c = x.shape
        if c != self.conv.p.cin:
            raise ValueError(f"x: expected {self.conv.p.cin} channels, got shape {x.shape}")
        want = self.out_shape(h, w)
        cdef unsigned char[::1] s = _fused_pool_buffers(x, y, want, scratch, self.scratch_nbytes(h, w))
        cdef const float *xp = _ops_ptr(x)
        cdef float *yp = _ops_ptr(y)
        cdef int ih = h, iw = w, poh = want[0], pw = want[1], cout = want[2], done = 0
        cdef int fast = self.conv.int8_fast
        if self.conv.precision == "int8" and self.conv.isa_code != -2:
            with nogil:
                done = qcnn_iconv_run_maxpool(&self.conv.ip, fast, xp, ih, iw,
                                              &self.lrnp if self.has_lrn else NULL, &self.pool, yp, poh, pw,
                                              &s[0])
            if done:
                return y_hwc
        # unfused: the conv's output in the scratch, behind the conv's own scratch
        oh, ow, _ = self.conv.out_shape(h, w)
        cdef size_t off = (<size_t>self.conv.scratch_nbytes(h, w) + 63) // 64 * 64
        cdef size_t base = <size_t>&s[0]
        cdef size_t aligned = (base + off + 63) // 64 * 64
        tmp = _ops_np.frombuffer(scratch, dtype=_ops_np.float32, count=oh * ow * cout,
                                 offset=aligned - base).reshape(oh, ow, cout)
        self.conv.run(x, tmp, scratch[:off] if off else None)
        cdef int ioh = oh, iow = ow
        cdef float *tp = <float *>aligned
        cdef float *lp
        cdef int code = self.conv.isa_code
        cdef size_t npix = <size_t>oh * ow
        if self.has_lrn:  # LRN into the next region of the scratch, pooled from there
            lp = <float *>((aligned + 4 * npix * cout + 63) // 64 * 64)
            with nogil:
                if code == -2:
                    qcnn_lrn_ref(tp, lp, npix, cout, self.lrnp.size, self.lrnp.alpha, self.lrnp.beta,
                                 self.lrnp.bias)
                else:
                    qcnn_lrn(tp, lp, npix, cout, self.lrnp.size, self.lrnp.alpha, self.lrnp.beta,
                             self.lrnp.bias, code)
            tp = lp
        with nogil:
            if code == -2:
                qcnn_maxpool_ref(&self.pool, tp, ioh, iow, cout, yp, poh, pw)
            else:
                qcnn_maxpool(&self.pool, tp, ioh, iow, cout, yp, poh, pw, code)
        return y_hwc


cdef class QConvMaxPoolKernel:
    """A product-quantized conv (QConvKernel), optionally an LRN, and the MaxPool that alone reads
    the result, run as one step. Layers run an output row at a time (int8 tables with a step per
    input row: VGG's block ends, AlexNet's conv2 and conv5) hand their rows to a band of as many
    rows as the pool window; each row is normalised as it arrives and each pooled row taken while
    they are in cache (qcnn_qconv_run_maxpool), so the conv's output is never written whole.
    Others run whole into the scratch, then the LRN, then the pooling. Either way the values are
    those of conv.run, lrn, then maxpool.

    kernel (kh, kw), strides (sh, sw), pads (t, l, b, r) and ceil_mode as the ONNX MaxPool;
    lrn: None or (size, alpha, beta, bias) as the ONNX LRN."""
    cdef readonly QConvKernel conv
    cdef qcnn_pool_params pool
    cdef qcnn_lrn_params lrnp
    cdef readonly bint ceil_mode, has_lrn

    def __init__(self, QConvKernel conv, kernel, strides, pads=(0, 0, 0, 0), bint ceil_mode=False,
                 lrn=None):
        _pool_init(&self.pool, kernel, strides, pads)
        self.conv = conv
        self.ceil_mode = ceil_mode
        self.has_lrn = _lrn_init(&self.lrnp, lrn)

    @property
    def lut(self):
        return self.conv.lut

    @property
    def isa(self):
        return self.conv.isa

    def conv_shape(self, int h, int w):
        return self.conv.out_shape(h, w)

    def out_shape(self, int h, int w):
        """(poh, pow, cout) for an h x w input; ValueError if the conv or the pooling does not fit."""
        oh, ow, c = self.conv.out_shape(h, w)
        return _pooled_shape(&self.pool, self.ceil_mode, oh, ow, c)

    def scratch_nbytes(self, int h, int w):
        """The conv's scratch and a band of rows (run by rows), or room for its whole output (and
        the LRN's)."""
        oh, ow, c = self.conv.out_shape(h, w)
        if _qk_runs_by_rows(self.conv._q, h, w):
            return int(qcnn_qconv_pool_scratch_bytes(self.conv._q, &self.pool, h, w, ow, c))
        need = (int(self.conv.scratch_nbytes(h, w)) + 63) // 64 * 64 + 4 * oh * ow * c + 64
        return need + (4 * oh * ow * c + 64 if self.has_lrn else 0)

    def run(self, x_hwc, y_hwc, scratch):
        """y_hwc[:] = maxpool(conv(x_hwc)); returns the conv's int8 table step, as conv.run.
        scratch: writable, >= scratch_nbytes(h, w) bytes."""
        x = _ops_check(x_hwc, "x", 3)
        y = _ops_check(y_hwc, "y", 3, True)
        h, w, c = x.shape
        if c != self.conv.cin:
            raise ValueError(f"x: expected {self.conv.cin} channels, got shape {x.shape}")
        oh, ow, cout = self.conv.out_shape(h, w)
        if oh <= 0 or ow <= 0:
            raise ValueError(f"x: input {h}x{w} is smaller than the padded kernel")
        want = self.out_shape(h, w)
        cdef unsigned char[::1] s = _fused_pool_buffers(x, y, want, scratch, self.scratch_nbytes(h, w))
        cdef const float *xp = _ops_ptr(x)
        cdef float *yp = _ops_ptr(y)
        cdef int ih = h, iw = w, coh = oh, cow = ow, cc = cout, poh = want[0], pw = want[1], done = 0
        # the LRN and the pooling run on the ISA the standalone lrn() and maxpool() pick ("auto"),
        # so fused and unfused models give the same floats
        cdef int isa = _ops_isa("auto", False)
        cdef float step = 0
        with nogil:
            done = qcnn_qconv_run_maxpool(self.conv._q, xp, ih, iw, coh, cow, cc, &self.lrnp if self.has_lrn else NULL,
                                          &self.pool, yp, poh, pw, isa, &s[0], &step)
        if done:
            return step
        # not run by rows: the conv's whole output in the scratch, behind the conv's own scratch
        cdef size_t off = (<size_t>self.conv.scratch_nbytes(h, w) + 63) // 64 * 64
        cdef size_t base = <size_t>&s[0]
        cdef size_t aligned = (base + off + 63) // 64 * 64
        tmp = _ops_np.frombuffer(scratch, dtype=_ops_np.float32, count=oh * ow * cout,
                                 offset=aligned - base).reshape(oh, ow, cout)
        step = self.conv.run(x, tmp, scratch[:off])
        cdef float *tp = <float *>aligned
        cdef float *lp
        cdef size_t npix = <size_t>oh * ow
        if self.has_lrn:  # into the next region of the scratch, pooled from there
            lp = <float *>((aligned + 4 * npix * <size_t>cc + 63) // 64 * 64)
            with nogil:
                qcnn_lrn(tp, lp, npix, cc, self.lrnp.size, self.lrnp.alpha, self.lrnp.beta, self.lrnp.bias, isa)
            tp = lp
        with nogil:
            qcnn_maxpool(&self.pool, tp, coh, cow, cc, yp, poh, pw, isa)
        return step


cdef class DenseFcKernel:
    """Dense fully-connected y = W x + b (ONNX Gemm transB=1). weight float32 [out][in].

    precision "fp32" (default): float arithmetic, streaming W (memory-bound: AlexNet's fc6 is
    151 MB). "int8": the int8 dense conv's 1x1 case on a 1x1 image (qcnn_iconv_*, ops.h: uint8
    input per call, int8 weights per output, exact int32 sums; same kernels and ISA choice as
    DenseConvKernel(precision="int8"), int8_isa tells which ran). It keeps only the int8 weights,
    a quarter of the fp32 bytes to stream (fc6 6.1 -> 1.25 ms on Zen 4), and no fp32 copy, so an
    input holding NaN or infinity gives NaN outputs instead of an fp32 fallback.
    """
    cdef qcnn_dfc_params p
    cdef qcnn_dconv_params gp
    cdef qcnn_iconv_params ip
    cdef int isa_code
    cdef bint int8_fast
    cdef readonly object weight, bias
    cdef readonly _Int8Weights int8  # precision "int8": its weights; else None
    cdef readonly str isa, precision

    def __init__(self, weight, bias=None, bint relu=False, isa="auto", precision="fp32", amx=None):
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be 'fp32' or 'int8', got {precision!r}")
        w = _ops_check(_ops_np.ascontiguousarray(weight, dtype=_ops_np.float32), "weight", 2)
        _ops_nonempty(w, "weight")
        self.isa_code = _ops_isa(isa, True)
        self.isa = isa if isa == "ref" else _OPS_ISA_NAMES[self.isa_code]
        self.precision = precision
        self.p.out, self.p.in_ = (int(d) for d in w.shape)
        self.p.relu = relu
        if bias is not None:
            b = _ops_check(_ops_np.ascontiguousarray(bias, dtype=_ops_np.float32), "bias", 1)
            _ops_shape(b, "bias", (self.p.out,))
            self.bias = b
            self.p.bias = _ops_ptr(b)
        else:
            self.bias = None
            self.p.bias = NULL
        self.int8 = None
        if precision == "fp32":
            self.weight = w
            self.p.weight = _ops_ptr(w)
            return
        if self.isa_code == -2:
            raise ValueError("precision 'int8' has no 'ref' isa (its reference is isa='generic')")
        # a 1x1 conv with in -> out channels on a 1x1 image
        self.weight = None
        self.p.weight = NULL
        memset(&self.gp, 0, sizeof(self.gp))
        self.gp.cin, self.gp.cout, self.gp.groups = self.p.in_, self.p.out, 1
        self.gp.kh = self.gp.kw = self.gp.stride_h = self.gp.stride_w = 1
        self.gp.relu = relu
        self.gp.bias = self.p.bias
        self.int8 = _Int8Weights()
        self.int8.pack(&self.ip, &self.gp, _ops_ptr(w), self.isa_code, amx)
        self.int8_fast = self.int8.fast

    @property
    def int8_isa(self):
        """Which int8 kernel runs: 'amx', 'avx512vnni', 'avx2', 'generic', or None for precision fp32."""
        return None if self.int8 is None else self.int8.isa

    @property
    def in_features(self):
        return self.p.in_

    @property
    def out_features(self):
        return self.p.out

    def out_shape(self):
        return (self.p.out,)

    def scratch_nbytes(self):
        if self.precision == "int8":
            return int(qcnn_iconv_scratch_bytes(&self.ip, 1, 1))
        return 0

    def run(self, x, y, scratch=None):
        """y[:] = W x + b for x of shape [in] (any float32 C-contiguous array of `in` values).
        scratch: writable buffer of >= scratch_nbytes() bytes (int8 only)."""
        x = _ops_check(x, "x", 0)
        y = _ops_check(y, "y", 1, True)
        if x.size != self.p.in_:
            raise ValueError(f"x: expected {self.p.in_} values, got shape {x.shape}")
        _ops_shape(y, "y", (self.p.out,))
        if _ops_overlap(x, y):
            raise ValueError("y: expected a buffer distinct from x, got an overlapping one")
        cdef const float *xp = _ops_ptr(x)
        cdef float *yp = _ops_ptr(y)
        cdef int code = self.isa_code, fast = self.int8_fast, done = 0, nout = self.p.out
        cdef bint int8 = self.precision == "int8"
        cdef size_t need = self.scratch_nbytes()
        cdef unsigned char[::1] s
        cdef void *sp = NULL
        if need:
            if scratch is None:
                raise ValueError(f"scratch: expected a buffer of >= {need} bytes, got None")
            s = memoryview(scratch).cast("B")
            if <size_t>s.shape[0] < need:
                raise ValueError(f"scratch: expected >= {need} bytes, got {s.shape[0]}")
            if (_ops_ranges_overlap(<size_t>&s[0], need, <size_t>_ops_ptr(x), x.nbytes) or
                    _ops_ranges_overlap(<size_t>&s[0], need, <size_t>_ops_ptr(y), y.nbytes)):
                raise ValueError("scratch: expected a buffer separate from x and y, got an overlapping one")
            sp = <void *>&s[0]
        with nogil:
            if int8:
                done = qcnn_iconv_run(&self.ip, fast, xp, 1, 1, yp, nout, sp)
            elif code == -2:
                qcnn_dfc_ref(&self.p, xp, yp)
            else:
                qcnn_dfc_run(&self.p, code, xp, yp)
        if int8 and not done:  # NaN or infinity in x
            y[:] = _ops_np.nan
        return y


def relu_(x):
    """In-place ReLU on any float32 C-contiguous array; returns x."""
    x = _ops_check(x, "x", 0, True)
    if x.size == 0:
        return x
    cdef float *p = _ops_ptr(x)
    cdef size_t n = x.size
    with nogil:
        qcnn_relu(p, p, n)
    return x


def relu(x, y):
    """y = max(x, 0) for same-shape float32 arrays (y may be x): one pass, no copy first."""
    x = _ops_check(x, "x", 0)
    y = _ops_check(y, "y", 0, True)
    _ops_shape(y, "y", tuple(x.shape))
    _ops_same_or_disjoint(y, x, "x")
    if x.size == 0:
        return y
    cdef const float *xp = _ops_ptr(x)
    cdef float *yp = _ops_ptr(y)
    cdef size_t n = x.size
    with nogil:
        qcnn_relu(xp, yp, n)
    return y


def add(a, b, out, bint relu=False):
    """out = a + b (same shapes; out may be a or b), optionally followed by ReLU."""
    a = _ops_check(a, "a", 0)
    b = _ops_check(b, "b", 0)
    out = _ops_check(out, "out", 0, True)
    _ops_shape(b, "b", tuple(a.shape))
    _ops_shape(out, "out", tuple(a.shape))
    _ops_same_or_disjoint(out, a, "a")
    _ops_same_or_disjoint(out, b, "b")
    if a.size == 0:
        return out
    cdef const float *ap = _ops_ptr(a)
    cdef const float *bp = _ops_ptr(b)
    cdef float *yp = _ops_ptr(out)
    cdef size_t n = a.size
    with nogil:
        qcnn_add(ap, bp, yp, n, relu)
    return out


def softmax(x, y):
    """Numerically stable softmax over the last axis (1-D or 2-D [rows][n]); y may be x."""
    x = _ops_check(x, "x", 0)
    y = _ops_check(y, "y", 0, True)
    if x.ndim not in (1, 2):
        raise ValueError(f"x: expected 1 or 2 dims, got shape {x.shape}")
    _ops_shape(y, "y", tuple(x.shape))
    _ops_same_or_disjoint(y, x, "x")
    _ops_nonempty(x, "x")
    cdef int n = x.shape[x.ndim - 1]
    cdef int rows = x.size // n
    cdef const float *xp = _ops_ptr(x)
    cdef float *yp = _ops_ptr(y)
    with nogil:
        qcnn_softmax(xp, yp, rows, n)
    return y


def lrn(x, y, int size, float alpha, float beta, float bias=1.0, isa="auto"):
    """ONNX LRN across the channels of an NHWC tensor [..., C] (x and y distinct arrays)."""
    x = _ops_check(x, "x", 0)
    y = _ops_check(y, "y", 0, True)
    if x.ndim < 1:
        raise ValueError(f"x: expected at least 1 dim (channels last), got shape {x.shape}")
    _ops_shape(y, "y", tuple(x.shape))
    if size < 1:
        raise ValueError(f"size: expected >= 1, got {size}")
    if _ops_overlap(x, y):
        raise ValueError("y: expected a buffer distinct from x, got an overlapping one")
    _ops_nonempty(x, "x")
    cdef int code = _ops_isa(isa, True)
    cdef int c = x.shape[x.ndim - 1]
    cdef size_t npix = x.size // c
    cdef const float *xp = _ops_ptr(x)
    cdef float *yp = _ops_ptr(y)
    with nogil:
        if code == -2:
            qcnn_lrn_ref(xp, yp, npix, c, size, alpha, beta, bias)
        else:
            qcnn_lrn(xp, yp, npix, c, size, alpha, beta, bias, code)
    return y


def pool_out_size(int size, int k, int stride, int pad_begin=0, int pad_end=0, bint ceil_mode=False):
    """ONNX pooling output size along one axis (dilation 1), incl. the ceil_mode rule that
    the last window must start inside the input or the left padding."""
    cdef int o = qcnn_pool_out_size(size, k, stride, pad_begin, pad_end, ceil_mode)
    if o <= 0:
        raise ValueError(f"pooling window {k} (stride {stride}) does not fit input {size} "
                         f"with pads ({pad_begin}, {pad_end})")
    return o


cdef object _ops_pool(bint is_max, x, y, int kh, int kw, int sh, int sw, int pt, int pl, int pb,
                      int pr, bint count_include_pad, object isa):
    x = _ops_check(x, "x", 3)
    y = _ops_check(y, "y", 3, True)
    cdef int code = _ops_isa(isa, True)
    if _ops_overlap(x, y):
        raise ValueError("y: expected a buffer distinct from x, got an overlapping one")
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or min(pt, pl, pb, pr) < 0:
        raise ValueError(f"pooling: expected kernel/strides >= 1 and pads >= 0, got "
                         f"kernel ({kh}, {kw}) strides ({sh}, {sw}) pads ({pt}, {pl}, {pb}, {pr})")
    h, w, c = x.shape
    oh, ow, oc = y.shape
    # the caller chooses floor or ceil mode through the output size; accept either
    cdef int fh = qcnn_pool_out_size(h, kh, sh, pt, pb, 0), fw = qcnn_pool_out_size(w, kw, sw, pl, pr, 0)
    cdef int ch = qcnn_pool_out_size(h, kh, sh, pt, pb, 1), cw = qcnn_pool_out_size(w, kw, sw, pl, pr, 1)
    if oc != c or oh not in (fh, ch) or ow not in (fw, cw) or oh < 1 or ow < 1:
        raise ValueError(f"y: expected shape ({fh}, {fw}, {c}) (or ceil_mode ({ch}, {cw}, {c})), "
                         f"got {tuple(y.shape)}")
    cdef qcnn_pool_params p
    p.kh, p.kw, p.stride_h, p.stride_w = kh, kw, sh, sw
    p.pad_top, p.pad_left, p.pad_bottom, p.pad_right = pt, pl, pb, pr
    p.count_include_pad = count_include_pad
    cdef const float *xp = _ops_ptr(x)
    cdef float *yp = _ops_ptr(y)
    cdef int ih = h, iw = w, ic = c, ioh = oh, iow = ow
    with nogil:
        if is_max and code == -2:
            qcnn_maxpool_ref(&p, xp, ih, iw, ic, yp, ioh, iow)
        elif is_max:
            qcnn_maxpool(&p, xp, ih, iw, ic, yp, ioh, iow, code)
        else:
            qcnn_avgpool(&p, xp, ih, iw, ic, yp, ioh, iow)
    return y


def maxpool(x, y, int kh, int kw, int sh, int sw, int pt=0, int pl=0, int pb=0, int pr=0,
            isa="auto"):
    """ONNX MaxPool on NHWC x [H][W][C] into y [OH][OW][C]; y's shape selects floor/ceil mode.
    isa: "auto" | "generic" | "avx2" | "avx512" | "ref" (plain loops)."""
    return _ops_pool(True, x, y, kh, kw, sh, sw, pt, pl, pb, pr, False, isa)


def avgpool(x, y, int kh, int kw, int sh, int sw, int pt=0, int pl=0, int pb=0, int pr=0,
            bint count_include_pad=False):
    """ONNX AveragePool on NHWC x into y; y's shape selects floor/ceil mode."""
    return _ops_pool(False, x, y, kh, kw, sh, sw, pt, pl, pb, pr, count_include_pad, "auto")


def global_avgpool(x, y):
    """Mean over H and W: x [H][W][C] -> y [C]."""
    x = _ops_check(x, "x", 3)
    y = _ops_check(y, "y", 1, True)
    _ops_nonempty(x, "x")
    h, w, c = x.shape
    _ops_shape(y, "y", (c,))
    cdef const float *xp = _ops_ptr(x)
    cdef float *yp = _ops_ptr(y)
    cdef int ih = h, iw = w, ic = c
    with nogil:
        qcnn_global_avgpool(xp, ih, iw, ic, yp)
    return y


def concat_channels(inputs, out):
    """Concatenate NHWC tensors [H][W][Ci] along channels into out [H][W][sum Ci]."""
    out = _ops_check(out, "out", 3, True)
    oh, ow, oc = out.shape
    xs = [_ops_check(a, f"inputs[{i}]", 3) for i, a in enumerate(inputs)]
    if not xs:
        raise ValueError("inputs: expected at least one tensor, got none")
    total = 0
    for i, a in enumerate(xs):
        if tuple(a.shape[:2]) != (oh, ow):
            raise ValueError(f"inputs[{i}]: expected spatial size ({oh}, {ow}), got {a.shape}")
        total += a.shape[2]
    if total != oc:
        raise ValueError(f"out: expected {total} channels (sum of inputs), got shape {out.shape}")
    cdef size_t npix = oh * ow
    cdef int cy = oc, off = 0, cx
    cdef const float *xp
    cdef float *yp
    if npix == 0:
        return out
    yp = _ops_ptr(out)
    for a in xs:
        cx = a.shape[2]
        if cx == 0:
            continue
        if _ops_overlap(a, out):
            raise ValueError("inputs: expected tensors distinct from out, got an overlapping one")
        xp = _ops_ptr(a)
        with nogil:
            qcnn_copy_channels(xp, npix, cx, yp, cy, off)
        off += cx
    return out


def nhwc_to_nchw(x, y):
    """x [H][W][C] -> y [C][H][W] (so a following Flatten matches ONNX's NCHW order)."""
    x = _ops_check(x, "x", 3)
    y = _ops_check(y, "y", 3, True)
    h, w, c = x.shape
    _ops_shape(y, "y", (c, h, w))
    if _ops_overlap(x, y):
        raise ValueError("y: expected a buffer distinct from x, got an overlapping one")
    if x.size == 0:
        return y
    cdef const float *xp = _ops_ptr(x)
    cdef float *yp = _ops_ptr(y)
    cdef int ih = h, iw = w, ic = c
    with nogil:
        qcnn_nhwc_to_nchw(xp, ih, iw, ic, yp)
    return y


def nchw_to_nhwc(x, y, isa="auto"):
    """x [C][H][W] -> y [H][W][C] (the graph input, into the kernels' channels-last layout).
    Returns how many of x's values are NaN or infinite (counted during the copy)."""
    x = _ops_check(x, "x", 3)
    y = _ops_check(y, "y", 3, True)
    c, h, w = x.shape
    _ops_shape(y, "y", (h, w, c))
    if _ops_overlap(x, y):
        raise ValueError("y: expected a buffer distinct from x, got an overlapping one")
    if x.size == 0:
        return 0
    cdef const float *xp = _ops_ptr(x)
    cdef float *yp = _ops_ptr(y)
    cdef int ic = c, ih = h, iw = w
    cdef int code = _ops_isa(isa, False)
    cdef size_t bad
    with nogil:
        bad = qcnn_nchw_to_nhwc(xp, ic, ih, iw, yp, code)
    return bad
