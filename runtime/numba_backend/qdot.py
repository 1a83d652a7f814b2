"""uint8 x int8 products of dynamically quantized activations, computed as onnxruntime computes them.

onnxruntime's ``DynamicQuantizeLSTM`` does not multiply fp32 activations by int8 weights: before
each quantized GEMM it quantizes the activation matrix ``A`` to uint8 (``GetQuantizationParameter``:
the range ``[min(A, 0), max(A, 0)]`` over the whole matrix, ``scale = (max - min) / 255``, zero
point ``round_half_even(-min / scale)``; ``q = clamp(round_half_even(a / scale) + zp, 0, 255)``),
sums ``(q - zp) (w - w_zp)`` exactly in int32 and scales each column by ``a_scale * w_scale[col]``.
This module does the same, so an int8 LSTM gives onnxruntime's numbers on both backends:

* ``_range`` / ``_params`` / ``_quantize_row``: the activation parameters and uint8 image, one
  parameter set per batch row (its whole sequence for the input projection, its state for a
  recurrent step).  onnxruntime takes one set for its whole matrix, i.e. for the whole batch; per
  batch row is the same at batch 1 and keeps a row's result independent of its batch neighbours
  (rows run alone equal rows run in a batch, which every other rnnkit path guarantees too).  The
  input range covers the row's whole padded sequence, as onnxruntime's covers its whole matrix;
  rnnkit's graphs pad with zeros, which every range contains anyway.
* ``pack_quads``: int8 weights ``(nd, K, C)`` in blocks of 64 columns whose 4 consecutive K share
  one 32-bit lane, the operand order of ``vpdpbusd`` (64 u8 x s8 products per AVX512-VNNI
  instruction, 4x the fp32 FMA rate, weights read as they are stored).
* ``_make_dot(nr)``: the block product for ``nr`` rows, LLVM vector IR that calls ``vpdpbusd``
  where the compile target has AVX512-VNNI and otherwise widens to int16 pairs that X86 lowers to
  ``vpmaddwd`` (AVX2/AVX512BW; other targets get the same IR lowered generically).  Both give the
  exact int32 sums, so the choice changes speed only.
* ``_dots``: ``_make_dot``'s kernels over all blocks, 4 rows per pass, or where ``AMX``
  (``amx.py``) whole groups of up to 16 rows on AMX tiles first; the same exact int32 sums.
* ``matvec_u8`` (a recurrent step), ``project_u8_rows`` (rows of inputs, each with its batch row's
  parameters from ``input_params``: an RNN's input projection, a chunk of steps at a time)
  and ``project_u8`` (both in one: ``DynamicQuantizeMatMul`` with one parameter set for the whole
  tensor, as onnxruntime does).

Zero points: ``sum (q - zq)(w - zw) = sum q w - zq colsum(w) - zw sum q + K zq zw`` with K the
padded length (padding has q = zq and w = 0, which contributes nothing); ``zero_point_terms``.  Must not import torch or
onnxruntime.
"""

from __future__ import annotations

import llvmlite.binding as ll
import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import (
    amx,
    config,  # noqa: F401  (sets NUMBA_CACHE_DIR before numba is imported)
)
from .config import FASTMATH
from .config import JIT as _JIT
from .matvec import PB, _aligned_empty, grouped_dot_py

JIT = dict(_JIT, fastmath=set(FASTMATH))
# Quantization divides (a / scale, as onnxruntime does): no reciprocal or reassociation may
# change a rounding, so these loops compile without fast-math.
EXACT = dict(_JIT, fastmath=False)
KQ = 8  # K is zero-padded to a multiple of this (whole quads, and the fp32 kernels' padding)


def _target_has_vnni() -> bool:
    """Whether numba compiles for a CPU with AVX512-VNNI (its own feature string when set)."""
    feats = numba.config.CPU_FEATURES
    if feats is not None:
        return "+avx512vnni" in feats.split(",")
    if numba.config.CPU_NAME not in (None, "host"):
        return False  # a named portable target: do not assume the host's extensions
    try:
        return bool(ll.get_host_cpu_features().get("avx512vnni", False))
    except RuntimeError:  # features unavailable on this platform
        return False


