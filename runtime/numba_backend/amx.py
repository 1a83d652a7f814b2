"""uint8 x int8 block products on Intel AMX tiles (``tdpbusd``), for the CPUs that have them.

One AMX instruction multiplies a 16 x 64 uint8 tile by a 64 x 16 int8 tile into 16 x 16 int32
sums: 16,384 multiply-adds, where one AVX512-VNNI ``vpdpbusd`` does 64.  onnxruntime's int8
GEMMs use them where the CPU and the OS allow (``MatMulInteger`` 2048 x 1024 x 2048 on one core
of this project's Xeon: 727 GMAC/s, where the VNNI peak is ~400), so its DynamicQuantizeLSTM
steps at batch 16+ are out of a VNNI kernel's reach.  ``dots`` computes what ``qdot._dots``
computes (exact int32 sums, so a row's result is the same whichever kernel ran it) for whole
groups of 16 rows, on the weights as ``qdot.pack_quads`` stores them: a quad row of a 64-column
block is 256 bytes, 4 consecutive K of one column side by side, which is the layout ``tdpbusd``
wants of its second operand (16 quad rows x 64 bytes = 64 K x 16 columns per tile).

Linux hands the tile registers to a process only on request (``config.TILES_GRANTED``, asked
before numba loads); without it the first tile instruction kills the process.  ``AVAILABLE`` is
true only when the compile target has AMX-INT8 and that request succeeded; the numba cache of a
process with tiles is a folder of its own (``config``), and callers pass the flag on as an
argument (``amx_kernels``), so compiled code that uses tiles never runs where they were refused.
Must not import torch or onnxruntime.
"""

from __future__ import annotations

import platform

import llvmlite.binding as ll
import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import config  # sets NUMBA_CACHE_DIR before numba is imported; TILES_GRANTED
from .matvec import PB

ROWS = 16  # rows of an activation tile: dots covers whole groups of these
KQ_TILE = 16  # quad rows (64 K) per tile: the K a tile product covers


def _target_has_amx() -> bool:
    """Whether numba compiles for a CPU with AMX-TILE and AMX-INT8 (as qdot._target_has_vnni)."""
    if numba.config.DISABLE_JIT or platform.machine() not in ("x86_64", "AMD64"):
        return False
    feats = numba.config.CPU_FEATURES
    if feats is not None:
        return {"+amx-tile", "+amx-int8"} <= set(feats.split(","))
    if numba.config.CPU_NAME not in (None, "host"):
        return False  # a named portable target: do not assume the host's extensions
    try:
        host = ll.get_host_cpu_features()
    except RuntimeError:
        return False
    return bool(host.get("amx-tile", False) and host.get("amx-int8", False))


AVAILABLE = _target_has_amx() and config.TILES_GRANTED


_TILE_FNS = {  # the LLVM intrinsics with immediate tile numbers, and their argument types
    "ldtilecfg": ("i8*",),
    "tileloadd64": ("i8", "i8*", "i64"),
    "tilestored64": ("i8", "i8*", "i64"),
    "tilezero": ("i8",),
    "tdpbusd": ("i8", "i8", "i8"),
    "tilerelease": (),
}


def tile_fn(builder, name: str):
    """The declaration of ``llvm.x86.<name>`` (``_TILE_FNS``) in the module being built."""
    kinds = {"i8": ir.IntType(8), "i8*": ir.IntType(8).as_pointer(), "i64": ir.IntType(64)}
    fnty = ir.FunctionType(ir.VoidType(), [kinds[k] for k in _TILE_FNS[name]])
    return cgutils.get_or_insert_function(builder.module, fnty, f"llvm.x86.{name}")


def configure(builder, rows) -> None:
    """Load the tile configuration: palette 1; tiles 0-4 of ``rows`` rows (an i8 value or an int)
    and tile 5 of KQ_TILE rows, all 64 bytes wide."""
    i8, i16, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(64)
    cfg_ty = ir.ArrayType(i8, 64)
    cfg = cgutils.alloca_once(builder, cfg_ty)
    builder.store(ir.Constant(cfg_ty, [1] + [0] * 63), cfg)
    base = builder.bitcast(cfg, i8.as_pointer())
    for t in range(6):
        colsb = builder.bitcast(builder.gep(base, [ir.Constant(i64, 16 + 2 * t)]), i16.as_pointer())
        builder.store(ir.Constant(i16, 64), colsb)
        if t == 5:
            n = ir.Constant(i8, KQ_TILE)
        else:
            n = ir.Constant(i8, rows) if isinstance(rows, int) else rows
        builder.store(n, builder.gep(base, [ir.Constant(i64, 48 + t)]))
    builder.call(tile_fn(builder, "ldtilecfg"), [base])


