# Gate orders (ONNX, as packed here): LSTM i,o,f,c (PyTorch i,f,g,o); GRU z,r,h (PyTorch r,z,n,
# i.e. linear_before_reset=1); RNN a single tanh gate.
"""Numba kernels for the ONNX RNN, GRU and LSTM ops (fp32 weights, or int8/uint8 weights).

One driver (``_run_rows``) owns direction, layout, ``sequence_lens`` and the initial state; the
three cells (``_rnn_cell``, ``_gru_cell`` + ``_gru_reset``, ``_lstm_cell``) are only gate math.
The input projection ``X @ W^T + b`` for all time steps and both directions is one GEMM (numpy,
or ``_project_q`` for int8 weights); the step loop then runs entirely in numba.  ``prange`` runs
over batch rows only, one contiguous chunk of rows per thread; batch 1 or one thread takes the
serial driver (no threading overhead).

Recurrent weights ``R^T`` (``[hidden, gates*hidden]``) are packed once into 8x64 tiles
(``pack_tiles``, cache-line aligned), so the per-step mat-vec is an axpy that LLVM vectorises
(no horizontal sums) reading the weights as one sequential stream; at H=256 the fp32 LSTM's R
is 1 MB and a step is bound by L2 bandwidth, as onnxruntime's is.  Quantized weights stay int8
(or uint8) in those tiles and are read as ``(q - zero_point) * scale`` with one scale/zero point
per output column: weight-only quantization with fp32 activations.  That measured 2x faster
than int8 x int8 -> int32 dot products here (numba/LLVM emit no VNNI ``vpdpbusd``), no slower
than int16 (dynamically quantized h) x int8 dot products (LLVM emits ``vpmaddwd``, but on xmm
only under the host's 256-bit preference: 8 MACs per instruction, as an fp32 FMA; see
benchmarks/rnn_op_speed.py), and it is exact with respect to the dequantized weights.  With
several rows (batch > 1, or the input projection) each int8 tile is widened to fp32 once and
applied to all rows.

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


KB, CB = 8, 64  # tile of packed recurrent weights: 8 rows (inputs) x 64 columns (gate units)


def pack_tiles(M: np.ndarray) -> np.ndarray:
    """(nd, K, C) -> (nd, ceil(K/KB), ceil(C/CB), KB, CB), zero-padded, dtype kept.

    The mat-vec then reads the weights as one sequential stream (tile after tile), which ran
    ~20% faster than eight strided row streams of a plain (K, C) matrix (8x64 beat 8x16, 8x32,
    8x128, 4x32 and 16x16 tiles by 5-25%): at H=256 the fp32
    R is 1 MB and the step is bound by L2 bandwidth.
    """
    nd, K, C = M.shape
    nkb, ncb = -(-K // KB), -(-C // CB)
    out = np.zeros((nd, nkb * KB, ncb * CB), M.dtype)
    out[:, :K, :C] = M
    tiles = _aligned_empty((nd, nkb, ncb, KB, CB), M.dtype)
    tiles[...] = out.reshape(nd, nkb, KB, ncb, CB).transpose(0, 1, 3, 2, 4)
    return tiles


def _aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """An empty C array starting on a cache line: numpy only promises 16 bytes, and tiles at
    16 mod 32 split every other 32-byte load across two lines (measured 20% slower steps)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(nbytes + align, np.uint8)
    start = (-buf.ctypes.data) % align
    return buf[start:start + nbytes].view(dtype).reshape(shape)


PB = 64  # columns per block of pair-packed int8 weights (pack_pairs): 4 vectors of 16 int32 sums
_HCAP = 32767  # int16 range of the quantized state; see _matvec_q16 for the int32 bound


