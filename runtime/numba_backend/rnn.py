# Gate orders (ONNX, as packed here): LSTM i,o,f,c (PyTorch i,f,g,o); GRU z,r,h (PyTorch r,z,n,
# i.e. linear_before_reset=1); RNN a single tanh gate.
"""Numba kernels for the ONNX RNN, GRU and LSTM ops (fp32 weights, or int8/uint8 weights).

One driver (``_run_rows``) owns direction, layout, ``sequence_lens`` and the initial state; the
three cells (``_rnn_cell``, ``_gru_cell`` + ``_gru_reset``, ``_lstm_cell``) are only gate math.
The input projection ``X @ W^T + b`` for all time steps and both directions is one pass
(``_project``, the step's mat-vec kernels on 16 rows at a time); the step loop then runs entirely in numba.  ``prange`` runs
over batch rows only, one contiguous chunk of rows per thread; batch 1 or one thread takes the
serial driver (no threading overhead).

Recurrent weights ``R^T`` (``[hidden, gates*hidden]``) are packed once into blocks of 64 columns
(``pack_blocks``, cache-line aligned), each block holding its columns for all K inputs in one
sequential stream; ``W^T`` too.  A mat-vec keeps the 64 sums of a block (per row, up to 4 rows at
once) in four 16-lane registers over the whole K loop and reads each weight once: fp32 weights
with a broadcast h and FMAs (``_fma1``/``_fma4``); 8-bit weights (int8, uint8 shifted to int8)
as int16 pairs times h split into two int16 parts per row and step (``_madd2``/``_madd4``:
``vpdpwssd``/``vpmaddwd``, exact int32 sums, then scaled back; ``_matvec_q16``), which is the
dequantized weights' product to fp32 accuracy.  Those loops are written as LLVM vector IR (numba
``@intrinsic``): numba's loop vectorizer keeps to 256-bit vectors on this host, emits int16 dot
products only on xmm, and cannot hold sums in registers across the K loop (measurements in
benchmarks/rnn_op_speed.py).  Under ``NUMBA_DISABLE_JIT=1`` the same functions run as numpy.

The pip llvmlite has no SVML, so ``np.tanh``/``np.exp`` are scalar libm calls; ``_tanh`` is
Eigen's rational approximation (``generic_fast_tanh_float``) with an exp-series tail, |error| <
3e-7 everywhere and exactly +-1 in saturation, and ``_sigmoid(x) = 0.5 + 0.5 tanh(x/2)``; both
vectorise.

Semantics follow onnxruntime: ``Y`` is zero at and after a row's sequence length; ``Y_h``/``Y_c``
are the state after the last valid step (forward) or after reading back to t=0 (reverse).  A
row of length 0 outputs zeros in ``Y`` and its initial state as ``Y_h``/``Y_c`` (our choice; the
ONNX spec does not say).

Must not import torch or onnxruntime.
"""

from __future__ import annotations

from . import config  # noqa: F401  (sets NUMBA_CACHE_DIR before numba is imported)
from .config import FASTMATH, JIT as _JIT

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# numba 0.68 accepts a bool, dict or set for `fastmath`, not config.FASTMATH's frozenset.
JIT = dict(_JIT, fastmath=set(FASTMATH))

RNN, GRU, LSTM = 0, 1, 2  # cell kinds
GATES = {RNN: 1, GRU: 3, LSTM: 4}

# Eigen generic_fast_tanh_float: tanh(x) ~ x * P(x^2) / Q(x^2) on [-c, c], +-1 outside.
_CLAMP = np.float32(7.90531110763549805)
_A1 = np.float32(4.89352455891786e-03)
_A3 = np.float32(6.37261928875436e-04)
_A5 = np.float32(1.48572235717979e-05)
_A7 = np.float32(5.12229709037114e-08)
_A9 = np.float32(-8.60467152213735e-11)
_A11 = np.float32(2.00018790482477e-13)
_A13 = np.float32(-2.76076847742355e-16)
_B0 = np.float32(4.89352518554385e-03)
_B2 = np.float32(2.26843463243900e-03)
_B4 = np.float32(1.18534705686654e-04)
_B6 = np.float32(1.19825839466702e-06)
_E_MID = np.float32(17.0)  # tail of tanh: exp(-2|x|) = exp(-17) * exp(17 - 2|x|)
_TWO_E0 = np.float32(2.0 * np.exp(-17.0))
_TAIL_END = np.float32(9.5)
_TWO = np.float32(2.0)
_C2, _C3, _C4, _C5, _C6, _C7 = (np.float32(1.0 / n) for n in (2, 3, 4, 5, 6, 7))
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
NO_CLIP = np.float32(3.0e38)  # `clip` when the attribute is absent (a no-op clamp keeps one code path)


