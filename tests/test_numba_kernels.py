"""The multi-row kernels of the numba backend: 4 rows per pass over each weight block, then a pair
and a last row (matvec._fma_rest, qdot._dots), row-chunked uint8 projections
(qdot.PROJ_ROWS) and 8-bit weights widened to fp32 for batches (rnn.batch_twin).

Every path must keep a row's result independent of its batch neighbours: bit for bit where the
arithmetic per row is the same (fp32 FMAs in k order, exact int32 sums), within FP32 where a
batch switches 8-bit weights from the int16-split product to fp32 ones (both are the dequantized
weights' product to fp32 rounding).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from rnnkit.runtime.numba_backend import amx, config, matvec, qdot, rnn
from rnnkit.runtime.tolerance import FP32

ROWS = (1, 2, 3, 5, 6, 7, 32)  # every remainder after the 4-row passes: 1, 2, 3, 1, 2, 3, 0


def test_fp32_row_blocks_equal_each_row_alone():
    """_matvec and _project (with and without prefetch) give each row of a batch of 1-32 rows the
    bits it gets alone (whichever of the 4-, 2- and 1-row kernels ran it), and the float64 product
    to FP32."""
    rng = np.random.default_rng(0)
    K, C = 19, 130  # K and C not multiples of the blocks
    M = rng.normal(size=(1, K, C)).astype(np.float32)
    Q = matvec.pack_blocks(M)[0]
    ones, zeros = np.ones(C, np.float32), np.zeros(C, np.float32)
    bias = rng.normal(size=C).astype(np.float32)
    for n in ROWS:
        V = np.zeros((n, Q.shape[1]), np.float32)
        V[:, :K] = rng.normal(size=(n, K))
        got = np.empty((n, C), np.float32)
        matvec._matvec(V, n, Q, ones, zeros, got, 0, C)
        proj = np.empty((n, C), np.float32)
        matvec._project(V[:, :K].copy(), Q, ones, zeros, bias, proj)
        ahead = np.empty((n, C), np.float32)
        matvec._project(V[:, :K].copy(), Q, ones, zeros, bias, ahead, True)
        want = V[:, :K].astype(np.float64) @ M[0]
        assert FP32.close(got, want), (n, FP32.worst(got, want))
        assert np.array_equal(ahead, proj)
        for r in range(n):
            one = np.empty((1, C), np.float32)
            matvec._matvec(V[r : r + 1].copy(), 1, Q, ones, zeros, one, 0, C)
            assert np.array_equal(one[0], got[r]), (n, r)
            matvec._project(V[r : r + 1, :K].copy(), Q, ones, zeros, bias, one)
            assert np.array_equal(one[0], proj[r]), (n, r)


@numba.njit(cache=False)
def _kernel4(Q, V, nk, out):
    matvec._fma4(Q, 0, V, 0, nk, out, out.shape[1], 0, matvec.NO_BIAS)


@numba.njit(cache=False)
def _kernel1(Q, V, nk, out):
    matvec._fma1(Q, 0, V, 0, nk, out, out.shape[1], 0, matvec.NO_BIAS)


@pytest.mark.parametrize("nk", [1, 3, 4, 5, 8, 11])
def test_fp32_kernels_unrolled_k_loop_with_every_remainder(nk):
    """The fp32 kernels run K_UNROLL k per loop iteration and the rest one by one: for any K, the
    4-row kernel's rows equal the 1-row kernel's bit for bit (the same FMAs in the same order) and
    the float64 product to FP32."""
    rng = np.random.default_rng(nk)
    Q = matvec.pack_blocks(rng.normal(size=(1, nk, 64)).astype(np.float32))[0]
    V = np.zeros((4, Q.shape[1]), np.float32)
    V[:, :nk] = rng.normal(size=(4, nk))
    four = np.zeros((4, 64), np.float32)
    _kernel4(Q, V, nk, four)
    for r in range(4):
        one = np.zeros((1, 64), np.float32)
        _kernel1(Q, V[r : r + 1].copy(), nk, one)
        assert np.array_equal(one[0], four[r]), r
    want = V[:, :nk].astype(np.float64) @ Q[0, :nk].astype(np.float64)
    assert FP32.close(four, want), FP32.worst(four, want)


def test_u8_row_blocks_are_exact_for_every_remainder():
    """qdot._dots with 1-32 rows (4-row passes, then 3, 2 or 1 rows at once), both lowerings:
    the exact int64 products."""
    rng = np.random.default_rng(1)
    K, C = 37, 200
    M = rng.integers(-128, 128, (1, K, C)).astype(np.int8)
    Q = qdot.pack_quads(M)[0]
    Kp = 4 * Q.shape[1]
    for n in ROWS:
        hq = np.zeros((n, Kp), np.uint8)
        hq[:, :K] = rng.integers(0, 256, (n, K))
        want = hq[:, :K].astype(np.int64) @ M[0].astype(np.int64)
        for vnni in (True, False) if qdot.VNNI else (False,):
            acc = np.full((n, Q.shape[0] * matvec.PB), 7, np.int32)
            qdot._dots(Q, hq, n, acc, vnni)
            np.testing.assert_array_equal(acc[:, :C], want, err_msg=f"rows={n} vnni={vnni}")


@pytest.mark.skipif(not amx.AVAILABLE, reason="this CPU or OS gives no AMX tiles (amx.AVAILABLE is false)")
def test_amx_tiles_give_the_exact_products_for_every_row_count():
    """qdot._dots on AMX tiles (groups of 16 rows, a last group of 4-15, the last 1-3 rows on the
    vector kernels; K a multiple of 64, C not of the blocks): the exact int64 products, as the
    vector kernels give them."""
    rng = np.random.default_rng(2)
    for K in (64, 128, 320):
        M = rng.integers(-128, 128, (1, K, 200)).astype(np.int8)
        Q = qdot.pack_quads(M)[0]
        for n in (1, 3, 4, 5, 15, 16, 17, 19, 20, 31, 32, 35):
            hq = rng.integers(0, 256, (n, 4 * Q.shape[1])).astype(np.uint8)
            want = hq[:, :K].astype(np.int64) @ M[0].astype(np.int64)
            acc = np.full((n, Q.shape[0] * matvec.PB), 7, np.int32)
            qdot._dots(Q, hq, n, acc, qdot.VNNI, True)
            np.testing.assert_array_equal(acc[:, :200], want, err_msg=f"K={K} rows={n}")


def test_u8_projection_in_row_chunks_equals_each_batch_row_alone():
    """project_u8 over more than PROJ_ROWS rows (T * B = 2 * 70): each batch row equals the row
    projected alone (one quantization parameter set per batch row), bit for bit, bias included."""
    rng = np.random.default_rng(2)
    I, C, T, B = 24, 130, 70, 2
    assert T * B > qdot.PROJ_ROWS
    M = rng.integers(-128, 128, (1, I, C)).astype(np.int8)
    ws, wz = (rng.random(C) * 0.01).astype(np.float32), np.full(C, 3, np.float32)
    Q, zterm = qdot.pack_quads(M)[0], qdot.zero_point_terms(M, wz[None])[0]
    bias = rng.normal(size=C).astype(np.float32)
    X = rng.normal(size=(T, B, I)).astype(np.float32)
    out = np.empty((T * B, C), np.float32)
    qdot.project_u8(X, 0, Q, zterm, ws, bias, out)
    out = out.reshape(T, B, C)
    for b in range(B):
        one = np.empty((T, C), np.float32)
        qdot.project_u8(np.ascontiguousarray(X[:, b : b + 1]), 0, Q, zterm, ws, bias, one)
        np.testing.assert_array_equal(one, out[:, b])


def _range_one_chain(x, lo, hi):
    """qdot._range's contract as one scalar chain (onnxruntime's order of a plain loop)."""
    bad = False
    for v in x:
        bad = bad or not np.isfinite(v)
        lo = v if v < lo else lo
        hi = v if v > hi else hi
    return np.float32(lo), np.float32(hi), bad


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 31, 33, 256, 263])
def test_activation_range_in_vector_lanes_equals_one_chain(n):
    """qdot._range folds 16 lanes of min/max/NaN probes: the same (min, max, NaN-or-inf) as one
    scalar chain, bit for bit (the sign of a zero included: 0.0 from the start is never replaced by
    -0.0), for every tail length, starting ranges other than 0, and a NaN or inf in any lane or in
    the tail (which must not change the min/max of the other values)."""
    rng = np.random.default_rng(n)
    for case in range(6):
        x = rng.normal(size=n).astype(np.float32)
        lo, hi = np.float32(0.0), np.float32(0.0)
        if case == 1:
            x = np.abs(x)  # no negative value: lo stays 0.0
        if case == 2:
            x[:] = -0.0
        if case == 3:
            lo, hi = np.float32(-5.0), np.float32(0.25)
        if case >= 4 and n:
            x[rng.integers(n)] = np.nan if case == 4 else -np.inf
        got = qdot._range(x, lo, hi)
        want = _range_one_chain(x, lo, hi)
        assert got[2] == want[2], (case, got, want)
        if not want[2]:
            bits = [np.float32(v).tobytes() for v in (*got[:2], *want[:2])]
            assert bits[:2] == bits[2:], (case, got, want)


def test_fp32_kernel_adds_the_bias_after_the_sums():
    """The fp32 kernels' bias epilogue: the sums in k order, then + bias (one rounding each), the
    same bits as the kernel without a bias followed by a separate add; an empty bias adds nothing."""
    rng = np.random.default_rng(5)
    nk = 37
    Q = matvec.pack_blocks(rng.normal(size=(1, nk, 64)).astype(np.float32))[0]
    V = np.zeros((4, Q.shape[1]), np.float32)
    V[:, :nk] = rng.normal(size=(4, nk))
    bias = rng.normal(size=64).astype(np.float32)
    plain, biased = np.zeros((4, 64), np.float32), np.zeros((4, 64), np.float32)
    _kernel4(Q, V, nk, plain)
    _kernel4_bias(Q, V, nk, biased, bias)
    np.testing.assert_array_equal(biased, plain + bias)
    assert not np.array_equal(biased, plain)


@numba.njit(cache=False)
def _kernel4_bias(Q, V, nk, out, bias):
    matvec._fma4(Q, 0, V, 0, nk, out, out.shape[1], 0, bias)


@pytest.mark.parametrize("kind", [rnn.GRU, rnn.LSTM])
def test_int8_weights_widened_for_batches_match_rows_alone(kind, monkeypatch):
    """8-bit weights times fp32 states (GRU: linear_before_reset=0, whose second product has its own
    widened blocks and scales).  Recurrent weights that fit WIDE_BYTES run as rnn.batch_twin's fp32
    twin at every batch: a row alone is the row in a batch, bit for bit.  Larger ones stay 8-bit
    (the int16-split product) up to WIDE_ROWS rows and run the twin above: a row alone and in a
    batch agree to FP32, both with the dequantized fp32 weights' result."""
    rng = np.random.default_rng(3)
    H, I = 32, 16
    G = rnn.GATES[kind] * H
    Wq, Rq = (rng.integers(-127, 128, (1, k, G)).astype(np.int8) for k in (I, H))
    scale = rng.uniform(1.0, 2.0, (1, G)).astype(np.float32) / (127 * np.sqrt(H))  # weights of a trained size
    zp = np.zeros((1, G), np.float32)
    B = rng.normal(size=(1, 2 * G)).astype(np.float32)
    packed = rnn.PackedRNN(kind, H, (Wq, scale, zp), (Rq, scale, zp), B, None)
    deq = [(q.transpose(0, 2, 1).astype(np.float32) * scale[..., None]) for q in (Wq, Rq)]
    dense = rnn.PackedRNN(kind, H, deq[0], deq[1], B, None)
    X = rng.normal(size=(11, 18, I)).astype(np.float32)
    Yd, hd, _ = rnn.run(dense, X, threads=1)

    assert rnn.batch_twin(packed, 1) is not packed and rnn.batch_twin(packed, 3) is rnn.batch_twin(packed, 1)
    Y, h, _ = rnn.run(packed, np.ascontiguousarray(X[:, :3]), threads=1)
    assert FP32.close(Y, Yd[:, :, :3]), FP32.worst(Y, Yd[:, :, :3])
    for r in range(3):
        alone = rnn.run(packed, np.ascontiguousarray(X[:, r : r + 1]), threads=1)
        np.testing.assert_array_equal(alone[0][:, :, 0], Y[:, :, r])

    monkeypatch.setattr(rnn, "WIDE_BYTES", 0)  # as if the recurrent weights were larger than L2
    assert rnn.batch_twin(packed, 3) is packed and rnn.batch_twin(packed, 18) is not packed
    Y, h, _ = rnn.run(packed, X, threads=1)
    assert FP32.close(Y, Yd), FP32.worst(Y, Yd)
    for r in (0, 9, 17):
        alone = rnn.run(packed, np.ascontiguousarray(X[:, r : r + 1]), threads=1)
        assert FP32.close(alone[0][:, :, 0], Y[:, :, r]), FP32.worst(alone[0][:, :, 0], Y[:, :, r])
        assert FP32.close(alone[1][:, 0], h[:, r])


def test_code_that_may_use_tiles_is_cached_apart(tmp_path):
    """A process granted the AMX tiles caches its compiled kernels in a folder of its own
    (config.TILES_GRANTED), so a process refused them (a seccomp profile, an older kernel) never
    loads code that would run tile instructions; the tiles are used only where granted."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["RNNKIT_CACHE_DIR"] = str(tmp_path)
    code = (
        "import os; from rnnkit.runtime.numba_backend import config; "
        "print(config.TILES_GRANTED, os.environ['NUMBA_CACHE_DIR'])"
    )
    granted, folder = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert folder.startswith(str(tmp_path)) and folder.endswith("-tiles") == (granted == "True")
    assert not amx.AVAILABLE or config.TILES_GRANTED
