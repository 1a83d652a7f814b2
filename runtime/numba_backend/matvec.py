"""Mat-vec kernels of the recurrent step: packed weight blocks and LLVM-vector inner loops.

Recurrent weights ``R^T`` (``[hidden, gates*hidden]``) are packed once into blocks of 64 columns
(``pack_blocks``, cache-line aligned), each block holding its columns for all K inputs in one
sequential stream.  A mat-vec keeps the 64 sums of a block (per row, up to 4 rows at once) in four
16-lane registers over the whole K loop and reads each weight once: fp32 weights with a broadcast
h and FMAs; 8-bit weights as int16 pairs times h split into two int16 parts (``vpdpwssd`` /
``vpmaddwd``, exact int32 sums, then scaled back), which is the dequantized weights' product to
fp32 accuracy.  The loops are LLVM vector IR (numba ``@intrinsic``): numba's own vectoriser keeps
to 256-bit vectors, emits int16 dot products only on xmm and cannot hold sums in registers across
the K loop (measurements in benchmarks/rnn_op_speed.py).  Under ``NUMBA_DISABLE_JIT=1`` the same
functions run as numpy.  Also here: ``project`` (rows times a packed matrix plus a bias: the RNN
input projection, and MatMul with a constant weight, fp32 or 8-bit).  Must not import torch or onnxruntime.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import config  # noqa: F401  (sets NUMBA_CACHE_DIR before numba is imported)
from .activations import _HALF, _ZERO
from .config import FASTMATH, cache_bytes
from .config import JIT as _JIT

JIT = dict(_JIT, fastmath=set(FASTMATH))

KP = 8  # K (inputs of a mat-vec) is zero-padded to a multiple of this
# k per iteration of the 4-row fp32 kernel's K loop: 4 rows x 64 columns at K=256 ran 78 -> 85-88
# GMAC/s unrolled by 4 (K=512: 66 -> 74), the loop's own instructions no longer between the FMAs.
# The 1- and 2-row kernels (batch 1, leftover rows) stay rolled: each unrolled kernel lengthens
# every first compile (all four: LM step +4.6%)
K_UNROLL = 4
PB = 64  # columns per block of packed weights: 4 vectors of 16 fp32 / int32 sums per row
_HCAP = 32767  # int16 range of the quantized state; see _matvec_q16 for the int32 bound


def pack_blocks(M: np.ndarray) -> np.ndarray:
    """(nd, K, C) -> blocks of PB columns, zero-padded: K to Kp (a multiple of KP), C to PB.

    float32: (nd, ceil(C/PB), Kp, PB), [cb, k, j] = M[k, cb*PB + j].
    8-bit: (nd, ceil(C/PB), Kp/2, 2*PB) pairs, [cb, kk, 2j + e] = M[2kk + e, cb*PB + j]: the operand
    order of a 16-bit multiply-add (one int32 lane = w[2kk, j] h[2kk] + w[2kk+1, j] h[2kk+1]).
    """
    nd, K, C = M.shape
    Kp, ncb = -(-K // KP) * KP, -(-C // PB)
    out = np.zeros((nd, Kp, ncb * PB), M.dtype)
    out[:, :K, :C] = M
    if M.dtype == np.float32:
        blocks = _aligned_empty((nd, ncb, Kp, PB), M.dtype)
        blocks[...] = out.reshape(nd, Kp, ncb, PB).transpose(0, 2, 1, 3)
    else:
        blocks = _aligned_empty((nd, ncb, Kp // 2, 2 * PB), M.dtype)
        blocks[...] = out.reshape(nd, Kp // 2, 2, ncb, PB).transpose(0, 3, 1, 4, 2).reshape(nd, ncb, Kp // 2, 2 * PB)
    return blocks


def _aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """An empty C array starting on a cache line: numpy only promises 16 bytes, and weights at
    16 mod 32 split every other 32-byte load across two lines (measured 20% slower steps)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(nbytes + align, np.uint8)
    start = (-buf.ctypes.data) % align
    return buf[start : start + nbytes].view(dtype).reshape(shape)