def _make_dots():
    """acc[r, cb*PB + j] = sum over kq < nkq, e < 4 of hq[r, 4kq + e] * Q[cb, kq, 4j + e], int32,
    for rows r0 <= r < r0 + n in groups of ``rows`` (<= ROWS; n a multiple of it) and every block
    cb; nkq a multiple of KQ_TILE; hq (rows, 4 nkq) uint8, Q (ncb, nkq, 4 PB) int8 (pack_quads),
    acc (rows, >= ncb PB) int32.

    Tiles 0-3 hold a group's sums of the block's 4 x 16 columns, tile 4 the group's rows x 64
    activations, tile 5 the 64 K x 16 columns of weights being multiplied; the configuration is
    loaded once per call and the tiles released at its end."""

    @intrinsic
    def dots(typingctx, Q, hq, r0, n, rows, acc):
        if not (
            isinstance(Q, types.Array)
            and Q.dtype == types.int8
            and Q.ndim == 3
            and isinstance(hq, types.Array)
            and hq.dtype == types.uint8
            and hq.ndim == 2
            and isinstance(acc, types.Array)
            and acc.dtype == types.int32
            and acc.ndim == 2
        ):
            return None
        sig = types.void(Q, hq, types.intp, types.intp, types.intp, acc)

        def codegen(context, builder, signature, args):
            q_arg, h_arg, r0_v, n_v, rows_v, o_arg = args
            q_ary = context.make_array(signature.args[0])(context, builder, q_arg)
            h_ary = context.make_array(signature.args[1])(context, builder, h_arg)
            o_ary = context.make_array(signature.args[5])(context, builder, o_arg)
            i8, i64 = ir.IntType(8), ir.IntType(64)
            i8p = i8.as_pointer()
            load, store = tile_fn(builder, "tileloadd64"), tile_fn(builder, "tilestored64")
            zero, dpbusd = tile_fn(builder, "tilezero"), tile_fn(builder, "tdpbusd")

            def c64(v):
                return ir.Constant(i64, v)

            def tile(t):
                return ir.Constant(i8, t)

            configure(builder, builder.trunc(rows_v, i8))
            ncb = builder.extract_value(q_ary.shape, 0)
            nkq = builder.extract_value(q_ary.shape, 1)
            hstride = builder.extract_value(h_ary.strides, 0)  # bytes per activation row
            ostride = builder.extract_value(o_ary.strides, 0)  # bytes per sum row
            hdata = builder.bitcast(h_ary.data, i8p)
            qdata = builder.bitcast(q_ary.data, i8p)
            odata = builder.bitcast(o_ary.data, i8p)
            block_bytes = builder.mul(nkq, c64(4 * PB))
            with cgutils.for_range(builder, ncb) as blocks:
                cb = blocks.index
                wblock = builder.gep(qdata, [builder.mul(cb, block_bytes)])
                with cgutils.for_range(builder, builder.udiv(n_v, rows_v)) as groups:
                    r = builder.add(r0_v, builder.mul(groups.index, rows_v))
                    for v in range(4):
                        builder.call(zero, [tile(v)])
                    hrows = builder.gep(hdata, [builder.mul(r, hstride)])
                    with cgutils.for_range(builder, builder.udiv(nkq, c64(KQ_TILE))) as chunks:
                        kc = chunks.index
                        builder.call(load, [tile(4), builder.gep(hrows, [builder.mul(kc, c64(4 * KQ_TILE))]), hstride])
                        wrows = builder.gep(wblock, [builder.mul(kc, c64(KQ_TILE * 4 * PB))])
                        for v in range(4):
                            builder.call(load, [tile(5), builder.gep(wrows, [c64(64 * v)]), c64(4 * PB)])
                            builder.call(dpbusd, [tile(v), tile(4), tile(5)])
                    orows = builder.gep(odata, [builder.add(builder.mul(r, ostride), builder.mul(cb, c64(4 * PB)))])
                    for v in range(4):
                        builder.call(store, [tile(v), builder.gep(orows, [c64(64 * v)]), ostride])
            builder.call(tile_fn(builder, "tilerelease"), [])
            return context.get_dummy_value()

        return sig, codegen

    return dots


def _no_dots(Q, hq, r0, n, rows, acc):
    """Never called (``AVAILABLE`` is false): what ``dots`` is where the target has no AMX."""


dots = _make_dots() if AVAILABLE else numba.njit(_no_dots)