@njit(**JIT)
def _tanh(x):
    """Eigen's rational tanh on [-c, c], 1 - 2 exp(-2|x|) outside.

    The tail matters: with Eigen's plain clamp a saturated GRU gate z is 1 - 2.7e-7 instead of
    float32's 1 - 1e-10 -> 1.0, and (1 - z) * n leaks 2e-7 into outputs that should be ~0.
    Both branches are computed and selected, so the loop still vectorises.
    """
    big = abs(x) >= _CLAMP
    x_in = x
    x = min(max(x, -_CLAMP), _CLAMP)
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    p = x * p
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    t = p / q
    # |x| >= c: tanh = 1 - 2 exp(-2|x|) (+ O(e^-4|x|)) = 1 - 2 exp(-17) exp(u), u = 17 - 2|x| in
    # [-2, 1.2], exp(u) by its degree-7 Taylor series (error < 1e-10 here); past |x| = 9.5 the
    # float32 result is 1 anyway.
    u = _E_MID - _TWO * min(abs(x_in), _TAIL_END)
    e = _ONE + u * (_ONE + u * _C2 * (_ONE + u * _C3 * (_ONE + u * _C4 * (
        _ONE + u * _C5 * (_ONE + u * _C6 * (_ONE + u * _C7))))))
    tail = _ONE - _TWO_E0 * e
    return (tail if x_in > _ZERO else -tail) if big else t


@njit(**JIT)
def _sigmoid(x):
    return _HALF + _HALF * _tanh(_HALF * x)


@njit(**JIT)
def _activation_array(x, which, out):
    for i in range(x.shape[0]):
        out[i] = _tanh(x[i]) if which == 0 else _sigmoid(x[i])


def fast_tanh(x: np.ndarray) -> np.ndarray:
    """The kernels' tanh on a 1-D float32 array (for accuracy tests)."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    _activation_array(x, 0, out)
    return out


def fast_sigmoid(x: np.ndarray) -> np.ndarray:
    """The kernels' sigmoid on a 1-D float32 array (for accuracy tests)."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    _activation_array(x, 1, out)
    return out


@njit(**JIT)
def _clip(x, clip):
    return min(max(x, -clip), clip)