def _make_madd(nr: int):
    """An intrinsic for ``nr`` rows at once (each weight vector loaded once for all of them):

    out[r0 + r, ooff:ooff+PB] = sum over kk < nkk of W[woff + kk*2PB + 2j + e] * hq[r0 + r, 2kk + e]
    (e = 0, 1; r < nr), int32.  W is an 8- or 16-bit integer array (C order), hq (rows, 2 nkk)
    int16, out (rows, ostride) int32.  Written as LLVM vector IR (sign extensions, a multiply, even +
    odd lanes) that the X86 backend turns into ``vpmaddwd`` (AVX2) or ``vpdpwssd`` (AVX512-VNNI; 32
    MACs per instruction, with each row's h pair broadcast as one int32), the nr x 4 x 16 int32 sums
    held in registers over the whole K loop.  numba's loop vectorizer cannot produce this (xmm
    ``vpmaddwd`` dot products at best; see benchmarks/rnn_op_speed.py).  Other targets get the same
    IR lowered generically.
    """

    @intrinsic
    def madd(typingctx, W, woff, hq, r0, nkk, out, ostride, ooff):
        if not (
            isinstance(W, types.Array)
            and isinstance(W.dtype, types.Integer)
            and W.dtype.bitwidth <= 16
            and isinstance(hq, types.Array)
            and hq.dtype == types.int16
            and hq.ndim == 2
            and isinstance(out, types.Array)
            and out.dtype == types.int32
            and out.ndim == 2
        ):
            return None
        sig = types.void(W, types.intp, hq, types.intp, types.intp, out, types.intp, types.intp)
        wbits = W.dtype.bitwidth
        nvec = PB // 16

        def codegen(context, builder, signature, args):
            w_arg, woff_v, h_arg, r0_v, nkk_v, o_arg, ostride_v, ooff_v = args
            w_ary = context.make_array(signature.args[0])(context, builder, w_arg)
            h_ary = context.make_array(signature.args[2])(context, builder, h_arg)
            o_ary = context.make_array(signature.args[5])(context, builder, o_arg)
            i32 = ir.IntType(32)
            v16 = ir.VectorType(i32, 16)
            v32 = ir.VectorType(i32, 32)
            wvec = ir.VectorType(ir.IntType(wbits), 32)
            accs = [
                [cgutils.alloca_once_value(builder, ir.Constant(v16, None)) for _ in range(nvec)] for _ in range(nr)
            ]
            wbase = builder.gep(w_ary.data, [woff_v])
            hpairs = builder.bitcast(h_ary.data, i32.as_pointer())
            hrows = [
                builder.gep(hpairs, [builder.mul(builder.add(r0_v, ir.Constant(r0_v.type, r)), nkk_v)])
                for r in range(nr)
            ]
            even = ir.Constant(v16, [2 * i for i in range(16)])
            odd = ir.Constant(v16, [2 * i + 1 for i in range(16)])
            bcast = ir.Constant(v32, [i % 2 for i in range(32)])
            with cgutils.for_range(builder, nkk_v) as loop:
                kk = loop.index
                hx = []
                for r in range(nr):
                    pair = builder.load(builder.gep(hrows[r], [kk]), align=2)
                    pair = builder.bitcast(
                        builder.insert_element(ir.Constant(ir.VectorType(i32, 1), None), pair, ir.Constant(i32, 0)),
                        ir.VectorType(ir.IntType(16), 2),
                    )
                    hx.append(builder.sext(builder.shuffle_vector(pair, pair, bcast), v32))
                row = builder.gep(wbase, [builder.mul(kk, ir.Constant(kk.type, 2 * PB))])
                for v in range(nvec):
                    ptr = builder.bitcast(builder.gep(row, [ir.Constant(kk.type, 32 * v)]), wvec.as_pointer())
                    wx = builder.sext(builder.load(ptr, align=1), v32)
                    for r in range(nr):
                        prod = builder.mul(hx[r], wx)
                        part = builder.add(
                            builder.shuffle_vector(prod, prod, even), builder.shuffle_vector(prod, prod, odd)
                        )
                        builder.store(builder.add(builder.load(accs[r][v]), part), accs[r][v])
            _store_rows(builder, o_ary, accs, r0_v, ostride_v, ooff_v, v16)
            return context.get_dummy_value()

        return sig, codegen

    return grouped_dot_py(nr, 2) if numba.config.DISABLE_JIT else madd


