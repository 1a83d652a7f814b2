"""Peak arithmetic rate of one core, measured with numba: fp32 FMA FLOP/s and int8 ops/s.

    .venv/bin/python benchmarks/cpu_peak.py [--seconds 0.3] [--repeat 5] [--kernels]

Each figure is the best of ``--repeat`` timed runs of a register-only loop (no memory traffic):
``ACC`` independent accumulator chains of 16-lane vectors, enough to hide the instruction
latency, written as LLVM vector IR through numba ``@intrinsic`` (the way the kernels in
``runtime/numba_backend/matvec.py`` and ``qdot.py`` are written), so the loop is exactly the
instructions the kernels use:

* fp32: ``llvm.fma.v16f32`` (``vfmadd231ps`` zmm on AVX-512; LLVM splits it on narrower targets):
  2 FLOP per lane.
* int8: ``vpdpbusd`` zmm (u8 x s8, 4 products summed into each int32 lane; AVX512-VNNI only), 2 ops
  per product (multiply and add), i.e. 128 ops per instruction; "-" where the target lacks VNNI.
* int8 AMX: ``tdpbusd`` (a 16 x 64 u8 tile times a 64 x 16 s8 tile into 16 x 16 int32 sums, 32,768
  ops per instruction) on 4 independent accumulator tiles, where ``amx.AVAILABLE`` (the CPU and the
  OS allow tiles); the int8 kernels use tiles for groups of 4+ rows there (``qdot._dots``).

``rnn_op_speed.py`` divides each row's arithmetic by these figures (its "% of peak" columns; int8
by the AMX peak where there is one).  ``--kernels`` also times the backend's own products alone,
as a batch's recurrent step runs them (K=256 inputs, 1024 columns, 32 rows, 64 calls on the same
weights): the fp32 mat-vec (``matvec._matvec``) and the u8 x s8 block products (``qdot._dots``, no
quantization; on VNNI and, where there are tiles, on AMX), each as GMAC/s and as a share of its
peak above.
The machine is shared and its clock varies: the best run is the figure (noise only slows a run).
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (pins 1 thread before numpy/numba load)
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

import rnnkit.runtime.numba_backend.config  # noqa: F401  (numba settings before numba loads)
from rnnkit.runtime.numba_backend import amx
from rnnkit.runtime.numba_backend.qdot import VNNI

ACC = 16  # independent chains: latency 4-5 cycles x 2 issue ports, with room to spare
LANES = 16


def _make_loop(kind: str):
    """An intrinsic ``loop(n, seed, out)``: n iterations of ACC independent 16-lane multiply-adds,
    the ACC sums stored into ``out`` (so that nothing is optimised away)."""

    @intrinsic
    def loop(typingctx, n, seed, out):
        sig = types.void(types.intp, seed, out)

        def codegen(context, builder, signature, args):
            n_v, seed_arg, out_arg = args
            s_ary = context.make_array(signature.args[1])(context, builder, seed_arg)
            o_ary = context.make_array(signature.args[2])(context, builder, out_arg)
            if kind == "f32":
                vt = ir.VectorType(ir.FloatType(), LANES)
                name = "llvm.fma.v16f32"
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), name)
            else:
                vt = ir.VectorType(ir.IntType(32), LANES)
                fn = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(vt, [vt, vt, vt]), "llvm.x86.avx512.vpdpbusd.512"
                )
            base = builder.bitcast(s_ary.data, vt.as_pointer())
            a = builder.load(builder.gep(base, [ir.Constant(ir.IntType(64), 0)]), align=4)
            b = builder.load(builder.gep(base, [ir.Constant(ir.IntType(64), 1)]), align=4)
            seeds = [builder.gep(base, [ir.Constant(ir.IntType(64), 2 + i)]) for i in range(ACC)]
            accs = [cgutils.alloca_once_value(builder, builder.load(p, align=4)) for p in seeds]
            with cgutils.for_range(builder, n_v):
                for acc in accs:
                    args3 = [builder.load(acc), a, b] if kind != "f32" else [a, b, builder.load(acc)]
                    builder.store(builder.call(fn, args3), acc)
            obase = builder.bitcast(o_ary.data, vt.as_pointer())
            for i, acc in enumerate(accs):
                builder.store(builder.load(acc), builder.gep(obase, [ir.Constant(ir.IntType(64), i)]), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return loop


_f32_loop, _i8_loop = _make_loop("f32"), _make_loop("i8")


@intrinsic
def _amx_loop(typingctx, n, tiles):
    """n iterations of 4 independent ``tdpbusd`` (tiles 0-3 += tile 4 x tile 5), 16 rows x 64 bytes
    each, loaded from and stored back to ``tiles`` (6 x 1 KB, uint8)."""
    sig = types.void(types.intp, tiles)

    def codegen(context, builder, signature, args):
        n_v, t_arg = args
        t_ary = context.make_array(signature.args[1])(context, builder, t_arg)
        i8, i64 = ir.IntType(8), ir.IntType(64)
        amx.configure(builder, 16)
        data = builder.bitcast(t_ary.data, i8.as_pointer())
        load, store = amx.tile_fn(builder, "tileloadd64"), amx.tile_fn(builder, "tilestored64")
        dpbusd = amx.tile_fn(builder, "tdpbusd")

        def tile(t):
            return [ir.Constant(i8, t), builder.gep(data, [ir.Constant(i64, 1024 * t)]), ir.Constant(i64, 64)]

        for t in range(6):
            builder.call(load, tile(t))
        with cgutils.for_range(builder, n_v):
            for t in range(4):
                builder.call(dpbusd, [ir.Constant(i8, t), ir.Constant(i8, 4), ir.Constant(i8, 5)])
        for t in range(4):
            builder.call(store, tile(t))
        builder.call(amx.tile_fn(builder, "tilerelease"), [])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=False)
def _run_amx(n, seed, out):
    _amx_loop(n, seed)


@njit(cache=False)
def _run_f32(n, seed, out):
    _f32_loop(n, seed, out)


@njit(cache=False)
def _run_i8(n, seed, out):
    _i8_loop(n, seed, out)


def rate(kind: str, seconds: float = 0.3, repeat: int = 5) -> float:
    """Best-of-``repeat`` arithmetic rate of one core: FLOP/s (``"f32"``) or int8 ops/s (``"i8"``:
    vpdpbusd, ``"amx"``: tdpbusd)."""
    if kind == "f32":
        seed = np.full((ACC + 2) * LANES, 1.0, np.float32)
        seed[LANES : 2 * LANES] = 1e-7  # acc = acc * 1 + 1e-7: no overflow, no denormals
        out, run, per_iter = np.empty(ACC * LANES, np.float32), _run_f32, ACC * LANES * 2
    elif kind == "amx":
        seed = np.zeros(6 * 1024, np.uint8)  # zero operands: the sums stay 0, no overflow
        out, run, per_iter = None, _run_amx, 4 * 16 * 16 * 64 * 2
    else:
        seed = np.ones((ACC + 2) * LANES, np.int32)
        out, run, per_iter = np.empty(ACC * LANES, np.int32), _run_i8, ACC * LANES * 4 * 2
    run(10, seed, out)  # compile
    n = 1000
    while True:  # size one run to about `seconds`
        t0 = time.perf_counter()
        run(n, seed, out)
        dt = time.perf_counter() - t0
        if dt > seconds / 4:
            break
        n *= 4
    n = max(1, int(n * seconds / dt))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        run(n, seed, out)
        best = min(best, time.perf_counter() - t0)
    return n * per_iter / best


def peaks(seconds: float = 0.3, repeat: int = 5) -> dict:
    """{"f32": FLOP/s, "i8": int8 ops/s or None without VNNI, "amx": int8 ops/s on tiles or None}
    of one core."""
    return {
        "f32": rate("f32", seconds, repeat),
        "i8": rate("i8", seconds, repeat) if VNNI else None,
        "amx": rate("amx", seconds, repeat) if amx.AVAILABLE else None,
    }


def kernel_rates(repeat: int = 5, K: int = 256, C: int = 1024, rows: int = 32, calls: int = 64) -> dict:
    """{"f32": MAC/s of matvec._matvec, "i8": MAC/s of qdot._dots on VNNI or None without it,
    "amx": MAC/s of qdot._dots on tiles or None without them}."""
    from rnnkit.runtime.numba_backend import matvec, qdot

    rng = np.random.default_rng(0)
    M = rng.normal(size=(1, K, C)).astype(np.float32)
    Q = matvec.pack_blocks(M)[0]
    V = rng.normal(size=(rows, Q.shape[1])).astype(np.float32)
    ones, zeros = np.ones(C, np.float32), np.zeros(C, np.float32)
    out = np.empty((rows, C), np.float32)
    Qi = qdot.pack_quads(rng.integers(-127, 128, (1, K, C)).astype(np.int8))[0]
    hq = rng.integers(0, 256, (rows, 4 * Qi.shape[1])).astype(np.uint8)
    acc = np.empty((rows, Qi.shape[0] * matvec.PB), np.int32)

    @njit(cache=False)
    def f32_calls(n, V, Q, ones, zeros, out):  # arrays as arguments: numba freezes globals read-only
        for i in range(n):
            matvec._matvec(V, V.shape[0], Q, ones, zeros, out, 0, out.shape[1], (i & 1) == 1)

    @njit(cache=False)
    def i8_calls(n, Qi, hq, acc, tiles):
        for _ in range(n):
            qdot._dots(Qi, hq, hq.shape[0], acc, True, tiles)

    result = {}
    for kind, fn, arrays in (
        ("f32", f32_calls, (V, Q, ones, zeros, out)),
        ("i8", i8_calls, (Qi, hq, acc, False)),
        ("amx", i8_calls, (Qi, hq, acc, True)),
    ):
        if (kind == "i8" and not VNNI) or (kind == "amx" and not amx.AVAILABLE):
            result[kind] = None
            continue
        fn(1, *arrays)
        best = min(_timed(fn, calls, arrays) for _ in range(repeat))
        result[kind] = K * C * rows * calls / best
    return result


def _timed(fn, n, arrays) -> float:
    t0 = time.perf_counter()
    fn(n, *arrays)
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="length of one timed run")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure (the best is kept)")
    parser.add_argument("--kernels", action="store_true", help="also time the backend's products (see above)")
    args = parser.parse_args(argv)
    p = peaks(args.seconds, args.repeat)
    print(f"{common.machine()}, best of {args.repeat} runs of ~{args.seconds:g} s")
    print(f"fp32 FMA : {p['f32'] / 1e9:7.1f} GFLOP/s per core ({ACC} chains of {LANES}-lane fma)")
    if p["i8"] is None:
        print("int8 dot :       - (the compile target has no AVX512-VNNI)")
    else:
        print(f"int8 dot : {p['i8'] / 1e9:7.1f} Gop/s per core (vpdpbusd zmm, 1 op = a multiply or an add)")
    if p["amx"] is not None:
        print(f"int8 AMX : {p['amx'] / 1e9:7.1f} Gop/s per core (tdpbusd, 4 accumulator tiles)")
    if args.kernels:
        k = kernel_rates(args.repeat)
        print("products alone, K=256, 1024 columns, 32 rows, 64 calls:")
        for kind, name, unit in (
            ("f32", "fp32 matvec._matvec", "FMA"),
            ("i8", "u8 x s8 qdot._dots ", "vpdpbusd"),
            ("amx", "u8 x s8 qdot._dots on tiles", "tdpbusd"),
        ):
            if k[kind] is not None:  # a MAC is 2 ops of the peak
                print(f"{name}: {k[kind] / 1e9:6.1f} GMAC/s = {200 * k[kind] / p[kind]:.0f}% of the {unit} peak")


if __name__ == "__main__":
    main()