KP = 8  # K (inputs of a mat-vec) is zero-padded to a multiple of this
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
    return buf[start:start + nbytes].view(dtype).reshape(shape)


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
        if not (isinstance(W, types.Array) and isinstance(W.dtype, types.Integer) and W.dtype.bitwidth <= 16
                and isinstance(hq, types.Array) and hq.dtype == types.int16 and hq.ndim == 2
                and isinstance(out, types.Array) and out.dtype == types.int32 and out.ndim == 2):
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
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(v16, None)) for _ in range(nvec)]
                    for _ in range(nr)]
            wbase = builder.gep(w_ary.data, [woff_v])
            hpairs = builder.bitcast(h_ary.data, i32.as_pointer())
            hrows = [builder.gep(hpairs, [builder.mul(builder.add(r0_v, ir.Constant(r0_v.type, r)), nkk_v)])
                     for r in range(nr)]
            even = ir.Constant(v16, [2 * i for i in range(16)])
            odd = ir.Constant(v16, [2 * i + 1 for i in range(16)])
            bcast = ir.Constant(v32, [i % 2 for i in range(32)])
            with cgutils.for_range(builder, nkk_v) as loop:
                kk = loop.index
                hx = []
                for r in range(nr):
                    pair = builder.load(builder.gep(hrows[r], [kk]), align=2)
                    pair = builder.bitcast(builder.insert_element(ir.Constant(ir.VectorType(i32, 1), None), pair,
                                                                  ir.Constant(i32, 0)), ir.VectorType(ir.IntType(16), 2))
                    hx.append(builder.sext(builder.shuffle_vector(pair, pair, bcast), v32))
                row = builder.gep(wbase, [builder.mul(kk, ir.Constant(kk.type, 2 * PB))])
                for v in range(nvec):
                    ptr = builder.bitcast(builder.gep(row, [ir.Constant(kk.type, 32 * v)]), wvec.as_pointer())
                    wx = builder.sext(builder.load(ptr, align=1), v32)
                    for r in range(nr):
                        prod = builder.mul(hx[r], wx)
                        part = builder.add(builder.shuffle_vector(prod, prod, even),
                                           builder.shuffle_vector(prod, prod, odd))
                        builder.store(builder.add(builder.load(accs[r][v]), part), accs[r][v])
            for r in range(nr):
                obase = builder.gep(o_ary.data, [builder.add(builder.mul(builder.add(r0_v, ir.Constant(r0_v.type, r)),
                                                                         ostride_v), ooff_v)])
                for v in range(nvec):
                    ptr = builder.bitcast(builder.gep(obase, [ir.Constant(ooff_v.type, 16 * v)]), v16.as_pointer())
                    builder.store(builder.load(accs[r][v]), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    def madd_py(W, woff, hq, r0, nkk, out, ostride, ooff):
        """Plain numpy (NUMBA_DISABLE_JIT=1)."""
        w = W.reshape(-1)[woff:woff + nkk * 2 * PB].reshape(nkk, PB, 2).astype(np.int64)
        for r in range(r0, r0 + nr):
            h = hq[r, :2 * nkk].reshape(nkk, 1, 2).astype(np.int64)
            out[r, ooff:ooff + PB] = (w * h).sum(axis=(0, 2)).astype(np.int32)

    return madd_py if numba.config.DISABLE_JIT else madd


_madd2, _madd4 = _make_madd(2), _make_madd(4)


def _make_fma(nr: int):
    """The fp32 twin of _make_madd: out[r0 + r, ooff:ooff+PB] = sum over k < nk of
    W[woff + k*PB + j] * V[r0 + r, k] (r < nr), the nr x 4 x 16 sums in registers over the K loop,
    one broadcast of V[r, k] per k, each weight vector loaded once for the nr rows.  Sums in k
    order (fmul + fadd with ``contract``: FMAs where the target has them)."""

    @intrinsic
    def fma(typingctx, W, woff, V, r0, nk, out, ostride, ooff):
        if not (isinstance(W, types.Array) and W.dtype == types.float32 and isinstance(V, types.Array)
                and V.dtype == types.float32 and V.ndim == 2 and isinstance(out, types.Array)
                and out.dtype == types.float32 and out.ndim == 2):
            return None
        sig = types.void(W, types.intp, V, types.intp, types.intp, out, types.intp, types.intp)
        nvec = PB // 16

        def codegen(context, builder, signature, args):
            w_arg, woff_v, v_arg, r0_v, nk_v, o_arg, ostride_v, ooff_v = args
            w_ary = context.make_array(signature.args[0])(context, builder, w_arg)
            v_ary = context.make_array(signature.args[2])(context, builder, v_arg)
            o_ary = context.make_array(signature.args[5])(context, builder, o_arg)
            f32, i32 = ir.FloatType(), ir.IntType(32)
            vf = ir.VectorType(f32, 16)
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(vf, None)) for _ in range(nvec)]
                    for _ in range(nr)]
            wbase = builder.gep(w_ary.data, [woff_v])
            vstride = builder.extract_value(v_ary.shape, 1)
            vrows = [builder.gep(v_ary.data, [builder.mul(builder.add(r0_v, ir.Constant(r0_v.type, r)), vstride)])
                     for r in range(nr)]
            splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
            with cgutils.for_range(builder, nk_v) as loop:
                k = loop.index
                hb = []
                for r in range(nr):
                    x = builder.load(builder.gep(vrows[r], [k]))
                    xv = builder.insert_element(ir.Constant(ir.VectorType(f32, 1), None), x, ir.Constant(i32, 0))
                    hb.append(builder.shuffle_vector(xv, xv, splat))
                row = builder.gep(wbase, [builder.mul(k, ir.Constant(k.type, PB))])
                for v in range(nvec):
                    ptr = builder.bitcast(builder.gep(row, [ir.Constant(k.type, 16 * v)]), vf.as_pointer())
                    wv = builder.load(ptr, align=4)
                    for r in range(nr):
                        prod = builder.fmul(hb[r], wv, flags=("contract",))
                        builder.store(builder.fadd(builder.load(accs[r][v]), prod, flags=("contract",)), accs[r][v])
            for r in range(nr):
                obase = builder.gep(o_ary.data, [builder.add(builder.mul(builder.add(r0_v, ir.Constant(r0_v.type, r)),
                                                                         ostride_v), ooff_v)])
                for v in range(nvec):
                    ptr = builder.bitcast(builder.gep(obase, [ir.Constant(ooff_v.type, 16 * v)]), vf.as_pointer())
                    builder.store(builder.load(accs[r][v]), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    def fma_py(W, woff, V, r0, nk, out, ostride, ooff):
        """Plain numpy (NUMBA_DISABLE_JIT=1)."""
        w = W.reshape(-1)[woff:woff + nk * PB].reshape(nk, PB)
        out[r0:r0 + nr, ooff:ooff + PB] = V[r0:r0 + nr, :nk] @ w

    return fma_py if numba.config.DISABLE_JIT else fma


_fma1, _fma4 = _make_fma(1), _make_fma(4)


@njit(**JIT)
def _matvec_f32(V, n, Q, out, c0, ncols):
    """out[i, c0:c0+ncols] = V[i] @ M for rows i < n, M = fp32 blocks Q (pack_blocks); V is (>= n, Kp)."""
    ncb, K = Q.shape[0], Q.shape[1]
    width = ncb * PB
    direct = width == ncols  # no padded columns: the sums go straight to out (contiguous rows)
    dst = out if direct else np.empty((n, width), np.float32)
    stride, off = (out.shape[1], c0) if direct else (width, 0)
    for cb in range(ncb):  # 4 rows per pass over a block of weights, then the rest one by one
        for r0 in range(0, n - 3, 4):
            _fma4(Q, cb * K * PB, V, r0, K, dst, stride, off + cb * PB)
        for r0 in range(n - n % 4, n):
            _fma1(Q, cb * K * PB, V, r0, K, dst, stride, off + cb * PB)
    if not direct:
        for i in range(n):
            for j in range(ncols):
                out[i, c0 + j] = dst[i, j]


@njit(**JIT)
def _matvec_q16(V, n, Q, scale, zp, out, c0, ncols):
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
    for cb in range(ncb):  # 4 rows per pass over a block of weights, then a last pair
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
                out[i, c0 + j] = np.float32(((np.float64(hi[j]) - zj * sh) * ah + (np.float64(lo[j]) - zj * sl) * al)
                                            * scale[c0 + j])


def _matvec(V, n, Q, scale, zp, out, c0, ncols):
    """out[i, c0:c0+ncols] = (V[i] @ (M - zp)) * scale, rows i < n, M packed by pack_blocks: fp32
    (scale/zp unused: fp32 weights are never scaled) or 8-bit (int16 state, _matvec_q16)."""
    if Q.dtype == np.float32:
        _matvec_f32(V, n, Q, out, c0, ncols)
    else:
        _matvec_q16(V, n, Q, scale, zp, out, c0, ncols)


@overload(_matvec, jit_options=dict(JIT, cache=False))
def _matvec_jit(V, n, Q, scale, zp, out, c0, ncols):
    if isinstance(Q.dtype, types.Float):
        return lambda V, n, Q, scale, zp, out, c0, ncols: _matvec_f32(V, n, Q, out, c0, ncols)
    return lambda V, n, Q, scale, zp, out, c0, ncols: _matvec_q16(V, n, Q, scale, zp, out, c0, ncols)


def _k_padded(Q):
    """Kp, the padded number of inputs of blocks Q (fp32: one per row, 8-bit: pairs)."""
    return Q.shape[1] if Q.dtype == np.float32 else 2 * Q.shape[1]


@overload(_k_padded, jit_options=dict(JIT, cache=False))
def _k_padded_jit(Q):
    if isinstance(Q.dtype, types.Float):
        return lambda Q: Q.shape[1]
    return lambda Q: 2 * Q.shape[1]


# Cells: elementwise gate math on one row; g holds h @ R^T for the row (gate order as in the header).

@njit(**JIT)
def _rnn_cell(x, g, h, c, P, rbh, clip, flag):
    for j in range(h.shape[0]):
        h[j] = _tanh(_clip(x[j] + g[j], clip))


@njit(**JIT)
def _gru_reset(x, g, h, v, clip):
    """linear_before_reset=0: v = r * h, the input of the second mat-vec (with R_h)."""
    H = h.shape[0]
    for j in range(H):
        v[j] = _sigmoid(_clip(x[H + j] + g[H + j], clip)) * h[j]


@njit(**JIT)
def _gru_cell(x, g, h, c, P, rbh, clip, flag):
    """flag = linear_before_reset: g[2H:] is h @ R_h^T (then r * (. + Rb_h)), else (r*h) @ R_h^T."""
    H = h.shape[0]
    if flag:
        for j in range(H):
            r = _sigmoid(_clip(x[H + j] + g[H + j], clip))
            g[2 * H + j] = r * (g[2 * H + j] + rbh[j])
    for j in range(H):
        z = _sigmoid(_clip(x[j] + g[j], clip))
        n = _tanh(_clip(x[2 * H + j] + g[2 * H + j], clip))
        h[j] = (_ONE - z) * n + z * h[j]


@njit(**JIT)
def _lstm_cell(x, g, h, c, P, rbh, clip, flag):
    """flag = input_forget; P is (3, H) peepholes i, o, f (zeros when absent)."""
    H = h.shape[0]
    coupled = np.float32(flag)  # input_forget: f = 1 - i, as a blend so the loop has no branch
    for j in range(H):
        cp = c[j]
        i = _sigmoid(_clip(x[j] + g[j] + P[0, j] * cp, clip))
        f = _sigmoid(_clip(x[2 * H + j] + g[2 * H + j] + P[2, j] * cp, clip))
        f = f + coupled * (_ONE - i - f)
        cc = _tanh(_clip(x[3 * H + j] + g[3 * H + j], clip))
        cn = f * cp + i * cc
        o = _sigmoid(_clip(x[H + j] + g[H + j] + P[1, j] * cn, clip))
        c[j] = cn
        h[j] = o * _tanh(cn)


@njit(**JIT)
def _run_rows(kind, d, b0, b1, reverse, layout, xw, T1, T2, rs, rz, rbh, P, lens, h0, c0, Y, hn, cn, clip, flag):
    """The driver: one direction d of batch rows b0..b1-1, all rows stepping together.

    xw is X W^T + biases, (T, B, nd*G*H) for layout 0 or (B, T, ...) for layout 1.  At step s the
    rows with s < length are active; forward reads t = s, reverse t = length-1-s.
    """
    H = h0.shape[2]
    GH = rs.shape[0]
    n = b1 - b0
    T = xw.shape[0] if layout == 0 else xw.shape[1]
    h = h0[d, b0:b1].copy()  # (n, H)
    c = c0[d, b0:b1].copy()
    L = np.empty(n, np.int64)
    steps = 0
    for i in range(n):
        L[i] = min(max(lens[b0 + i], 0), T)
        steps = max(steps, L[i])
    V = np.zeros((n, _k_padded(T1)), np.float32)  # padded mat-vec inputs; cols >= H stay 0
    g = np.empty((n, GH), np.float32)
    act = np.empty(n, np.int64)
    tix = np.empty(n, np.int64)
    two_pass = kind == GRU and flag == 0
    for s in range(steps):
        m = 0
        for i in range(n):
            if s < L[i]:
                act[m] = i
                tix[m] = L[i] - 1 - s if reverse else s
                m += 1
        for a in range(m):
            hi = h[act[a]]
            va = V[a]
            for k in range(H):
                va[k] = hi[k]
        _matvec(V, m, T1, rs, rz, g, 0, 2 * H if two_pass else GH)
        if two_pass:
            for a in range(m):
                b, t = b0 + act[a], tix[a]
                x = xw[t, b, d * GH:(d + 1) * GH] if layout == 0 else xw[b, t, d * GH:(d + 1) * GH]
                _gru_reset(x, g[a], h[act[a]], V[a], clip)
            _matvec(V, m, T2, rs, rz, g, 2 * H, H)
        for a in range(m):
            i = act[a]
            b, t = b0 + i, tix[a]
            x = xw[t, b, d * GH:(d + 1) * GH] if layout == 0 else xw[b, t, d * GH:(d + 1) * GH]
            if kind == LSTM:
                _lstm_cell(x, g[a], h[i], c[i], P, rbh, clip, flag)
            elif kind == GRU:
                _gru_cell(x, g[a], h[i], c[i], P, rbh, clip, flag)
            else:
                _rnn_cell(x, g[a], h[i], c[i], P, rbh, clip, flag)
            y = Y[t, d, b] if layout == 0 else Y[b, t, d]
            for j in range(H):
                y[j] = h[i, j]
    for i in range(n):  # onnxruntime: zeros at and after the sequence end
        b = b0 + i
        for t in range(L[i], T):
            y = Y[t, d, b] if layout == 0 else Y[b, t, d]
            for j in range(H):
                y[j] = _ZERO
    hn[d, b0:b1] = h
    cn[d, b0:b1] = c


@njit(**JIT)
def _rows_serial(kind, dirs, layout, xw, T1, T2, rs, rz, rbh, P, lens, h0, c0, Y, hn, cn, clip, flag):
    for d in range(T1.shape[0]):
        _run_rows(kind, d, 0, h0.shape[1], dirs[d], layout, xw, T1[d], T2[d], rs[d], rz[d], rbh[d], P[d], lens,
                  h0, c0, Y, hn, cn, clip, flag)


@njit(parallel=True, **JIT)
def _rows_parallel(kind, dirs, layout, xw, T1, T2, rs, rz, rbh, P, lens, h0, c0, Y, hn, cn, clip, flag,
                   threads):
    """prange over batch only: one contiguous chunk of rows per thread."""
    B = h0.shape[1]
    chunks = min(B, threads)
    for d in range(T1.shape[0]):
        for ci in prange(chunks):
            _run_rows(kind, d, ci * B // chunks, (ci + 1) * B // chunks, dirs[d], layout, xw, T1[d], T2[d], rs[d],
                      rz[d], rbh[d], P[d], lens, h0, c0, Y, hn, cn, clip, flag)


def _block_f32(Q, cb, scale, zp, buf):
    """Block cb of packed weights as fp32 (Kp, PB): a view of fp32 blocks, or 8-bit pairs widened
    into buf as (q - zp) * scale, the dequantized weights exactly."""
    if Q.dtype == np.float32:
        return Q[cb]
    K = 2 * Q.shape[1]
    q = Q[cb].reshape(K // 2, PB, 2)
    for kk in range(K // 2):
        for e in range(2):
            buf[2 * kk + e] = (q[kk, :, e].astype(np.float32) - zp[cb * PB:cb * PB + PB]) * scale[cb * PB:cb * PB + PB]
    return buf


@overload(_block_f32, jit_options=dict(JIT, cache=False))
def _block_f32_jit(Q, cb, scale, zp, buf):
    if isinstance(Q.dtype, types.Float):
        return lambda Q, cb, scale, zp, buf: Q[cb]

    def widen(Q, cb, scale, zp, buf):
        q = Q[cb]
        c0 = cb * PB
        for kk in range(q.shape[0]):
            for j in range(PB):
                s, z = scale[c0 + j], zp[c0 + j]
                buf[2 * kk, j] = (np.float32(q[kk, 2 * j]) - z) * s
                buf[2 * kk + 1, j] = (np.float32(q[kk, 2 * j + 1]) - z) * s
        return buf

    return widen


@njit(**JIT)
def _project(X, Q, scale, zp, bias, out):
    """out = (X @ (M - zp)) * scale + bias for M (I, C) packed in Q (pack_blocks); X is (N, I), out
    (N, C) C-contiguous.  One block of 64 columns at a time (8-bit blocks are widened to fp32 once,
    8 KB -> 32 KB at I = 128) against all rows of X, 4 rows per call: fp32 activations, exact with
    respect to the dequantized weights; 8-bit M costs one widening pass over it per call."""
    N, I = X.shape
    C = out.shape[1]
    ncb = Q.shape[0]
    Kp = _k_padded(Q)
    width = ncb * PB
    Xp = np.zeros((N, Kp), np.float32)
    for r in range(N):
        for k in range(I):
            Xp[r, k] = X[r, k]
    direct = width == C
    dst = out if direct else np.empty((N, width), np.float32)
    buf = np.empty((Kp, PB), np.float32)
    for cb in range(ncb):
        wb = _block_f32(Q, cb, scale, zp, buf)
        for r0 in range(0, N - 3, 4):
            _fma4(wb, 0, Xp, r0, Kp, dst, width, cb * PB)
        for r0 in range(N - N % 4, N):
            _fma1(wb, 0, Xp, r0, Kp, dst, width, cb * PB)
    for r in range(N):
        for j in range(C):
            out[r, j] = dst[r, j] + bias[j]


def _as_int8(q, scale, zero_point):
    """uint8 (q - zp) == int8 (q - 128) - (zp - 128): one kernel specialisation (int8) for both."""
    q = np.asarray(q)
    zp = np.asarray(zero_point, np.float32)
    if q.dtype == np.uint8:
        return (q.astype(np.int16) - 128).astype(np.int8), scale, zp - 128
    return q, scale, zp


class PackedRNN:
    """Weights of one RNN/GRU/LSTM node, packed for the kernels (built once per node).

    ``W``/``R``: float arrays ``[nd, G*H, I]``/``[nd, G*H, H]`` (ONNX layout), or tuples
    ``(q, scale, zero_point)`` already transposed to ``[nd, I, G*H]``/``[nd, H, G*H]`` with
    per-column ``scale``/``zero_point`` of shape ``[nd, G*H]`` (float32).  Quantized ``q`` stays
    8-bit in the kernels (uint8 becomes int8 - 128, with the zero point shifted to match).
    """

    def __init__(self, kind: int, hidden: int, W, R, B, P, *, linear_before_reset: int = 0):
        self.kind, self.H = kind, hidden
        GH = GATES[kind] * hidden
        self.lbr = int(linear_before_reset)
        if isinstance(R, tuple):
            RT, s, z = _as_int8(*R)
            self.rs = np.ascontiguousarray(s, dtype=np.float32)
            self.rz = np.ascontiguousarray(z, dtype=np.float32)
        else:
            R = np.asarray(R, dtype=np.float32)
            RT = R.transpose(0, 2, 1)
            self.rs = np.ones((R.shape[0], GH), np.float32)
            self.rz = np.zeros((R.shape[0], GH), np.float32)
        nd = self.nd = RT.shape[0]
        if kind == GRU and not self.lbr:
            # (r * h) @ R_h^T is a second mat-vec: R_h gets its own blocks
            self.T1, self.T2 = pack_blocks(RT[:, :, :2 * hidden]), pack_blocks(RT[:, :, 2 * hidden:])
        else:
            self.T1 = pack_blocks(RT)
            self.T2 = np.zeros(self.T1.shape[:1] + (0,) + self.T1.shape[2:], self.T1.dtype)
        if isinstance(W, tuple):
            q, sc, z = _as_int8(*W)
            self.ws = np.ascontiguousarray(np.asarray(sc, np.float32).reshape(-1))
            self.wz = np.ascontiguousarray(np.asarray(z, np.float32).reshape(-1))
        else:
            q = np.asarray(W, dtype=np.float32).transpose(0, 2, 1)
            self.ws = np.ones(nd * GH, np.float32)
            self.wz = np.zeros(nd * GH, np.float32)
        # blocks of (I, nd*GH): both directions in one pass (8.4M MACs at T=64, I=128, H=256 LSTM:
        # 0.105 ms vs numpy/OpenBLAS sgemm 0.150 ms; batch 32: 3.4 vs 4.2 ms)
        self.Wb = pack_blocks(np.ascontiguousarray(np.concatenate(list(q), axis=1))[None])[0]
        B = np.zeros((nd, 2 * GH), np.float32) if B is None else np.asarray(B, np.float32)
        bias = B[:, :GH] + B[:, GH:]
        self.rbh = np.zeros((nd, hidden), np.float32)
        if kind == GRU and self.lbr:  # Rb_h sits inside r * (...): keep it out of the projection
            bias[:, 2 * hidden:] = B[:, 2 * hidden:GH]
            self.rbh = np.ascontiguousarray(B[:, GH + 2 * hidden:])
        self.bias = np.ascontiguousarray(bias.reshape(-1))
        self.P = (np.zeros((nd, 3, hidden), np.float32) if P is None
                  else np.ascontiguousarray(np.asarray(P, np.float32).reshape(nd, 3, hidden)))

    def project(self, X: np.ndarray) -> np.ndarray:
        """X (A0, A1, I) -> X W^T + biases, (A0, A1, nd*G*H), both directions in one pass."""
        X2 = np.ascontiguousarray(X.reshape(-1, X.shape[-1]), dtype=np.float32)
        out = np.empty((X2.shape[0], self.ws.shape[0]), np.float32)
        _project(X2, self.Wb, self.ws, self.wz, self.bias, out)
        return out.reshape(X.shape[0], X.shape[1], -1)


def run(packed: PackedRNN, X, *, direction="forward", layout=0, sequence_lens=None, initial_h=None,
        initial_c=None, clip=None, flag=None, threads=None):
    """Run a packed RNN/GRU/LSTM on X; returns (Y, Y_h, Y_c) in the node's ``layout``.

    ``flag`` is ``input_forget`` for LSTM (``linear_before_reset`` is taken from ``packed``).
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 3:
        raise ValueError(f"X must be 3-D, got shape {X.shape}")
    T, Bn = (X.shape[0], X.shape[1]) if layout == 0 else (X.shape[1], X.shape[0])
    H, nd = packed.H, packed.nd
    if direction == "bidirectional":
        dirs = np.array([0, 1], np.int64)
    else:
        dirs = np.array([1 if direction == "reverse" else 0], np.int64)
    if len(dirs) != nd:
        raise ValueError(f"direction {direction!r} needs {len(dirs)} weight sets, W/R have {nd}")
    lens = (np.full(Bn, T, np.int64) if sequence_lens is None
            else np.ascontiguousarray(np.asarray(sequence_lens).astype(np.int64).reshape(-1)))

    def state(v):
        if v is None:
            return np.zeros((nd, Bn, H), np.float32)
        v = np.asarray(v, np.float32)
        return np.ascontiguousarray(v.transpose(1, 0, 2) if layout else v)

    h0, c0 = state(initial_h), state(initial_c)
    xw = packed.project(X)
    Y = np.empty((T, nd, Bn, H) if layout == 0 else (Bn, T, nd, H), np.float32)
    hn = np.empty((nd, Bn, H), np.float32)
    cn = np.empty((nd, Bn, H), np.float32)
    clipv = NO_CLIP if clip is None else np.float32(clip)
    fl = packed.lbr if packed.kind == GRU else int(bool(flag))
    nthreads = numba.get_num_threads() if threads is None else threads
    args = (packed.kind, dirs, int(layout), xw, packed.T1, packed.T2, packed.rs, packed.rz, packed.rbh, packed.P,
            lens, h0, c0, Y, hn, cn, clipv, fl)
    if Bn > 1 and nthreads > 1:
        _rows_parallel(*args, nthreads)
    else:
        _rows_serial(*args)
    if layout:
        hn, cn = hn.transpose(1, 0, 2), cn.transpose(1, 0, 2)
    return Y, hn, cn