def grouped_dot_py(nr: int, group: int):
    """Plain numpy (NUMBA_DISABLE_JIT=1) of a block product over K packed ``group`` at a time
    (pairs here, quads in qdot.py): out[r0 + r, ooff:ooff+PB] = sum over kg < nk, e < group of
    W[woff + kg*group*PB + group*j + e] * hq[r0 + r, group*kg + e], exact, int32."""

    def dot_py(W, woff, hq, r0, nk, out, ostride, ooff):
        w = W.reshape(-1)[woff : woff + nk * group * PB].reshape(nk, PB, group).astype(np.int64)
        for r in range(r0, r0 + nr):
            h = hq[r, : group * nk].reshape(nk, 1, group).astype(np.int64)
            out[r, ooff : ooff + PB] = (w * h).sum(axis=(0, 2)).astype(np.int32)

    return dot_py


_madd2, _madd4 = _make_madd(2), _make_madd(4)


def _store_rows(builder, o_ary, accs, r0_v, ostride_v, ooff_v, vector):
    """Write the register accumulators ``accs[r][v]`` (16-lane ``vector``s) to
    out[r0 + r, ooff + 16 v : ooff + 16 (v + 1)]: the epilogue both kernels share."""
    for r, row in enumerate(accs):
        obase = builder.gep(
            o_ary.data, [builder.add(builder.mul(builder.add(r0_v, ir.Constant(r0_v.type, r)), ostride_v), ooff_v)]
        )
        for v, acc in enumerate(row):
            ptr = builder.bitcast(builder.gep(obase, [ir.Constant(ooff_v.type, 16 * v)]), vector.as_pointer())
            builder.store(builder.load(acc), ptr, align=4)


