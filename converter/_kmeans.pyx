# Compiled inner loops of the converter's k-means (converter/quantize.py). The converter only:
# the runtime does not import this module.
#
# Each function computes exactly what the numpy expression it replaces computes, in the same
# floating-point order, so a conversion gives the same file with or without it (tests compare
# them bit for bit). What it saves is memory traffic: numpy materialises (S, N, K) distance arrays
# and walks them once per dimension; these loops keep one point's K distances in a small
# buffer (L1).
# AlexNet's fc6 is 2304 k-means problems of 4096 points.

from libc.math cimport isnan
from libc.stdint cimport int64_t

import numpy as np


def labels(const float[:, :, ::1] X, const float[:, :, ::1] Ct, const float[:, ::1] cc):
    """Nearest centre of every point: (S, N) int64.

    X (S, N, d) points, Ct (S, d, K) the centres transposed, cc (S, K) their squared norms.
    Distance to centre k: cc[k] + sum_j -2 * (x_j * c_jk), in float32 and in that order (the
    numpy reference adds one dimension at a time); the first smallest wins, a NaN before any
    number (numpy's argmin)."""
    cdef Py_ssize_t S = X.shape[0], N = X.shape[1], d = X.shape[2], K = Ct.shape[2]
    if Ct.shape[0] != S or Ct.shape[1] != d or cc.shape[0] != S or cc.shape[1] != K:
        raise ValueError(f"labels: shapes X {tuple(X.shape)[:3]}, Ct {tuple(Ct.shape)[:3]}, "
                         f"cc {tuple(cc.shape)[:2]} do not match")
    out = np.empty((S, N), dtype=np.int64)
    if S == 0 or N == 0:
        return out
    if K == 0:
        raise ValueError("labels: no centres")
    cdef int64_t[:, ::1] o = out
    dist_buf = np.empty(K, dtype=np.float32)
    cdef float[::1] dist = dist_buf
    cdef Py_ssize_t s, n, j, k, best_k
    cdef float xj, t, best
    with nogil:
        for s in range(S):
            for n in range(N):
                for k in range(K):
                    dist[k] = cc[s, k]
                for j in range(d):
                    xj = X[s, n, j]
                    for k in range(K):
                        t = xj * Ct[s, j, k]
                        dist[k] = dist[k] + t * <float>-2.0
                best_k = 0
                best = dist[0]
                if not isnan(best):
                    for k in range(1, K):
                        if isnan(dist[k]):
                            best_k = k
                            break
                        if dist[k] < best:
                            best = dist[k]
                            best_k = k
                o[s, n] = best_k
    return out


def update_min_sqdist(const double[:, :, ::1] X, const double[:, ::1] c, mind_array):
    """mind = minimum(mind, ((X - c[:, None]) ** 2).sum(-1)) in place (returned), for d <= 8.

    numpy sums a last axis of d < 8 values left to right and one of 8 as a tree of pairs
    (pairwise summation, ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))): the same orders here
    (the caller keeps numpy for longer axes). A NaN distance propagates as in np.minimum."""
    cdef double[:, ::1] mind = mind_array
    cdef Py_ssize_t S = X.shape[0], N = X.shape[1], d = X.shape[2]
    if d < 1 or d > 8:
        raise ValueError(f"update_min_sqdist: dimension {d} is not in 1..8")
    if c.shape[0] != S or c.shape[1] != d or mind.shape[0] != S or mind.shape[1] != N:
        raise ValueError("update_min_sqdist: shapes do not match")
    cdef Py_ssize_t s, n, j
    cdef double sq[8]
    cdef double diff, dist, m
    with nogil:
        for s in range(S):
            for n in range(N):
                for j in range(d):
                    diff = X[s, n, j] - c[s, j]
                    sq[j] = diff * diff
                if d == 8:
                    dist = ((sq[0] + sq[1]) + (sq[2] + sq[3])) + ((sq[4] + sq[5]) + (sq[6] + sq[7]))
                else:
                    dist = sq[0]
                    for j in range(1, d):
                        dist = dist + sq[j]
                m = mind[s, n]
                # np.minimum: a NaN in either operand gives NaN
                if isnan(dist) or isnan(m):
                    mind[s, n] = m + dist
                elif dist < m:
                    mind[s, n] = dist
    return mind_array


def cumsum_reaching(const double[:, ::1] w, const double[::1] u):
    """Per row s: how many running sums w[s, 0] + ... + w[s, i] (added left to right, as
    np.cumsum) are < u[s], i.e. (np.cumsum(w, axis=1) < u[:, None]).sum(axis=1) for w >= 0.
    Stops at the first running sum that is not (a NaN included): the sums only grow."""
    cdef Py_ssize_t S = w.shape[0], N = w.shape[1]
    if u.shape[0] != S:
        raise ValueError("cumsum_reaching: shapes do not match")
    out = np.empty(S, dtype=np.int64)
    cdef int64_t[::1] o = out
    cdef Py_ssize_t s, i
    cdef double acc
    with nogil:
        for s in range(S):
            acc = 0.0
            i = 0
            while i < N:
                acc = w[s, i] if i == 0 else acc + w[s, i]
                if not (acc < u[s]):
                    break
                i += 1
            o[s] = i
    return out