VNNI = _target_has_vnni()
AMX = amx.AVAILABLE  # tile products for groups of up to 16 rows (amx.py), the other rows as above
AMX_ROWS = 4  # rows from which a group goes to the tiles (2-3 rows measured 2x slower there than on VNNI)


def pack_quads(M: np.ndarray) -> np.ndarray:
    """(nd, K, C) int8 -> (nd, ceil(C/PB), Kp/4, 4*PB), [cb, kq, 4j + e] = M[4kq + e, cb*PB + j],
    zero-padded (K to Kp, a multiple of KQ; C to PB), cache-line aligned."""
    nd, K, C = M.shape
    Kp, ncb = -(-K // KQ) * KQ, -(-C // PB)
    out = np.zeros((nd, Kp, ncb * PB), np.int8)
    out[:, :K, :C] = M
    blocks = _aligned_empty((nd, ncb, Kp // 4, 4 * PB), np.int8)
    blocks[...] = out.reshape(nd, Kp // 4, 4, ncb, PB).transpose(0, 3, 1, 4, 2).reshape(nd, ncb, Kp // 4, 4 * PB)
    return blocks


PROJ_ROWS = 64  # rows of project_u8's int32 sums held at once (64 x 1024 columns: 256 KB)
KMAX = 16384  # padded K up to which every int32 term of the zero-point correction fits (see below)


def zero_point_terms(M: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """(nd, K, C) int8 weights, (nd, C) integer zero points -> (nd, 2, C) int32 ``[colsum(M) - Kp zp,
    zp]``: ``sum (q - zq)(w - zw) = acc - zq (colsum - Kp zw) - zw sum(q)``.  With |w|, |zw| <= 128,
    q, zq <= 255 and Kp <= KMAX the three terms stay below 2^31 together, so the correction is
    exact in int32 (16 lanes per AVX-512 vector)."""
    Kp = -(-M.shape[1] // KQ) * KQ
    if Kp > KMAX:
        raise ValueError(f"int8 LSTM input size {M.shape[1]} is over {KMAX}: the int32 sums could overflow")
    zp = np.broadcast_to(np.asarray(zp, np.float64), (M.shape[0], M.shape[2]))
    if not np.array_equal(zp, np.rint(zp)) or np.abs(zp).max(initial=0) > 128:
        raise ValueError("int8 weight zero points must be integers in [-128, 128]")
    zpi = zp.astype(np.int64)
    return np.stack([M.astype(np.int64).sum(axis=1) - Kp * zpi, zpi], axis=1).astype(np.int32)


def _store_sums(builder, accs, out, r0_v, ostride_v, ooff_v, vnni: bool) -> None:
    """``_make_dot``'s last part: the accumulators of each row's column vectors into ``out``."""
    v16 = ir.VectorType(ir.IntType(32), 16)
    ncols = ir.Constant(v16, [2 * i for i in range(8)] + [16 + 2 * i for i in range(8)])
    ncols2 = ir.Constant(v16, [2 * i + 1 for i in range(8)] + [16 + 2 * i + 1 for i in range(8)])
    for r in range(len(accs)):
        orow = builder.gep(
            out, [builder.add(builder.mul(builder.add(r0_v, ir.Constant(r0_v.type, r)), ostride_v), ooff_v)]
        )
        for v in range(len(accs[r])):
            if vnni:
                total = builder.load(accs[r][v][0])
            else:  # lanes (2c, 2c+1) of half s hold column 8s + c's two pair sums
                a, b = builder.load(accs[r][v][0]), builder.load(accs[r][v][1])
                total = builder.add(builder.shuffle_vector(a, b, ncols), builder.shuffle_vector(a, b, ncols2))
            p = builder.bitcast(builder.gep(orow, [ir.Constant(ooff_v.type, 16 * v)]), v16.as_pointer())
            builder.store(total, p, align=4)


def _make_dot(nr: int, vnni: bool):
    """out[r0 + r, ooff:ooff+PB] = sum over kq < nkq, e < 4 of hq[r0 + r, 4kq + e] * W[woff + kq*4PB + 4j + e]
    for r < nr, int32; hq (rows, 4 nkq) uint8, W int8 blocks (pack_quads), out (rows, ostride) int32.
    The nr x 4 vectors of 16 int32 sums stay in registers over the whole K loop; each weight
    vector is loaded once for all nr rows.  (At one row the 4 accumulator chains do not limit it:
    splitting them in 8 measured no faster; the step streams its weights from L2.)"""

    @intrinsic
    def dot(typingctx, W, woff, hq, r0, nkq, out, ostride, ooff):
        if not (
            isinstance(W, types.Array)
            and W.dtype == types.int8
            and isinstance(hq, types.Array)
            and hq.dtype == types.uint8
            and hq.ndim == 2
            and isinstance(out, types.Array)
            and out.dtype == types.int32
            and out.ndim == 2
        ):
            return None
        sig = types.void(W, types.intp, hq, types.intp, types.intp, out, types.intp, types.intp)
        nvec = PB // 16

        def codegen(context, builder, signature, args):
            w_arg, woff_v, h_arg, r0_v, nkq_v, o_arg, ostride_v, ooff_v = args
            w_ary = context.make_array(signature.args[0])(context, builder, w_arg)
            h_ary = context.make_array(signature.args[2])(context, builder, h_arg)
            o_ary = context.make_array(signature.args[5])(context, builder, o_arg)
            i8, i16, i32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
            v16 = ir.VectorType(i32, 16)
            # VNNI: one accumulator of 16 column sums per vector; int16 pairs: two, each lane
            # holding a column's pair sums (k 0+1 and k 2+3 in neighbouring lanes), folded at the end
            nacc = 1 if vnni else 2
            accs = [
                [[cgutils.alloca_once_value(builder, ir.Constant(v16, None)) for _ in range(nacc)] for _ in range(nvec)]
                for _ in range(nr)
            ]
            wbase = builder.gep(w_ary.data, [woff_v])
            hquads = builder.bitcast(h_ary.data, i32.as_pointer())
            hrows = [
                builder.gep(hquads, [builder.mul(builder.add(r0_v, ir.Constant(r0_v.type, r)), nkq_v)])
                for r in range(nr)
            ]
            splat = ir.Constant(v16, [0] * 16)
            if vnni:
                fn = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(v16, [v16, v16, v16]), "llvm.x86.avx512.vpdpbusd.512"
                )
            else:
                v32_32 = ir.VectorType(i32, 32)
                even = ir.Constant(v16, [2 * i for i in range(16)])
                odd = ir.Constant(v16, [2 * i + 1 for i in range(16)])
                halves = [ir.Constant(ir.VectorType(i32, 32), list(range(32 * s, 32 * s + 32))) for s in range(2)]
            with cgutils.for_range(builder, nkq_v) as loop:
                kq = loop.index
                hb = []
                for r in range(nr):
                    quad = builder.load(builder.gep(hrows[r], [kq]), align=1)
                    b = builder.insert_element(ir.Constant(v16, None), quad, ir.Constant(i32, 0))
                    b = builder.shuffle_vector(b, b, splat)  # the row's 4 activations in every lane
                    if not vnni:  # as 64 int16 (zero-extended bytes), split in two halves
                        b16 = builder.zext(builder.bitcast(b, ir.VectorType(i8, 64)), ir.VectorType(i16, 64))
                        b = [builder.sext(builder.shuffle_vector(b16, b16, h), v32_32) for h in halves]
                    hb.append(b)
                row = builder.gep(wbase, [builder.mul(kq, ir.Constant(kq.type, 4 * PB))])
                for v in range(nvec):
                    ptr = builder.bitcast(builder.gep(row, [ir.Constant(kq.type, 64 * v)]), v16.as_pointer())
                    w = builder.load(ptr, align=64)
                    if vnni:
                        for r in range(nr):
                            acc = accs[r][v][0]
                            builder.store(builder.call(fn, [builder.load(acc), hb[r], w]), acc)
                        continue
                    w16 = builder.sext(builder.bitcast(w, ir.VectorType(i8, 64)), ir.VectorType(i16, 64))
                    ws = [builder.sext(builder.shuffle_vector(w16, w16, h), v32_32) for h in halves]
                    for r in range(nr):
                        for s in range(2):  # even + odd lanes of an i32 product of int16s: vpmaddwd
                            prod = builder.mul(hb[r][s], ws[s])
                            part = builder.add(
                                builder.shuffle_vector(prod, prod, even), builder.shuffle_vector(prod, prod, odd)
                            )
                            acc = accs[r][v][s]
                            builder.store(builder.add(builder.load(acc), part), acc)
            _store_sums(builder, accs, o_ary.data, r0_v, ostride_v, ooff_v, vnni)
            return context.get_dummy_value()

        return sig, codegen

    return grouped_dot_py(nr, 4) if numba.config.DISABLE_JIT else dot


_dot1, _dot2, _dot4 = _make_dot(1, VNNI), _make_dot(2, VNNI), _make_dot(4, VNNI)
_dot4_pairs, _dot1_pairs = _make_dot(4, False), _make_dot(1, False)  # the portable lowering (tested)


@njit(**EXACT)
def _params(lo, hi):
    """onnxruntime's GetQuantizationParameter for uint8 from a range: (scale, zero point)."""
    lo = min(lo, np.float32(0.0))
    hi = max(hi, np.float32(0.0))
    scale = np.float32((hi - lo) / np.float32(255.0)) if hi != lo else np.float32(1.0)
    z = np.float32(np.float32(0.0) - lo / scale)
    z = min(max(z, np.float32(0.0)), np.float32(255.0))
    return scale, np.float32(np.rint(z))


LANES = 16  # _range's independent chains: one AVX-512 vector of float32


def _make_lanes_range():
    """An intrinsic ``(lo, hi, probe) = lanes_range(x, n, lo, hi)`` over x[:n // LANES * LANES] of a
    C-contiguous float32 x: LANES independent chains of ``v < lo ? v : lo`` (and ``>`` for hi) and of
    ``probe += v * 0`` (NaN for a NaN or inf), as LLVM vectors without fast-math, then the lanes
    folded.  The minimum and maximum are order-independent (a lane only takes a value strictly
    beyond its own, so -0.0 never replaces 0.0) and any NaN probe makes the sum NaN: the same
    results as one chain, 16 lanes per instruction.  LLVM vectorises neither form by itself
    without fast-math (a float min/max reduction needs ``nnan``, which would also fold the probe);
    4 scalar chains took 163 ns per 256 values, the vector chains 15-20."""

    @intrinsic
    def lanes_range(typingctx, x, n, lo, hi):
        if not (isinstance(x, types.Array) and x.dtype == types.float32 and x.ndim == 1 and x.layout == "C"):
            return None
        sig = types.UniTuple(types.float32, 3)(x, types.intp, types.float32, types.float32)

        def codegen(context, builder, signature, args):
            x_arg, n_v, lo_v, hi_v = args
            data = context.make_array(signature.args[0])(context, builder, x_arg).data
            f32 = ir.FloatType()
            vf = ir.VectorType(f32, LANES)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)

            def broadcast(v):
                one = builder.insert_element(
                    ir.Constant(ir.VectorType(f32, 1), None), v, ir.Constant(ir.IntType(32), 0)
                )
                return builder.shuffle_vector(one, one, splat)

            los = cgutils.alloca_once_value(builder, broadcast(lo_v))
            his = cgutils.alloca_once_value(builder, broadcast(hi_v))
            probes = cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * LANES))
            zeros = ir.Constant(vf, [0.0] * LANES)
            with cgutils.for_range(builder, builder.udiv(n_v, ir.Constant(n_v.type, LANES))) as loop:
                ptr = builder.gep(data, [builder.mul(loop.index, ir.Constant(n_v.type, LANES))])
                v = builder.load(builder.bitcast(ptr, vf.as_pointer()), align=4)
                a, b = builder.load(los), builder.load(his)
                builder.store(builder.select(builder.fcmp_ordered("<", v, a), v, a), los)
                builder.store(builder.select(builder.fcmp_ordered(">", v, b), v, b), his)
                builder.store(builder.fadd(builder.load(probes), builder.fmul(v, zeros)), probes)
            a, b, p = builder.load(los), builder.load(his), builder.load(probes)
            lo_r, hi_r, p_r = [builder.extract_element(vec, ir.Constant(ir.IntType(32), 0)) for vec in (a, b, p)]
            for lane in range(1, LANES):
                idx = ir.Constant(ir.IntType(32), lane)
                va, vb = builder.extract_element(a, idx), builder.extract_element(b, idx)
                lo_r = builder.select(builder.fcmp_ordered("<", va, lo_r), va, lo_r)
                hi_r = builder.select(builder.fcmp_ordered(">", vb, hi_r), vb, hi_r)
                p_r = builder.fadd(p_r, builder.extract_element(p, idx))
            return context.make_tuple(builder, signature.return_type, (lo_r, hi_r, p_r))

        return sig, codegen

    def lanes_range_py(x, n, lo, hi):
        """Plain Python (NUMBA_DISABLE_JIT=1): one chain, the same results."""
        z = np.float32(0.0)
        p = z
        for v in x[: n // LANES * LANES]:
            lo = v if v < lo else lo
            hi = v if v > hi else hi
            p = p + v * z
        return lo, hi, p

    return lanes_range_py if numba.config.DISABLE_JIT else lanes_range


_lanes_range = _make_lanes_range()


@njit(**EXACT)
def _range(x, lo, hi):
    """(min, max) of x (1-D, C-contiguous) folded into (lo, hi), and whether x holds a NaN or inf:
    ``_lanes_range`` over whole vectors, the last ``len(x) % LANES`` one by one."""
    n = x.shape[0]
    z = np.float32(0.0)
    lo, hi, p = _lanes_range(x, n, lo, hi)
    for k in range(n - n % LANES, n):
        v = x[k]
        lo = v if v < lo else lo
        hi = v if v > hi else hi
        p += v * z
    return lo, hi, p != z


@njit(**EXACT)
def _quantize_row(x, s, z, hq):
    """hq[:len(x)] = clamp(rint(x / s) + z, 0, 255), hq[len(x):] = z; returns the sum of hq.
    The division is the one onnxruntime's MlasQuantizeLinear does (no reciprocal: this function
    compiles without fast-math, and still vectorises: it is elementwise)."""
    K = x.shape[0]
    total = np.int32(0)
    for k in range(K):
        q = min(max(np.float32(np.rint(x[k] / s)) + z, np.float32(0.0)), np.float32(255.0))
        qi = np.int32(q)
        hq[k] = np.uint8(qi)
        total += qi
    zi = np.int32(z)
    for k in range(K, hq.shape[0]):
        hq[k] = np.uint8(zi)
    return total + np.int32(hq.shape[0] - K) * zi


@njit(**EXACT)
def _dequantize(acc, z, qsum, zterm, wscale, c0, ncols, out, s):
    """out[j] = (acc[c] - z zterm[0, c] - zterm[1, c] qsum) * fp32(s * wscale[c]), c = c0 + j: the
    int32 sum with both zero points removed (exact, see zero_point_terms), scaled as onnxruntime
    scales it.  No fast-math (no reassociation of the fp32 products); elementwise, so it vectorises."""
    zi, qi = np.int32(z), np.int32(qsum)
    corr, zw = zterm[0], zterm[1]
    for j in range(ncols):
        c = c0 + j
        # int32 throughout (numba would widen to int64; exact either way, see zero_point_terms)
        v = np.int32(np.int32(acc[c] - np.int32(zi * corr[c])) - np.int32(zw[c] * qi))
        out[j] = np.float32(v) * (s * wscale[c])


@njit(**JIT)
def _dots(Q, hq, N, acc, vnni_kernels, amx_kernels=False):
    """acc (N, ncb*PB) int32 = hq (N, Kp) uint8 times the blocks Q, 4 rows per pass over a block;
    with ``amx_kernels`` (``amx.AVAILABLE``) and Kp a multiple of 64, whole groups of 16 rows on
    AMX tiles first (the same exact sums: which kernel ran a row does not change it)."""
    ncb, nkq = Q.shape[0], Q.shape[1]
    width = acc.shape[1]
    r1 = 0  # the rows from r1 on go through the vector kernels
    if amx_kernels and nkq % amx.KQ_TILE == 0 and N >= AMX_ROWS:
        r1 = N - N % amx.ROWS
        if r1:
            amx.dots(Q, hq, 0, r1, amx.ROWS, acc)
        if N - r1 >= AMX_ROWS:  # the last rows as one smaller group
            amx.dots(Q, hq, r1, N - r1, N - r1, acc)
            r1 = N
    for cb in range(ncb):
        off = cb * nkq * 4 * PB
        for r0 in range(r1, N - 3, 4):
            if vnni_kernels:
                _dot4(Q, off, hq, r0, nkq, acc, width, cb * PB)
            else:
                _dot4_pairs(Q, off, hq, r0, nkq, acc, width, cb * PB)
        rest = N % 4  # the last 1-3 rows: a pair in one pass, then a last row (the portable
        if not vnni_kernels:  # lowering one by one: shorter first compiles, see matvec._fma_rest)
            for r in range(N - rest, N):
                _dot1_pairs(Q, off, hq, r, nkq, acc, width, cb * PB)
            continue
        if rest >= 2:
            _dot2(Q, off, hq, N - rest, nkq, acc, width, cb * PB)
        if rest % 2:
            _dot1(Q, off, hq, N - 1, nkq, acc, width, cb * PB)


def _dots_any(Q, hq, N, acc, vnni_kernels, amx_kernels):
    """``_dots`` for 8-bit blocks and a no-op for fp32 ones, so that ``matvec_u8``/``project_u8``
    compile inside kernels specialised for either weight type (rnn.py calls them directly: a
    direct call lets LLVM inline the quantization loops, measured 1.7 us per LSTM-256 step
    faster than the same call through an overload)."""
    if Q.dtype == np.int8:
        _dots(Q, hq, N, acc, vnni_kernels, amx_kernels)


@overload(_dots_any, jit_options=dict(JIT, cache=False))
def _dots_any_jit(Q, hq, N, acc, vnni_kernels, amx_kernels):
    if Q.dtype != types.int8:
        return lambda Q, hq, N, acc, vnni_kernels, amx_kernels: None
    return lambda Q, hq, N, acc, vnni_kernels, amx_kernels: _dots(Q, hq, N, acc, vnni_kernels, amx_kernels)


@njit(**JIT)
def workspace(n, Q):
    """(hq, acc) buffers of ``matvec_u8`` for up to n rows of blocks Q."""
    return np.empty((n, 4 * Q.shape[1]), np.uint8), np.empty((n, Q.shape[0] * PB), np.int32)


@njit(**JIT)
def matvec_u8(V, n, Q, zterm, wscale, out, c0, ncols, hq, acc, vnni_kernels=VNNI, amx_kernels=AMX):
    """out[i, c0:c0+ncols] = V[i] quantized to uint8 (one parameter set per row, onnxruntime's
    rules) times the weights ``(q - zp) * wscale`` packed in Q (pack_quads; ``zterm`` from
    zero_point_terms), rows i < n; V is (>= n, K <= Kp) fp32; ``hq``/``acc`` are ``workspace``
    buffers for >= n rows.  A row holding a NaN or inf outputs NaN."""
    K = V.shape[1]
    scale = np.empty(n, np.float32)
    zp = np.empty(n, np.float32)
    qsum = np.empty(n, np.int32)
    for i in range(n):
        lo, hi, bad = _range(V[i, :K], np.float32(0.0), np.float32(0.0))
        scale[i], zp[i] = _params(lo, hi)
        qsum[i] = _quantize_row(V[i, :K], scale[i], zp[i], hq[i])
        if bad:
            scale[i] = np.float32(np.nan)
    _dots_any(Q, hq, n, acc, vnni_kernels, amx_kernels)
    for i in range(n):
        _dequantize(acc[i], zp[i], qsum[i], zterm, wscale, c0, ncols, out[i, c0 : c0 + ncols], scale[i])


@njit(**JIT)
def input_params(X, layout):
    """The uint8 parameters of an input X (A0, A1, I), one set per batch row (axis 1 of X for layout
    0, axis 0 for layout 1) over its whole sequence, as onnxruntime takes one over its whole matrix:
    (scale, zero point, whether the row holds a NaN or inf), each (batch,)."""
    A0, A1 = X.shape[0], X.shape[1]
    nb = A1 if layout == 0 else A0
    lo = np.zeros(nb, np.float32)
    hi = np.zeros(nb, np.float32)
    bad = np.zeros(nb, np.bool_)
    for a in range(A0):
        for b in range(A1):
            g = b if layout == 0 else a
            lo[g], hi[g], badrow = _range(X[a, b], lo[g], hi[g])
            bad[g] = bad[g] or badrow
    scale = np.empty(nb, np.float32)
    zp = np.empty(nb, np.float32)
    for g in range(nb):
        scale[g], zp[g] = _params(lo[g], hi[g])
    return scale, zp, bad


@njit(**JIT)
def project_u8_rows(X, group, scale, zp, bad, Q, zterm, wscale, bias, out, c0, vnni_kernels=VNNI, amx_kernels=AMX):
    """out[:, c0:c0+C] (C = len(wscale)) = the rows of X (N, I) times the weights in Q plus bias, row
    r quantized with batch row group[r]'s parameters (``input_params``).  Each row's result is its
    own: the same whatever rows share the call (an RNN's steps project their active rows one step
    at a time)."""
    N = X.shape[0]
    C = wscale.shape[0]
    n0 = min(N, PROJ_ROWS)
    # PROJ_ROWS rows at a time: their int32 sums stay in L2 until dequantized (all rows at once:
    # 2048 x 2048 sums, 16 MB, written and read back from memory; the weights stay in L2 either way)
    hq = np.empty((n0, 4 * Q.shape[1]), np.uint8)
    qsum = np.empty(n0, np.int32)
    acc = np.empty((n0, Q.shape[0] * PB), np.int32)
    for r0 in range(0, N, PROJ_ROWS):
        n = min(PROJ_ROWS, N - r0)
        for i in range(n):
            g = group[r0 + i]
            qsum[i] = _quantize_row(X[r0 + i], scale[g], zp[g], hq[i])
        _dots_any(Q, hq, n, acc, vnni_kernels, amx_kernels)
        for i in range(n):
            g = group[r0 + i]
            s = np.float32(np.nan) if bad[g] else scale[g]
            _dequantize_bias(acc[i], zp[g], qsum[i], zterm, wscale, C, out[r0 + i, c0 : c0 + C], s, bias)


@njit(**JIT)
def project_u8(X, layout, Q, zterm, wscale, bias, out, vnni_kernels=VNNI, amx_kernels=AMX):
    """out (A0*A1, C) = X (A0, A1, I) C-contiguous times the weights in Q plus bias, X quantized
    with one parameter set per batch row (``input_params``): the input projection of every step,
    onnxruntime's one GEMM over the sequence (``DynamicQuantizeMatMul``: layout 1, A0 = 1)."""
    A0, A1, I = X.shape
    scale, zp, bad = input_params(X, layout)
    project_u8_rows(
        X.reshape(A0 * A1, I),
        batch_rows(A0, A1, layout),
        scale,
        zp,
        bad,
        Q,
        zterm,
        wscale,
        bias,
        out,
        0,
        vnni_kernels,
        amx_kernels,
    )


@njit(**JIT)
def batch_rows(A0, A1, layout):
    """The batch row of each row of an (A0, A1, I) input flattened to (A0*A1, I): its index on
    axis 1 for layout 0, on axis 0 for layout 1 (``project_u8_rows``' ``group``)."""
    group = np.empty(A0 * A1, np.int64)
    for a in range(A0):
        for b in range(A1):
            group[a * A1 + b] = b if layout == 0 else a
    return group


@njit(**EXACT)
def _dequantize_bias(acc, z, qsum, zterm, wscale, ncols, out, s, bias):
    """``_dequantize`` of columns 0..ncols-1 plus bias[j], in the same pass: the product is rounded
    to fp32, then the bias added (two roundings, as a separate pass; no fast-math, no FMA)."""
    zi, qi = np.int32(z), np.int32(qsum)
    corr, zw = zterm[0], zterm[1]
    for j in range(ncols):
        v = np.int32(np.int32(acc[j] - np.int32(zi * corr[j])) - np.int32(zw[j] * qi))
        p = np.float32(v) * (s * wscale[j])
        out[j] = p + bias[j]
