"""Learning the product quantization of one Conv/Gemm layer (paper §3.1-3.3, Appendix B).

Layout. A layer is G independent groups. In group g the input channels are split into M
subspaces of C's channels (zero-padded at the end when C's does not divide Cin/G). For one output
channel c the dense weights form a vector of D = P*M*C's numbers (P = KH*KW kernel positions),
ordered (kh, kw, m, j): block (p, m) holds the C's weights of subspace m at kernel position p. This
is the im2col row order, so a conv response is T = S W with S the im2col rows (one per image and
output position) and W the (D, Cout/G) weight matrix. A fully connected layer is the case G = P = 1.

Every (group, subspace) has one codebook of K codewords of length C's, shared by all kernel
positions and output channels (Eq. 6): the codeword index is stored per (g, p, m, c).

Plain Q-CNN (§3.1-3.2): k-means (k-means++ init, seeded) of the weight sub-vectors of each (g, m).

Error correction (§3.3, App. B): minimise sum_rows ||T - S W_hat||^2 by block coordinate descent over
subspaces. The objective only depends on the data through G = S^T S and B = S^T T (plus ||T||^2),
so with a factor F^T F = G, Y = F^-T B it equals ||Y - F W_hat||^2 + const, where F has
r = min(rows, D) rows. The solver works on (F, Y): for conv layers F comes from the Cholesky factor of
the accumulated G (r = D, independent of the amount of calibration data); when there are fewer
calibration rows than D (fully connected layers) F is S itself. For subspace m with everything
else fixed, the problem reduces to the tiny quadratic
    sum_c  u_c^T H_m u_c - 2 u_c^T L_m[:, c],   H_m = F_m^T F_m,  L_m = F_m^T (residual target),
over u_c = (D[a(p, c)])_p, a k-means-like problem in the metric H_m. We solve it by alternating
  - a joint least-squares update of the whole codebook (exact, rather than App. B's one codeword
    at a time), and
  - an exhaustive assignment update, one kernel position p after the other (App. B, Eq. 20-21).
`ec_direct_reference` implements the same iteration directly on the im2col rows (no G/B); tests
check both agree.

An optional ridge term mu * ||W_hat - W||^2 (towards the original weights) keeps the least-squares
problems well posed when the calibration data does not span all input directions (dead channels,
fewer images than inputs).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np

from qcnn.schema import ir

from . import _kmeans  # compiled inner loops of k-means (converter/_kmeans.pyx)
from .errors import ConversionError


# --------------------------------------------------------------------------- geometry
@dataclass
class LayerGeom:
    kind: str  # "conv" or "fc"
    groups: int
    kh: int
    kw: int
    cin_g: int  # input channels (features) per group
    cout_g: int
    subvec: int  # C's
    nsub: int  # M
    ncode: int  # K

    @property
    def P(self) -> int:
        return self.kh * self.kw

    @property
    def cin_pad(self) -> int:
        return self.nsub * self.subvec - self.cin_g

    @property
    def D(self) -> int:
        return self.P * self.nsub * self.subvec

    def subspace_columns(self, m: int) -> np.ndarray:
        """Columns of W (D rows) that belong to subspace m, ordered (p, j)."""
        P, M, C = self.P, self.nsub, self.subvec
        return ((np.arange(P)[:, None] * M + m) * C + np.arange(C)[None, :]).reshape(-1)


def geometry(op, subvec: int, ncode: int) -> LayerGeom:
    if isinstance(op, ir.Conv):
        cin_g, cout_g = op.cin // op.groups, op.cout // op.groups
        return LayerGeom("conv", op.groups, op.kernel[0], op.kernel[1], cin_g, cout_g, subvec,
                         -(-cin_g // subvec), ncode)
    return LayerGeom("fc", 1, 1, 1, op.in_features, op.out_features, subvec, -(-op.in_features // subvec), ncode)


def weight_blocks(W: np.ndarray, geom: LayerGeom) -> np.ndarray:
    """Dense ONNX-layout weights -> (G, D, Cout/G) float64 in the (kh, kw, m, j) row order."""
    G, cg = geom.groups, geom.cout_g
    if geom.kind == "fc":
        Wt = W.T.reshape(1, 1, 1, geom.cin_g, cg)
    else:
        Wt = W.reshape(G, cg, geom.cin_g, geom.kh, geom.kw).transpose(0, 3, 4, 2, 1)
    Wt = Wt.astype(np.float64)
    if geom.cin_pad:
        Wt = np.concatenate([Wt, np.zeros(Wt.shape[:3] + (geom.cin_pad, cg))], axis=3)
    return np.ascontiguousarray(Wt.reshape(G, geom.D, cg))


def blocks_to_dense(Wb: np.ndarray, geom: LayerGeom) -> np.ndarray:
    """Inverse of weight_blocks (padding dropped), float32 in ONNX layout."""
    G, cg = geom.groups, geom.cout_g
    Wt = Wb.reshape(G, geom.kh, geom.kw, geom.nsub * geom.subvec, cg)[:, :, :, :geom.cin_g]
    if geom.kind == "fc":
        return np.ascontiguousarray(Wt.reshape(geom.cin_g, cg).T, dtype=np.float32)
    W = Wt.transpose(0, 4, 3, 1, 2).reshape(G * cg, geom.cin_g, geom.kh, geom.kw)
    return np.ascontiguousarray(W, dtype=np.float32)


def reconstruct_blocks(codebooks: np.ndarray, assign: np.ndarray, geom: LayerGeom) -> np.ndarray:
    """codebooks (G, M, K, C's), assign (G, P, M, Cout/G) -> W_hat blocks (G, D, Cout/G)."""
    G, M = geom.groups, geom.nsub
    g_idx = np.arange(G)[:, None, None, None]
    m_idx = np.arange(M)[None, None, :, None]
    vecs = codebooks[g_idx, m_idx, assign]  # (G, P, M, Cout, C's)
    return np.ascontiguousarray(vecs.transpose(0, 1, 2, 4, 3).reshape(G, geom.D, geom.cout_g))


def to_quantized_weights(codebooks: np.ndarray, assign: np.ndarray, geom: LayerGeom) -> ir.QuantizedWeights:
    idx = assign.reshape(geom.groups, geom.kh, geom.kw, geom.nsub, geom.cout_g).astype(np.uint8)
    return ir.QuantizedWeights(subvec=geom.subvec, nsub=geom.nsub, ncode=geom.ncode,
                               codebooks=np.ascontiguousarray(codebooks, dtype=np.float32),
                               indices=np.ascontiguousarray(idx))


def geometry_of_quantized(op) -> LayerGeom:
    q = op.weights
    g = geometry(op, q.subvec, q.ncode)
    if g.nsub != q.nsub:
        raise ConversionError(f"layer {op.name}: {q.nsub} subspaces stored, {g.nsub} expected")
    return g


def quantized_indices(q: ir.QuantizedWeights) -> np.ndarray:
    if q.indices is not None:
        return np.asarray(q.indices)
    from qcnn.schema import packing

    count = int(np.prod(q.index_shape))
    return packing.unpack(q.packed_indices, q.index_bits, count).reshape(q.index_shape)


def reconstruct(op) -> np.ndarray:
    """Dense float32 ONNX-layout weights W_hat of a quantized Conv/Gemm."""
    q = op.weights
    geom = geometry_of_quantized(op)
    idx = quantized_indices(q).astype(np.int64).reshape(geom.groups, geom.P, geom.nsub, geom.cout_g)
    cb = np.asarray(q.codebooks, dtype=np.float32)  # exact float32 arithmetic-free gather
    return blocks_to_dense(reconstruct_blocks(cb, idx, geom), geom).astype(np.float32)


# --------------------------------------------------------------------------- plain k-means
def _kmeanspp(X: np.ndarray, K: int, rng: np.random.Generator, compiled: bool = True) -> np.ndarray:
    """k-means++ seeding for a batch of problems. X (S, N, d) -> centres (S, K, d).

    compiled: the distance update and the pick run in _kmeans (the same values as the numpy
    expressions; sub-vectors of up to 8 values). False: numpy only, the reference in tests.
    """
    S, N, d = X.shape
    compiled = compiled and d <= 8 and X.dtype == np.float64
    if compiled:
        X = np.ascontiguousarray(X)
    C = np.empty((S, K, d), dtype=X.dtype)
    first = rng.integers(0, N, size=S)
    C[:, 0] = X[np.arange(S), first]
    mind = ((X - C[:, :1]) ** 2).sum(-1)  # (S, N)
    for k in range(1, K):
        tot = mind.sum(axis=1)
        u = rng.random(S) * tot
        if compiled:
            pick = np.minimum(_kmeans.cumsum_reaching(mind, u), N - 1)
        else:
            cum = np.cumsum(mind, axis=1)
            pick = np.minimum((cum < u[:, None]).sum(axis=1), N - 1)
        # all points already covered exactly (fewer distinct vectors than K): any point will do
        zero = tot <= 0
        if zero.any():
            pick[zero] = rng.integers(0, N, size=int(zero.sum()))
        C[:, k] = X[np.arange(S), pick]
        if compiled:
            _kmeans.update_min_sqdist(X, np.ascontiguousarray(C[:, k]), mind)
        else:
            np.minimum(mind, ((X - C[:, k:k + 1]) ** 2).sum(-1), out=mind)
    return C


def _labels(X32: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Nearest centre of every point (S, N). float32 distances: only their order matters.

    Compiled (_kmeans.labels): one point's K distances at a time in a small buffer, where numpy
    walked an (S, N, K) array once per dimension (AlexNet's fc6 at 4/32: 13x faster). The same
    float32 values as _labels_numpy, the reference in tests.
    """
    C32 = C.astype(np.float32)
    return _kmeans.labels(np.ascontiguousarray(X32, dtype=np.float32),
                          np.ascontiguousarray(C32.transpose(0, 2, 1)),
                          np.ascontiguousarray((C32 * C32).sum(-1)))


def _labels_numpy(X32: np.ndarray, C: np.ndarray) -> np.ndarray:
    """_labels in numpy. The sub-vectors are short (C's <= 8 typically), where an explicit loop
    over the dimensions beats numpy's stacked matmul by a wide margin."""
    C32 = C.astype(np.float32)
    d = np.empty(X32.shape[:2] + (C32.shape[1],), dtype=np.float32)
    d[:] = (C32 * C32).sum(-1)[:, None, :]
    tmp = np.empty_like(d)
    for j in range(X32.shape[2]):
        np.multiply(X32[:, :, j, None], C32[:, None, :, j], out=tmp)
        tmp *= -2.0
        d += tmp
    return d.argmin(axis=2)


def kmeans_batch(X: np.ndarray, K: int, rng: np.random.Generator, iters: int = 30,
                 tol: float = 1e-3, fit_points: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on S independent problems X (S, N, d). Returns centres (S, K, d), labels (S, N).

    Stops after `iters` iterations or when at most a fraction `tol` of the labels changed.
    fit_points: fit the centres on this many randomly chosen points per problem (the same subset for
    all), then label all N (a cheap estimate for planning; None: all points).
    """
    S, N, d = X.shape
    if fit_points is not None and N > max(fit_points, K):
        sub = np.sort(rng.choice(N, size=max(fit_points, K), replace=False))
        C, _ = kmeans_batch(X[:, sub], K, rng, iters, tol)
        return C, _labels(X.astype(np.float32), C)
    X32 = X.astype(np.float32)
    C = _kmeanspp(X, K, rng)
    lab = _labels(X32, C)
    for _ in range(iters):
        flat = (np.arange(S)[:, None] * K + lab).reshape(-1)
        counts = np.bincount(flat, minlength=S * K).reshape(S, K).astype(np.float64)
        sums = np.empty((S, K, d))
        for j in range(d):
            sums[:, :, j] = np.bincount(flat, weights=X[:, :, j].reshape(-1), minlength=S * K).reshape(S, K)
        newC = np.where(counts[..., None] > 0, sums / np.maximum(counts, 1)[..., None], C)
        empty = np.nonzero(counts == 0)
        if len(empty[0]):
            # an empty cluster takes the point that is currently worst represented
            dist = ((X - np.take_along_axis(C, lab[..., None], axis=1)) ** 2).sum(-1)
            for s, k in zip(*empty):
                far = int(dist[s].argmax())
                newC[s, k] = X[s, far]
                dist[s, far] = -1.0
        C = newC
        new_lab = _labels(X32, C)
        changed = np.count_nonzero(new_lab != lab)
        lab = new_lab
        if changed <= tol * lab.size:  # (nearly) converged: EC refines the rest anyway
            break
    return C, lab


def kmeans_layer(Wb: np.ndarray, geom: LayerGeom, rng: np.random.Generator, iters: int = 30,
                 chunk_elems: int = 1 << 21, fit_points: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Plain Q-CNN: k-means per (group, subspace) over all kernel positions and output channels.

    Wb (G, D, Cout/G) -> codebooks (G, M, K, C's) float64, assignments (G, P, M, Cout/G) int64.
    fit_points: see kmeans_batch.
    """
    G, P, M, C, cg, K = geom.groups, geom.P, geom.nsub, geom.subvec, geom.cout_g, geom.ncode
    # (G, P, M, C, cg) -> problems (G*M) of N = P*cg vectors of length C
    X = Wb.reshape(G, P, M, C, cg).transpose(0, 2, 1, 4, 3).reshape(G * M, P * cg, C)
    cbs = np.empty((G * M, K, C))
    labs = np.empty((G * M, P * cg), dtype=np.int64)
    step = max(1, chunk_elems // max(1, P * cg * K))
    for s0 in range(0, G * M, step):
        cbs[s0:s0 + step], labs[s0:s0 + step] = kmeans_batch(X[s0:s0 + step], K, rng, iters, fit_points=fit_points)
    codebooks = cbs.reshape(G, M, K, C)
    assign = labs.reshape(G, M, P, cg).transpose(0, 2, 1, 3)
    return codebooks, np.ascontiguousarray(assign)


# --------------------------------------------------------------------------- error correction
def factor_stats(G: np.ndarray, B: np.ndarray, mu: float, W0: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
    """(G + mu I, B + mu W0) -> (F, Y, ||Y||^2) with F^T F = G + mu I and F^T Y = B + mu W0.

    Then ||Y - F W||^2 = W^T(G + mu I)W - 2 W^T(B + mu W0) + ||Y||^2 (summed over outputs).
    """
    D = G.shape[0]
    Gp = G + mu * np.eye(D)
    Bp = B + mu * W0
    try:
        L = np.linalg.cholesky(Gp)
    except np.linalg.LinAlgError:  # mu == 0 and G singular: minimal jitter
        jitter = 1e-9 * max(np.trace(G) / D, 1e-30)
        Gp = Gp + jitter * np.eye(D)
        L = np.linalg.cholesky(Gp)
    Y = np.linalg.solve(L, Bp)
    return np.ascontiguousarray(L.T), Y, float((Y * Y).sum())


def _solve_spd(H: np.ndarray, b: np.ndarray) -> np.ndarray:
    jitter = 1e-12 * max(float(np.trace(H)) / max(len(H), 1), 1e-300)
    try:
        return np.linalg.solve(H + jitter * np.eye(len(H)), b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(H, b, rcond=None)[0]


def update_codebook(H: np.ndarray, L: np.ndarray, A: np.ndarray, Dcb: np.ndarray) -> np.ndarray:
    """Least-squares codebook for fixed assignments.

    H (P*C, P*C), L (P*C, Cout), A (P, Cout) codeword of every (p, c), Dcb (K, C) current codebook.
    Minimises sum_c u_c^T H u_c - 2 u_c^T L[:, c] with u_c = (Dcb[A[p, c]])_p jointly over all used
    codewords; unused codewords keep their value.
    """
    K, C = Dcb.shape
    P, cout = A.shape
    H4 = H.reshape(P, C, P, C)
    L3 = L.reshape(P, C, cout)
    rhs = np.zeros((K, C))
    for p in range(P):
        np.add.at(rhs, A[p], L3[p].T)
    used = np.zeros(K, dtype=bool)
    used[np.unique(A)] = True
    if P == 1:
        # decoupled: n_k H D_k = rhs_k
        n = np.bincount(A[0], minlength=K).astype(np.float64)
        out = Dcb.copy()
        Hinv_rhs = _solve_spd(H4[0, :, 0, :], rhs[used].T).T
        out[used] = Hinv_rhs / n[used][:, None]
        return out
    # Hbig[(k, i), (l, j)] = sum over (p, q, c) with A[p, c] = k, A[q, c] = l of H4[p, i, q, j].
    # At most P*P*Cout terms are nonzero, so accumulate them with bincount, one (i, j) at a time.
    Hpq = H4.transpose(0, 2, 1, 3).reshape(P * P, C * C)
    pq = np.broadcast_to((np.arange(P)[:, None] * P + np.arange(P)[None, :])[:, :, None], (P, P, cout)).reshape(-1)
    kl = (A[:, None, :] * K + A[None, :, :]).reshape(-1)
    Hflat = np.empty((K * K, C * C))
    for ij in range(C * C):
        Hflat[:, ij] = np.bincount(kl, weights=Hpq[pq, ij], minlength=K * K)
    Hbig = Hflat.reshape(K, K, C, C).transpose(0, 2, 1, 3).reshape(K * C, K * C)
    sel = np.repeat(used, C)
    sol = _solve_spd(Hbig[np.ix_(sel, sel)], rhs[used].reshape(-1))
    out = Dcb.copy()
    out[used] = sol.reshape(-1, C)
    return out


def update_assignment(H: np.ndarray, L: np.ndarray, A: np.ndarray, Dcb: np.ndarray) -> np.ndarray:
    """Exhaustive codeword choice, one kernel position after the other (App. B Eq. 20-21)."""
    K, C = Dcb.shape
    P, cout = A.shape
    A = A.copy()
    U = Dcb[A].transpose(0, 2, 1).reshape(P * C, cout)  # current u_c, rows (p, j)
    Q = H @ U
    for p in range(P):
        sl = slice(p * C, (p + 1) * C)
        Hpp = H[sl, sl]
        lin = L[sl] - (Q[sl] - Hpp @ U[sl])  # target of block p with the other positions fixed
        quad = np.einsum("ki,ij,kj->k", Dcb, Hpp, Dcb)
        cost = quad[:, None] - 2.0 * (Dcb @ lin)
        A[p] = cost.argmin(axis=0)
        new = Dcb[A[p]].T
        Q += H[:, sl] @ (new - U[sl])
        U[sl] = new
    return A


@dataclass
class ECResult:
    codebooks: np.ndarray  # (M, K, C) for one group
    assign: np.ndarray  # (P, M, Cout)
    history: List[float]  # ||Y - F W||^2 after the initialisation and after every sweep
    drift: List[float]  # ||W - W0||^2 at the same points (0 when W0 is not given)


def ec_solve(F: np.ndarray, Y: np.ndarray, codebooks: np.ndarray, assign: np.ndarray, geom: LayerGeom,
             iters: int, mu: float = 0.0, W0: Optional[np.ndarray] = None, inner: int = 1,
             progress: Optional[Callable[[], None]] = None,
             stop: Optional[Callable[[List[float], List[float]], bool]] = None) -> ECResult:
    """Error-corrected quantization of one group by block coordinate descent over subspaces.

    F (r, D), Y (r, Cout): the data in compact form (see module docstring). codebooks (M, K, C),
    assign (P, M, Cout): the initialisation (plain k-means). mu/W0: optional separable ridge
    mu*||W - W0||^2 (use 0 when it is already folded into F, Y by factor_stats).
    stop(history, drift) is asked after every sweep whether to end early.
    """
    geom = dataclasses.replace(geom, groups=1)  # one group at a time
    P, M, C = geom.P, geom.nsub, geom.subvec
    cb = codebooks.astype(np.float64).copy()
    A = assign.copy()
    W = reconstruct_blocks(cb[None], A[None], geom)[0]
    R = Y - F @ W
    if mu and W0 is None:
        raise ValueError("ridge needs W0")

    def record():
        history.append(float((R * R).sum()))
        drift.append(float(((W - W0) ** 2).sum()) if W0 is not None else 0.0)

    cols = [geom.subspace_columns(m) for m in range(M)]
    Fm_cache = [np.ascontiguousarray(F[:, c]) for c in cols]
    H0s = [Fm.T @ Fm for Fm in Fm_cache]  # data part of the subspace metric
    Hs = [H + mu * np.eye(len(H)) if mu else H for H in H0s]
    history: List[float] = []
    drift: List[float] = []
    record()
    for _ in range(iters):
        for m in range(M):
            Fm, c = Fm_cache[m], cols[m]
            Um = W[c]
            # L = F_m^T (R + F_m U_m): the residual target of subspace m, without forming R + F_m U_m
            L = Fm.T @ R
            L += H0s[m] @ Um
            if mu:
                L += mu * W0[c]
            Am = A[:, m, :]
            for _ in range(inner):
                cb[m] = update_codebook(Hs[m], L, Am, cb[m])
                Am = update_assignment(Hs[m], L, Am, cb[m])
            A[:, m, :] = Am
            Unew = cb[m][Am].transpose(0, 2, 1).reshape(P * C, -1)
            R -= Fm @ (Unew - Um)  # in place: R is the largest array of the solver
            W[c] = Unew
            if progress:
                progress()
        record()
        if stop is not None and stop(history, drift):
            break
    return ECResult(cb, A, history, drift)


def ec_direct_reference(S: np.ndarray, T: np.ndarray, codebooks: np.ndarray, assign: np.ndarray,
                        geom: LayerGeom, iters: int) -> ECResult:
    """Test-only literal implementation of the same iteration on raw im2col rows S (n, D), T (n, Cout).

    Residuals are recomputed from the data every time, the codebook is a dense least-squares fit on
    the (row, output) design matrix and the assignment tries every codeword against the full data.
    Exponentially slower; use on tiny layers only.
    """
    geom = dataclasses.replace(geom, groups=1)
    P, M, C, K = geom.P, geom.nsub, geom.subvec, geom.ncode
    cb = codebooks.astype(np.float64).copy()
    A = assign.copy()
    n, cout = T.shape

    def W_of(cb, A):
        return reconstruct_blocks(cb[None], A[None], geom)[0]

    def total():
        return float(((T - S @ W_of(cb, A)) ** 2).sum())

    history = [total()]
    for _ in range(iters):
        for m in range(M):
            cols = geom.subspace_columns(m)
            mask = np.ones(geom.D, dtype=bool)
            mask[cols] = False
            W = W_of(cb, A)
            Rm = T - S[:, mask] @ W[mask]  # Eq. (9)/(15): residual without subspace m
            Sm = S[:, cols].reshape(n, P, C)
            # codebook: prediction(n, c) = sum_k sum_i d[k, i] X[(n, c), (k, i)]
            X = np.zeros((n, cout, K, C))
            for p in range(P):
                for c in range(cout):
                    X[:, c, A[p, m, c], :] += Sm[:, p, :]
            used = np.zeros(K, dtype=bool)
            used[np.unique(A[:, m, :])] = True
            Xu = X[:, :, used, :].reshape(n * cout, -1)
            sol = np.linalg.lstsq(Xu, Rm.reshape(-1), rcond=None)[0]
            cb[m][used] = sol.reshape(-1, C)
            # assignment: position by position, every codeword, full residual norm
            for p in range(P):
                for c in range(cout):
                    best, best_k = None, 0
                    for k in range(K):
                        A[p, m, c] = k
                        u = cb[m][A[:, m, c]]  # (P, C)
                        pred = np.einsum("npi,pi->n", Sm, u)
                        err = float(((Rm[:, c] - pred) ** 2).sum())
                        if best is None or err < best - 1e-12 * max(abs(err), 1.0):
                            best, best_k = err, k
                    A[p, m, c] = best_k
        history.append(total())
    return ECResult(cb, A, history, [0.0] * len(history))