def pack_pairs(M: np.ndarray) -> np.ndarray:
    """(nd, K, C) 8-bit -> (nd, ceil(C/PB), Kp/2, 2*PB), Kp = K rounded up to KB, zero-padded.

    Block cb holds columns cb*PB.. of all K rows as pairs: element [cb, kk, 2*j + e] is
    M[2*kk + e, cb*PB + j], the operand order of a 16-bit multiply-add (``vpmaddwd``/
    ``vpdpwssd``: one int32 lane = w[2kk, j] * h[2kk] + w[2kk+1, j] * h[2kk+1]).
    """
    nd, K, C = M.shape
    Kp, ncb = -(-K // KB) * KB, -(-C // PB)
    out = np.zeros((nd, Kp, ncb * PB), M.dtype)
    out[:, :K, :C] = M
    blocks = _aligned_empty((nd, ncb, Kp // 2, 2 * PB), M.dtype)
    blocks[...] = out.reshape(nd, Kp // 2, 2, ncb, PB).transpose(0, 3, 1, 4, 2).reshape(nd, ncb, Kp // 2, 2 * PB)
    return blocks


@intrinsic
def _madd_block_ir(typingctx, W, woff, h16, nkk, out, ooff):
    """out[ooff:ooff+PB] = sum over kk < nkk of W[woff + kk*2PB + 2j + e] * h16[2kk + e] (e = 0, 1), int32.

    W is an 8- or 16-bit integer array (C order), h16 int16.  Written as LLVM vector IR (sign
    extensions, a multiply, even + odd lanes) that the X86 backend turns into ``vpmaddwd`` (AVX2)
    or ``vpdpwssd`` (AVX512-VNNI; 32 MACs per instruction, h as one broadcast int32 pair), with the
    4 x 16 int32 sums held in registers over the whole K loop.  numba's loop vectorizer cannot
    produce this (it emits xmm ``vpmaddwd`` dot products at best; see benchmarks/rnn_op_speed.py).
    Other targets get the same IR lowered generically.
    """
    if not (isinstance(W, types.Array) and isinstance(W.dtype, types.Integer) and W.dtype.bitwidth <= 16
            and isinstance(h16, types.Array) and h16.dtype == types.int16
            and isinstance(out, types.Array) and out.dtype == types.int32):
        return None
    sig = types.void(W, types.intp, h16, types.intp, out, types.intp)
    wbits = W.dtype.bitwidth
    nvec = PB // 16

    def codegen(context, builder, signature, args):
        w_arg, woff_v, h_arg, nkk_v, o_arg, ooff_v = args
        w_ary = context.make_array(signature.args[0])(context, builder, w_arg)
        h_ary = context.make_array(signature.args[2])(context, builder, h_arg)
        o_ary = context.make_array(signature.args[4])(context, builder, o_arg)
        i32 = ir.IntType(32)
        v16 = ir.VectorType(i32, 16)
        v32 = ir.VectorType(i32, 32)
        wvec = ir.VectorType(ir.IntType(wbits), 32)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v16, None)) for _ in range(nvec)]
        wbase = builder.gep(w_ary.data, [woff_v])
        hpairs = builder.bitcast(h_ary.data, i32.as_pointer())
        even = ir.Constant(v16, [2 * i for i in range(16)])
        odd = ir.Constant(v16, [2 * i + 1 for i in range(16)])
        bcast = ir.Constant(v32, [i % 2 for i in range(32)])
        with cgutils.for_range(builder, nkk_v) as loop:
            kk = loop.index
            pair = builder.load(builder.gep(hpairs, [kk]), align=2)
            pair = builder.bitcast(builder.insert_element(ir.Constant(ir.VectorType(i32, 1), None), pair,
                                                          ir.Constant(i32, 0)), ir.VectorType(ir.IntType(16), 2))
            hx = builder.sext(builder.shuffle_vector(pair, pair, bcast), v32)
            row = builder.gep(wbase, [builder.mul(kk, ir.Constant(kk.type, 2 * PB))])
            for v in range(nvec):
                ptr = builder.bitcast(builder.gep(row, [ir.Constant(kk.type, 32 * v)]), wvec.as_pointer())
                prod = builder.mul(hx, builder.sext(builder.load(ptr, align=1), v32))
                part = builder.add(builder.shuffle_vector(prod, prod, even), builder.shuffle_vector(prod, prod, odd))
                builder.store(builder.add(builder.load(accs[v]), part), accs[v])
        obase = builder.gep(o_ary.data, [ooff_v])
        for v in range(nvec):
            ptr = builder.bitcast(builder.gep(obase, [ir.Constant(ooff_v.type, 16 * v)]), v16.as_pointer())
            builder.store(builder.load(accs[v]), ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


def _madd_block_py(W, woff, h16, nkk, out, ooff):
    """Plain-numpy _madd_block_ir (NUMBA_DISABLE_JIT=1)."""
    w = W.reshape(-1)[woff:woff + nkk * 2 * PB].reshape(nkk, PB, 2).astype(np.int64)
    h = h16[:2 * nkk].reshape(nkk, 1, 2).astype(np.int64)
    out[ooff:ooff + PB] = (w * h).sum(axis=(0, 2)).astype(np.int32)


_madd_block = _madd_block_py if numba.config.DISABLE_JIT else _madd_block_ir


@njit(**JIT)
def _matvec_q16(V, n, Q, scale, zp, out, c0, ncols):
    """out[i, c0:c0+ncols] = (V[i] @ (M - zp)) * scale for rows i < n, M = pair blocks Q (pack_pairs).

    Each row of V (fp32, zero past the true K) is quantized to int16, symmetric, per row and step:
    hq = round(V[i] * c / max|V[i]|), c = min(32767, (2^31 - 1) // (128 K)) so that no int32 sum
    of K products |hq| * |q| <= c * 128 can overflow (c = 32767 up to K = 512, halved at each
    doubling past it); then int32 multiply-adds on the 8-bit weights (_madd_block), and
    out = (sum - zp * sum(hq)) * scale * max|V[i]| / c.  The only error against the dequantized
    weights is hq's rounding: |V[i, k] - hq[k] * max|V[i]| / c| <= max|V[i]| / (2 c), so
    |out - exact| <= max|V[i]| / (2 c) * sum_k |M[k, j] - zp| * scale (about 1.5e-5 * max|h|
    per unit of weight row 1-norm: below fp32 tolerance for typical weights).  A NaN or inf in
    V[i] makes its row NaN.
    """
    ncb, nkk = Q.shape[0], Q.shape[1]
    K = 2 * nkk
    cap = min(_HCAP, 2147483647 // (128 * max(K, 1)))
    hq = np.zeros(K, np.int16)
    acc = np.empty(ncb * PB, np.int32)
    for i in range(n):
        v = V[i]
        m = _ZERO
        z = _ZERO  # NaN if V[i] holds a NaN or inf (max() would drop a NaN)
        for k in range(K):
            m = max(m, abs(v[k]))
            z += v[k] * _ZERO
        if z != _ZERO:  # NaN or inf: no integer image; propagate
            for j in range(ncols):
                out[i, c0 + j] = np.float32(np.nan)
            continue
        s = np.float32(cap) / m if m > _ZERO else _ZERO
        hs = 0
        for k in range(K):
            q = np.int16(np.floor(v[k] * s + _HALF))
            hq[k] = q
            hs += np.int64(q)
        for cb in range(ncb):
            _madd_block(Q, cb * nkk * 2 * PB, hq, nkk, acc, cb * PB)
        back = np.float64(m) / cap
        for j in range(ncols):
            out[i, c0 + j] = np.float32((np.float64(acc[j]) - np.float64(zp[c0 + j]) * hs)
                                        * (back * scale[c0 + j]))


def _matvec(V, n, T, scale, zp, vsum, acc, out, c0, ncols):
    """h @ R^T for the driver: fp32 tiles (pack_tiles) or 8-bit pair blocks (pack_pairs, 3-D)."""
    if T.ndim == 3:
        _matvec_q16(V, n, T, scale, zp, out, c0, ncols)
    else:
        _matvec_rows(V, n, T, scale, zp, vsum, acc, out, c0, ncols)


@overload(_matvec, jit_options=dict(JIT, cache=False))
def _matvec_jit(V, n, T, scale, zp, vsum, acc, out, c0, ncols):
    if T.ndim == 3:
        return lambda V, n, T, scale, zp, vsum, acc, out, c0, ncols: _matvec_q16(V, n, T, scale, zp, out, c0, ncols)
    return lambda V, n, T, scale, zp, vsum, acc, out, c0, ncols: _matvec_rows(
        V, n, T, scale, zp, vsum, acc, out, c0, ncols)


def _dims(T):
    """(padded K, padded columns) of fp32 tiles or pair blocks."""
    if T.ndim == 3:
        return T.shape[1] * 2, T.shape[0] * PB
    return T.shape[0] * KB, T.shape[1] * CB


@overload(_dims, jit_options=dict(JIT, cache=False))
def _dims_jit(T):
    if T.ndim == 3:
        return lambda T: (T.shape[1] * 2, T.shape[0] * PB)
    return lambda T: (T.shape[0] * KB, T.shape[1] * CB)


@njit(**JIT)
def _matvec_rows(V, n, T, scale, zp, vsum, acc, out, c0, ncols):
    """out[i, c0:c0+ncols] = (V[i] @ (M - zp)) * scale for rows i < n, M = tiles T (see pack_tiles).

    V is (rows, nkb*KB), zero past the true K; vsum[i] = sum(V[i]) (for zero points); acc is
    scratch (rows, >= ncb*CB).  T is float32 or int8 (uint8 is shifted to int8 when packing):
    weight-only quantization, the int8 tile is widened to fp32 in registers and activations stay
    fp32.  With several rows each tile is applied to all of them while it sits in L1, so a batch
    reads the weights from L2/L3 once per step, not once per row.
    """
    nkb, ncb = T.shape[0], T.shape[1]
    for i in range(n):
        for j in range(ncb * CB):
            acc[i, j] = _ZERO
    if n == 1:  # one row: hoist its 8 inputs out of the column loop
        v = V[0]
        ai = acc[0]
        for kb in range(nkb):
            k = kb * KB
            a0, a1, a2, a3 = v[k], v[k + 1], v[k + 2], v[k + 3]
            a4, a5, a6, a7 = v[k + 4], v[k + 5], v[k + 6], v[k + 7]
            for cb in range(ncb):
                t = T[kb, cb]
                o = cb * CB
                # written out twice: a numba call here is not inlined (30% slower).  A chain of FMAs
                # here (8% faster for int8), a tree below (the chain was 70% slower with int8 rows).
                for jj in range(CB):
                    s = ai[o + jj] + a0 * np.float32(t[0, jj])
                    s += a1 * np.float32(t[1, jj])
                    s += a2 * np.float32(t[2, jj])
                    s += a3 * np.float32(t[3, jj])
                    s += a4 * np.float32(t[4, jj])
                    s += a5 * np.float32(t[5, jj])
                    s += a6 * np.float32(t[6, jj])
                    ai[o + jj] = s + a7 * np.float32(t[7, jj])
    elif T.itemsize != 4:  # several rows, 8-bit tiles: widen each tile to fp32 once, for all rows
        # (the int8 -> fp32 conversions, not the FMAs, bound the loop below when done per row:
        # B=32, H=256 step 459 -> 300 us, as fast as fp32 tiles)
        tw = np.empty((KB, CB), np.float32)
        for kb in range(nkb):
            k = kb * KB
            for cb in range(ncb):
                t = T[kb, cb]
                o = cb * CB
                for r in range(KB):
                    for jj in range(CB):
                        tw[r, jj] = np.float32(t[r, jj])
                for i in range(n):
                    v = V[i]
                    a0, a1, a2, a3 = v[k], v[k + 1], v[k + 2], v[k + 3]
                    a4, a5, a6, a7 = v[k + 4], v[k + 5], v[k + 6], v[k + 7]
                    ai = acc[i]
                    for jj in range(CB):
                        ai[o + jj] += ((a0 * tw[0, jj] + a1 * tw[1, jj]) + (a2 * tw[2, jj] + a3 * tw[3, jj])) + (
                            (a4 * tw[4, jj] + a5 * tw[5, jj]) + (a6 * tw[6, jj] + a7 * tw[7, jj]))
    else:  # several rows, fp32 tiles: apply each 8x64 tile to every row while it is in L1
        for kb in range(nkb):
            k = kb * KB
            for cb in range(ncb):
                t = T[kb, cb]
                o = cb * CB
                for i in range(n):
                    v = V[i]
                    a0, a1, a2, a3 = v[k], v[k + 1], v[k + 2], v[k + 3]
                    a4, a5, a6, a7 = v[k + 4], v[k + 5], v[k + 6], v[k + 7]
                    ai = acc[i]
                    for jj in range(CB):
                        ai[o + jj] += ((a0 * np.float32(t[0, jj]) + a1 * np.float32(t[1, jj]))
                                       + (a2 * np.float32(t[2, jj]) + a3 * np.float32(t[3, jj]))) + (
                            (a4 * np.float32(t[4, jj]) + a5 * np.float32(t[5, jj]))
                            + (a6 * np.float32(t[6, jj]) + a7 * np.float32(t[7, jj])))
    for i in range(n):
        for j in range(ncols):
            out[i, c0 + j] = (acc[i, j] - zp[c0 + j] * vsum[i]) * scale[c0 + j]


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
def _scratch_apart(n, width, T):
    """(n, width) float32 scratch whose address is 2 KiB away from T's modulo 4 KiB.

    The mat-vec stores to acc while streaming loads from the weight tiles; when the two share
    their low 12 address bits the core stalls loads on a false store dependency ("4K
    aliasing"): measured 10-20% slower steps for unlucky allocations, now never.
    """
    buf = np.empty(n * width + 1024, np.float32)
    shift = ((T.ctypes.data + 2048 - buf.ctypes.data) % 4096) // 4
    return buf[shift:shift + n * width].reshape((n, width))


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
    kp, w1 = _dims(T1)
    w2 = _dims(T2)[1]
    V = np.zeros((n, kp), np.float32)  # padded mat-vec inputs; cols >= H stay 0
    acc = _scratch_apart(n, max(w1, w2), T1)
    g = np.empty((n, GH), np.float32)
    vsum = np.empty(n, np.float32)
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
            sm = _ZERO
            for k in range(H):
                va[k] = hi[k]
                sm += hi[k]
            vsum[a] = sm
        _matvec(V, m, T1, rs, rz, vsum, acc, g, 0, 2 * H if two_pass else GH)
        if two_pass:
            for a in range(m):
                b, t = b0 + act[a], tix[a]
                x = xw[t, b, d * GH:(d + 1) * GH] if layout == 0 else xw[b, t, d * GH:(d + 1) * GH]
                _gru_reset(x, g[a], h[act[a]], V[a], clip)
                sm = _ZERO
                for k in range(H):
                    sm += V[a, k]
                vsum[a] = sm
            _matvec(V, m, T2, rs, rz, vsum, acc, g, 2 * H, H)
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


@njit(**JIT)
def _project_q(X, T, scale, zp, bias, out):
    """out = (X @ (M - zp)) * scale + bias for quantized tiles T of M (I, C); X is (N, I)."""
    N, I = X.shape
    C = out.shape[1]
    rows = 16  # rows of X per pass over the weights
    V = np.zeros((rows, T.shape[0] * KB), np.float32)
    acc = np.empty((rows, T.shape[1] * CB), np.float32)
    vsum = np.empty(rows, np.float32)
    for n0 in range(0, N, rows):
        m = min(rows, N - n0)
        for a in range(m):
            sm = _ZERO
            for k in range(I):
                V[a, k] = X[n0 + a, k]
                sm += X[n0 + a, k]
            vsum[a] = sm
        _matvec_rows(V, m, T, scale, zp, vsum, acc, out[n0:n0 + m], 0, C)
        for a in range(m):
            for j in range(C):
                out[n0 + a, j] += bias[j]


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
        if RT.dtype == np.float32:
            pack, empty = pack_tiles, (lambda T1: np.zeros((nd, T1.shape[1], 0, KB, CB), np.float32))
        else:  # 8-bit R: int16-state x int8 multiply-adds (_matvec_q16)
            pack, empty = pack_pairs, (lambda T1: np.zeros((nd, 0, T1.shape[2], 2 * PB), RT.dtype))
        if kind == GRU and not self.lbr:
            # (r * h) @ R_h^T is a second mat-vec: R_h gets its own tiles (a mat-vec over a column
            # slice of one packed (H, 3H) matrix measured 2.5x slower)
            self.T1, self.T2 = pack(RT[:, :, :2 * hidden]), pack(RT[:, :, 2 * hidden:])
        else:
            self.T1 = pack(RT)
            self.T2 = empty(self.T1)
        if isinstance(W, tuple):
            q, s, z = _as_int8(*W)
            self.Wq = pack_tiles(np.concatenate(list(q), axis=1)[None])[0]  # tiles of (I, nd*GH)
            self.ws = np.ascontiguousarray(np.asarray(s, np.float32).reshape(-1))
            self.wz = np.ascontiguousarray(np.asarray(z, np.float32).reshape(-1))
            self.WT = None
        else:
            W = np.asarray(W, dtype=np.float32)
            self.WT = np.ascontiguousarray(np.concatenate(list(W.transpose(0, 2, 1)), axis=1))  # (I, nd*GH)
            self.Wq = None
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
        """X (A0, A1, I) -> X W^T + biases, (A0, A1, nd*G*H), both directions in one GEMM."""
        X2 = np.ascontiguousarray(X.reshape(-1, X.shape[-1]), dtype=np.float32)
        if self.WT is not None:
            out = X2 @ self.WT
            out += self.bias
        else:
            out = np.empty((X2.shape[0], self.ws.shape[0]), np.float32)
            _project_q(X2, self.Wq, self.ws, self.wz, self.bias, out)
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
