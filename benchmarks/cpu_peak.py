"""Peak arithmetic rate of one core, measured with numba: fp32 FMA FLOP/s and int8 ops/s.

    .venv/bin/python benchmarks/cpu_peak.py [--seconds 0.3] [--repeat 5]

Each figure is the best of ``--repeat`` timed runs of a register-only loop (no memory traffic):
``ACC`` independent accumulator chains of 16-lane vectors, enough to hide the instruction
latency, written as LLVM vector IR through numba ``@intrinsic`` (the way the kernels in
``runtime/numba_backend/matvec.py`` and ``qdot.py`` are written), so the loop is exactly the
instructions the kernels use:

* fp32: ``llvm.fma.v16f32`` (``vfmadd231ps`` zmm on AVX-512; LLVM splits it on narrower targets):
  2 FLOP per lane.
* int8: ``vpdpbusd`` zmm (u8 x s8, 4 products summed into each int32 lane; AVX512-VNNI only), 2 ops
  per product (multiply and add), i.e. 128 ops per instruction; "-" where the target lacks VNNI.

``rnn_op_speed.py`` divides each row's arithmetic by these figures (its "% of peak" columns).
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


@njit(cache=False)
def _run_f32(n, seed, out):
    _f32_loop(n, seed, out)


@njit(cache=False)
def _run_i8(n, seed, out):
    _i8_loop(n, seed, out)


def rate(kind: str, seconds: float = 0.3, repeat: int = 5) -> float:
    """Best-of-``repeat`` arithmetic rate of one core: FLOP/s (``"f32"``) or int8 ops/s (``"i8"``)."""
    if kind == "f32":
        seed = np.full((ACC + 2) * LANES, 1.0, np.float32)
        seed[LANES : 2 * LANES] = 1e-7  # acc = acc * 1 + 1e-7: no overflow, no denormals
        out, run, per_iter = np.empty(ACC * LANES, np.float32), _run_f32, ACC * LANES * 2
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
    """{"f32": FLOP/s, "i8": int8 ops/s or None without VNNI} of one core."""
    return {"f32": rate("f32", seconds, repeat), "i8": rate("i8", seconds, repeat) if VNNI else None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="length of one timed run")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure (the best is kept)")
    args = parser.parse_args(argv)
    p = peaks(args.seconds, args.repeat)
    print(f"{common.machine()}, best of {args.repeat} runs of ~{args.seconds:g} s")
    print(f"fp32 FMA : {p['f32'] / 1e9:7.1f} GFLOP/s per core ({ACC} chains of {LANES}-lane fma)")
    if p["i8"] is None:
        print("int8 dot :       - (the compile target has no AVX512-VNNI)")
    else:
        print(f"int8 dot : {p['i8'] / 1e9:7.1f} Gop/s per core (vpdpbusd zmm, 1 op = a multiply or an add)")


if __name__ == "__main__":
    main()