def _make_fma(nr: int, ahead: int = 0, unrolled: int = 1):
    """The fp32 twin of _make_madd: out[r0 + r, ooff:ooff+PB] = sum over k < nk of
    W[woff + k*PB + j] * V[r0 + r, k] (r < nr), plus bias[j] when ``bias`` is not empty (PB values:
    one block's), the nr x 4 x 16 sums in registers over the K loop, one broadcast of V[r, k] per
    k, each weight vector loaded once for the nr rows.  Sums in k order (fmul + fadd with
    ``contract``: FMAs where the target has them), then the bias added (the rounding of a separate
    pass, without the pass: it read and wrote an LSTM-256's whole projection again, 0.3 ms of 13).

    ``ahead`` > 0: each k also prefetches the 4 cache lines ``ahead`` floats further on (past the
    block too: blocks are consecutive, and a prefetch never faults).  Used only where ``prefetched``
    says so (a MatMul's weights read from L3 at every call); see docs/design.md.  ``unrolled``: k
    per iteration of the K loop (``K_UNROLL``), the last ``nk % unrolled`` one by one."""

    @intrinsic
    def fma(typingctx, W, woff, V, r0, nk, out, ostride, ooff, bias):
        if not (
            isinstance(W, types.Array)
            and W.dtype == types.float32
            and isinstance(V, types.Array)
            and V.dtype == types.float32
            and V.ndim == 2
            and isinstance(out, types.Array)
            and out.dtype == types.float32
            and out.ndim == 2
            and isinstance(bias, types.Array)
            and bias.dtype == types.float32
            and bias.ndim == 1
        ):
            return None
        sig = types.void(W, types.intp, V, types.intp, types.intp, out, types.intp, types.intp, bias)
        nvec = PB // 16

        def codegen(context, builder, signature, args):
            w_arg, woff_v, v_arg, r0_v, nk_v, o_arg, ostride_v, ooff_v, b_arg = args
            w_ary = context.make_array(signature.args[0])(context, builder, w_arg)
            v_ary = context.make_array(signature.args[2])(context, builder, v_arg)
            o_ary = context.make_array(signature.args[5])(context, builder, o_arg)
            b_ary = context.make_array(signature.args[8])(context, builder, b_arg)
            f32, i32 = ir.FloatType(), ir.IntType(32)
            vf = ir.VectorType(f32, 16)
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(vf, None)) for _ in range(nvec)] for _ in range(nr)]
            wbase = builder.gep(w_ary.data, [woff_v])
            vstride = builder.extract_value(v_ary.shape, 1)
            vrows = [
                builder.gep(v_ary.data, [builder.mul(builder.add(r0_v, ir.Constant(r0_v.type, r)), vstride)])
                for r in range(nr)
            ]
            splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
            i8p = ir.IntType(8).as_pointer()
            prefetch = ahead and cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8"
            )

            def step(k):
                hb = []
                for r in range(nr):
                    x = builder.load(builder.gep(vrows[r], [k]))
                    xv = builder.insert_element(ir.Constant(ir.VectorType(f32, 1), None), x, ir.Constant(i32, 0))
                    hb.append(builder.shuffle_vector(xv, xv, splat))
                row = builder.gep(wbase, [builder.mul(k, ir.Constant(k.type, PB))])
                for v in range(nvec if ahead else 0):  # read, keep in all levels (prefetcht0), data
                    line = builder.bitcast(builder.gep(row, [ir.Constant(k.type, ahead + 16 * v)]), i8p)
                    builder.call(prefetch, [line, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
                for v in range(nvec):
                    ptr = builder.bitcast(builder.gep(row, [ir.Constant(k.type, 16 * v)]), vf.as_pointer())
                    wv = builder.load(ptr, align=4)
                    for r in range(nr):
                        prod = builder.fmul(hb[r], wv, flags=("contract",))
                        builder.store(builder.fadd(builder.load(accs[r][v]), prod, flags=("contract",)), accs[r][v])

            # `unrolled` k per loop iteration (the same FMAs in the same order: bit-identical sums),
            # then the last nk % unrolled one by one
            # (unrolled=1: LLVM folds the division and drops the empty remainder loop)
            unroll = ir.Constant(nk_v.type, unrolled)
            with cgutils.for_range(builder, builder.udiv(nk_v, unroll)) as loop:
                for u in range(unrolled):
                    step(builder.add(builder.mul(loop.index, unroll), ir.Constant(nk_v.type, u)))
            done = builder.mul(builder.udiv(nk_v, unroll), unroll)
            with cgutils.for_range(builder, builder.sub(nk_v, done)) as loop:
                step(builder.add(done, loop.index))
            nb = builder.extract_value(b_ary.shape, 0)
            with builder.if_then(builder.icmp_unsigned("!=", nb, ir.Constant(nb.type, 0))):
                for v in range(nvec):
                    ptr = builder.bitcast(builder.gep(b_ary.data, [ir.Constant(nb.type, 16 * v)]), vf.as_pointer())
                    bv = builder.load(ptr, align=4)
                    for r in range(nr):
                        builder.store(builder.fadd(builder.load(accs[r][v]), bv), accs[r][v])
            _store_rows(builder, o_ary, accs, r0_v, ostride_v, ooff_v, vf)
            return context.get_dummy_value()

        return sig, codegen

    def fma_py(W, woff, V, r0, nk, out, ostride, ooff, bias):
        """Plain numpy (NUMBA_DISABLE_JIT=1)."""
        w = W.reshape(-1)[woff : woff + nk * PB].reshape(nk, PB)
        out[r0 : r0 + nr, ooff : ooff + PB] = V[r0 : r0 + nr, :nk] @ w
        if bias.shape[0]:
            out[r0 : r0 + nr, ooff : ooff + PB] += bias

    return fma_py if numba.config.DISABLE_JIT else fma


_fma1, _fma2, _fma4 = _make_fma(1), _make_fma(2), _make_fma(4, unrolled=K_UNROLL)
# 4 KB ahead; not unrolled: they read weights from L3, where unrolling does not pay for its compile time
_fma1p, _fma4p = _make_fma(1, ahead=1024), _make_fma(4, ahead=1024)
NO_BIAS = np.zeros(0, np.float32)  # the kernels' ``bias`` when there is none (a constant of the compiled code)


@njit(**JIT)
def _fma_rest(W, woff, V, n, nk, out, ostride, ooff, bias):
    """The last n % 4 rows of V (after the 4-row passes): a pair in one pass over the block, then
    a last row (beams of 2-3, odd batches: 2 passes over the weights for 3 rows, not 3; a 3-row
    kernel as well measured no faster and made the first compile longer).  Each row's sums are the
    same FMAs in the same order whatever the number of rows: a row alone equals the row in a batch."""
    rest = n % 4
    if rest >= 2:
        _fma2(W, woff, V, n - rest, nk, out, ostride, ooff, bias)
    if rest % 2:
        _fma1(W, woff, V, n - 1, nk, out, ostride, ooff, bias)


_L2, _L3 = cache_bytes(2), cache_bytes(3)


def prefetched(nbytes: int) -> bool:
    """Whether ``project`` should read fp32 weights of ``nbytes`` with software prefetch: larger than
    one core's L2 (else they stay there, and the prefetches cost ~10%) and at most half the L3 (so
    they are likely read from L3, where prefetching made the word LM's 10 MB head 80-86 us in every
    process instead of ~85 or 102-107 us; from memory it made a 20 MB head 7% slower)."""
    return _L2 > 0 and _L3 > 0 and _L2 < nbytes <= _L3 // 2


@njit(**JIT)
def _matvec_f32(V, n, Q, out, c0, ncols, backwards):
    """out[i, c0:c0+ncols] = V[i] @ M for rows i < n, M = fp32 blocks Q (pack_blocks); V is (>= n, Kp).
    ``backwards``: the column blocks in reverse order (the same sums; see _matvec)."""
    ncb, K = Q.shape[0], Q.shape[1]
    width = ncb * PB
    direct = width == ncols  # no padded columns: the sums go straight to out (contiguous rows)
    dst = out if direct else np.empty((n, width), np.float32)
    stride, off = (out.shape[1], c0) if direct else (width, 0)
    for i in range(ncb):  # 4 rows per pass over a block of weights, then the last 1-3 rows in one
        cb = ncb - 1 - i if backwards else i
        for r0 in range(0, n - 3, 4):
            _fma4(Q, cb * K * PB, V, r0, K, dst, stride, off + cb * PB, NO_BIAS)
        _fma_rest(Q, cb * K * PB, V, n, K, dst, stride, off + cb * PB, NO_BIAS)
    if not direct:
        for i in range(n):
            for j in range(ncols):
                out[i, c0 + j] = dst[i, j]


@njit(**JIT)
def _matvec_q16(V, n, Q, scale, zp, out, c0, ncols, backwards):
    """out[i, c0:c0+ncols] = (V[i] @ (M - zp)) * scale for rows i < n, M = 8-bit blocks Q (pack_blocks).

    Each row v of V (fp32, zero past the true K) is split, per row and step, into two symmetric
    int16 parts: hi = round(v / a), a = max|v| / c, and lo = round(r / b) of the rest
    r = v - a hi (|r| <= a / 2), b = max|r| / c, with c = min(32767, (2^31 - 1) // (128 K)) so
    that no int32 sum of K products |h| * |q| <= c * 128 can overflow (c = 32767 up to K = 512,
    halved at each doubling past it).  Both parts go through the int32 multiply-adds together
    (two rows of _madd2/_madd4: the weights are read once), and
    out = ((sum_hi - zp sum(hi)) a + (sum_lo - zp sum(lo)) b) * scale.  The error of v's image
    a hi + b lo is <= b / 2 <= max|v| / (4 c^2) ~ 2.3e-10 max|v|, below fp32 rounding: the result is
    the dequantized weights' product to fp32 accuracy (one int16 part alone measured 5-30x the
    FP32 tolerance over a few steps, for 10-25% more speed).  A NaN or inf in v makes its row NaN.
    """
    ncb, nkk = Q.shape[0], Q.shape[1]
    K = 2 * nkk
    cap = min(_HCAP, 2147483647 // (128 * max(K, 1)))
    rows = 2 * n  # row 2i: hi part of V[i], 2i + 1: lo part
    hq = np.empty((rows, K), np.int16)
    hs = np.zeros(rows, np.int64)
    back = np.zeros(rows, np.float64)
    bad = np.zeros(n, np.bool_)
    width = ncb * PB
    acc = np.empty((rows, width), np.int32)
    r = np.empty(K, np.float32)
    fcap = np.float32(cap)
    for i in range(n):
        v = V[i]
        m = _ZERO
        z = _ZERO  # NaN if V[i] holds a NaN or inf (max() would drop a NaN)
        for k in range(K):
            m = max(m, abs(v[k]))
            z += v[k] * _ZERO
        bad[i] = z != _ZERO  # NaN or inf: no integer image; the row's output is NaN
        a = m / fcap if not bad[i] else _ZERO
        s = fcap / m if m > _ZERO and not bad[i] else _ZERO
        sm = 0
        m2 = _ZERO
        for k in range(K):
            q = np.floor(v[k] * s + _HALF)
            hq[2 * i, k] = np.int16(q)
            sm += np.int64(q)
            r[k] = v[k] - q * a
            m2 = max(m2, abs(r[k]))
        hs[2 * i] = sm
        back[2 * i] = a
        b = m2 / fcap
        s2 = fcap / m2 if m2 > _ZERO else _ZERO
        sm = 0
        for k in range(K):
            q = np.floor(r[k] * s2 + _HALF)
            hq[2 * i + 1, k] = np.int16(q)
            sm += np.int64(q)
        hs[2 * i + 1] = sm
        back[2 * i + 1] = b
    for i in range(ncb):  # 4 rows per pass over a block of weights, then a last pair
        cb = ncb - 1 - i if backwards else i  # see _matvec
        for r0 in range(0, rows - 3, 4):
            _madd4(Q, cb * nkk * 2 * PB, hq, r0, nkk, acc, width, cb * PB)
        if rows % 4:
            _madd2(Q, cb * nkk * 2 * PB, hq, rows - 2, nkk, acc, width, cb * PB)
    for i in range(n):
        hi, lo = acc[2 * i], acc[2 * i + 1]
        if bad[i]:
            for j in range(ncols):
                out[i, c0 + j] = np.float32(np.nan)
        else:
            ah, sh, al, sl = back[2 * i], hs[2 * i], back[2 * i + 1], hs[2 * i + 1]
            for j in range(ncols):
                zj = np.float64(zp[c0 + j])
                out[i, c0 + j] = np.float32(
                    ((np.float64(hi[j]) - zj * sh) * ah + (np.float64(lo[j]) - zj * sl) * al) * scale[c0 + j]
                )


def _matvec(V, n, Q, scale, zp, out, c0, ncols, backwards=False):
    """out[i, c0:c0+ncols] = (V[i] @ (M - zp)) * scale, rows i < n, M packed by pack_blocks: fp32
    (scale/zp unused: fp32 weights are never scaled) or 8-bit (int16 state, _matvec_q16).

    ``backwards`` reads the column blocks last to first, with bit-identical results (each block's
    sums are its own).  The RNN driver alternates the direction per time step: a recurrent matrix
    about the size of L2 (LSTM H=256: 1 MB) read in the same order at every step evicts each block
    just before it is needed again (LRU on a cyclic scan), while back and forth the blocks read
    last are read first.  Measured (AMD EPYC, 1 MB L2, 64 steps of 1 x 256 times 256 x 1024):
    7.0-8.4 -> 5.7-6.0 us per step; 256 x 768 (GRU) 4.9 -> 3.9 us; 512 x 2048 42.9 -> 32.0 us."""
    if Q.dtype == np.float32:
        _matvec_f32(V, n, Q, out, c0, ncols, backwards)
    else:
        _matvec_q16(V, n, Q, scale, zp, out, c0, ncols, backwards)


@overload(_matvec, jit_options=dict(JIT, cache=False))
def _matvec_jit(V, n, Q, scale, zp, out, c0, ncols, backwards=False):
    if isinstance(Q.dtype, types.Float):
        return lambda V, n, Q, scale, zp, out, c0, ncols, backwards=False: _matvec_f32(
            V, n, Q, out, c0, ncols, backwards
        )
    return lambda V, n, Q, scale, zp, out, c0, ncols, backwards=False: _matvec_q16(
        V, n, Q, scale, zp, out, c0, ncols, backwards
    )


def _k_padded(Q):
    """Kp, the padded number of inputs of blocks Q (fp32: one per row, 8-bit: pairs)."""
    return Q.shape[1] if Q.dtype == np.float32 else 2 * Q.shape[1]


@overload(_k_padded, jit_options=dict(JIT, cache=False))
def _k_padded_jit(Q):
    if isinstance(Q.dtype, types.Float):
        return lambda Q: Q.shape[1]
    return lambda Q: 2 * Q.shape[1]


def _block_f32(Q, cb, scale, zp, buf):
    """Block cb of packed weights as fp32 (Kp, PB): a view of fp32 blocks, or 8-bit pairs widened
    into buf as (q - zp) * scale, the dequantized weights exactly."""
    if Q.dtype == np.float32:
        return Q[cb]
    K = 2 * Q.shape[1]
    q = Q[cb].reshape(K // 2, PB, 2)
    for kk in range(K // 2):
        for e in range(2):
            buf[2 * kk + e] = (q[kk, :, e].astype(np.float32) - zp[cb * PB : cb * PB + PB]) * scale[
                cb * PB : cb * PB + PB
            ]
    return buf


@overload(_block_f32, jit_options=dict(JIT, cache=False))
def _block_f32_jit(Q, cb, scale, zp, buf):
    if isinstance(Q.dtype, types.Float):
        return lambda Q, cb, scale, zp, buf: Q[cb]

    def widen(Q, cb, scale, zp, buf):
        q = Q[cb]
        s = scale[cb * PB : cb * PB + PB]
        z = zp[cb * PB : cb * PB + PB]
        for kk in range(q.shape[0]):  # one output row per loop: stride-2 loads that LLVM vectorises
            src, even, odd = q[kk], buf[2 * kk], buf[2 * kk + 1]
            for j in range(PB):
                even[j] = (np.float32(src[2 * j]) - z[j]) * s[j]
            for j in range(PB):
                odd[j] = (np.float32(src[2 * j + 1]) - z[j]) * s[j]
        return buf

    return widen


def _widened_rows(Q):
    """Rows of _project's widening buffer: Kp for 8-bit blocks, 0 for fp32 ones (read in place; a
    (Kp, 64) fp32 buffer is 128 KB at Kp = 512, where malloc turns to mmap + munmap per call)."""
    return 0 if Q.dtype == np.float32 else _k_padded(Q)


@overload(_widened_rows, jit_options=dict(JIT, cache=False))
def _widened_rows_jit(Q):
    if isinstance(Q.dtype, types.Float):
        return lambda Q: 0
    return lambda Q: 2 * Q.shape[1]


@njit(**JIT)
def _project(X, Q, scale, zp, bias, out, ahead=False):
    """out = (X @ (M - zp)) * scale + bias for M (I, C) packed in Q (pack_blocks); X is (N, I), out
    (N, C) C-contiguous.  One block of 64 columns at a time (8-bit blocks are widened to fp32 once,
    8 KB -> 32 KB at I = 128) against all rows of X, 4 rows per call: fp32 activations, exact with
    respect to the dequantized weights; 8-bit M costs one widening pass over it per call.
    ``ahead``: fp32 blocks read with software prefetch (``prefetched``)."""
    N, I = X.shape
    C = out.shape[1]
    ncb = Q.shape[0]
    Kp = _k_padded(Q)
    Xp = np.zeros((N, Kp), np.float32)
    for r in range(N):
        for k in range(I):
            Xp[r, k] = X[r, k]
    full = C // PB  # blocks with all 64 columns in out are written there; a padded last one goes via tail
    tail = np.empty((N, PB), np.float32)
    buf = np.empty((_widened_rows(Q), PB), np.float32)
    ahead = ahead and _widened_rows(Q) == 0  # fp32 blocks, read in place
    for cb in range(ncb):
        wb = _block_f32(Q, cb, scale, zp, buf)
        dst, stride, off = (out, C, cb * PB) if cb < full else (tail, PB, 0)
        b = bias[cb * PB : cb * PB + PB] if cb < full else NO_BIAS  # a padded last block: added below
        for r0 in range(0, N - 3, 4):
            if ahead:
                _fma4p(wb, 0, Xp, r0, Kp, dst, stride, off, b)
            else:
                _fma4(wb, 0, Xp, r0, Kp, dst, stride, off, b)
        if not ahead:
            _fma_rest(wb, 0, Xp, N, Kp, dst, stride, off, b)
        for r0 in range(N - N % 4, N if ahead else 0):  # prefetched weights: one by one (first compile)
            _fma1p(wb, 0, Xp, r0, Kp, dst, stride, off, b)
    for r in range(N):
        for j in range(C - full * PB):
            out[r, full * PB + j] = tail[r, j] + bias[full * PB + j]


WIDE_ROWS = 7  # above this many rows an RNN with 8-bit weights runs widened to fp32 (rnn.batch_twin)
WIDE_BYTES = 1 << 20  # ... and at any batch when the widened recurrent weights are at most this (in L2)


def widened(Q: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """8-bit blocks Q (pack_blocks, (..., ncb, Kp/2, 2*PB)) as fp32 blocks (..., ncb, Kp, PB) of the
    dequantized weights (q - zp) * scale, scale/zp (..., >= columns) per column; the fp32 arithmetic
    of ``_block_f32`` (the same values bit for bit), cache-line aligned.  See ``rnn.batch_twin``."""
    *lead, ncb, nkk, two_pb = Q.shape
    width = ncb * PB
    s = np.zeros((*lead, width), np.float32)  # padded columns: scale 0 (their weights are 0 anyway)
    z = np.zeros((*lead, width), np.float32)
    n = min(width, scale.shape[-1])
    s[..., :n], z[..., :n] = scale[..., :n], zp[..., :n]
    q = Q.reshape(*lead, ncb, nkk, PB, 2)
    q = np.moveaxis(q, -1, -2).reshape(*lead, ncb, 2 * nkk, PB).astype(np.float32)
    out = _aligned_empty(q.shape, np.float32)
    out[...] = (q - z.reshape(*lead, ncb, 1, PB)) * s.reshape(*lead, ncb, 1, PB)
    return out


def _as_int8(q, scale, zero_point):
    """uint8 (q - zp) == int8 (q - 128) - (zp - 128): one kernel specialisation (int8) for both."""
    q = np.asarray(q)
    zp = np.asarray(zero_point, np.float32)
    if q.dtype == np.uint8:
        return (q.astype(np.int16) - 128).astype(np.int8), scale, zp - 128
    return q, scale, zp


Q16_ROWS = 16  # up to this many rows, 8-bit weights go through _matvec_q16 (see project)


@njit(**JIT)
def _project_q16(X, Q, scale, zp, bias, out):
    """_project for 8-bit Q through the int16-split mat-vec: no widening pass over the weights."""
    N, I = X.shape
    C = out.shape[1]
    V = np.zeros((N, _k_padded(Q)), np.float32)
    for r in range(N):
        for k in range(I):
            V[r, k] = X[r, k]
    _matvec_q16(V, N, Q, scale, zp, out, 0, C, False)
    for r in range(N):
        for j in range(C):
            out[r, j] += bias[j]


def project(X, Q, scale, zp, bias, out, ahead=False):
    """out = (X @ (M - zp)) * scale + bias, M (I, C) packed in Q (pack_blocks), X (N, I) fp32.

    8-bit M and at most ``Q16_ROWS`` rows: ``_matvec_q16`` reads the weights as 8-bit, 2 int16
    rows per row of X (to fp32 accuracy); else ``_project`` widens each block of M to fp32 once
    and runs fp32 FMAs over all rows (one widening pass costs about as much as 25 q16 rows at
    I = 256: measured 74 us vs 10 us at 1 row, 112 vs 84 us at 16, 171 vs 167 us at 32)."""
    if Q.dtype != np.float32 and X.shape[0] <= Q16_ROWS:
        _project_q16(X, Q, scale, zp, bias, out)
    else:
        _project(X, Q, scale, zp, bias, out, ahead)


def _project_any(X, Q, scale, zp, bias, out, ahead=False):
    """``project`` callable from compiled code (the choice is made at compile time on Q's dtype)."""
    project(X, Q, scale, zp, bias, out, ahead)


project_jit = _project_any  # its public name, for compiled callers in other modules (recurrent_fusion.py)


@overload(_project_any, jit_options=dict(JIT, cache=False))
def _project_any_jit(X, Q, scale, zp, bias, out, ahead=False):
    if isinstance(Q.dtype, types.Float):
        return lambda X, Q, scale, zp, bias, out, ahead=False: _project(X, Q, scale, zp, bias, out, ahead)

    def run(X, Q, scale, zp, bias, out, ahead=False):
        if X.shape[0] <= Q16_ROWS:
            _project_q16(X, Q, scale, zp, bias, out)
        else:
            _project(X, Q, scale, zp, bias, out)

    return run
