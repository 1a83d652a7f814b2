"""The numba LM step with and without its fused step, and its kernels with no Python around them.

For the word LM of issue 3 (LSTM 1x256, embed 256, vocabulary 10,000, random weights, B=1, state
carried) it times, side by side (``common.timeit_blocks``):

* the numpy GEMV floor (issue 3's yardstick, as in ``lm_step.py``);
* ``State.feed_id`` on the numba backend as shipped: the session runs rnnkit's LM step graph as one
  compiled call (``runtime/numba_backend/fused_lm.py``);
* ``State.feed_id`` with the fused step switched off: the generated plan, one call per node
  (Gather -> Transpose -> LSTM -> Transpose -> Reshape -> MatMul + bias -> Where);
* an experiment, not a runtime path: one ``@njit`` function doing the same step with the bundle's
  packed weights and rnnkit's kernels (embedding row, input projection, recurrent mat-vec, LSTM gate
  math, head) into preallocated outputs, called directly: what is left when no Python and no
  allocation surrounds the kernels.  Its logits are checked against ``feed_id``'s first.

Repeated ``--repeats`` times in one process (the ratio moves between runs on a shared machine).

    python benchmarks/lm_step_fused.py
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (pins 1 thread before numpy/torch load)
import numpy as np

from common import WORK, machine, stats_ms, table, timeit_blocks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    import onnx

    import rnnkit.runtime.numba_backend.config  # noqa: F401  (rnnkit's numba settings before numba loads)
    from numba import njit
    from onnx import numpy_helper

    from lm_step import gemv_floor, random_checkpoint
    from rnnkit.export.exporter import DevSet, export_checkpoint
    from rnnkit.runtime import load
    from rnnkit.runtime.numba_backend.rnn import JIT, NO_CLIP, _k_padded, _lstm_cell, _matvec, _project_any
    from rnnkit.toolkit.train_lm import load_lm_checkpoint

    ckpt = random_checkpoint("word", 10000, "lstm", 1, 256, 256)
    words = " ".join(f"w{i}" for i in range(2000))
    bundle = export_checkpoint(ckpt, WORK / "lm-fused.bundle", int8=False, min_agreement=0.0,
                               dev=DevSet([words], None, "benchmark text"), log=lambda m: None)["path"]
    model = load(bundle, backend="numba", threads=1)
    model.warmup()
    plan = {st.key[1]: st for st in model.session._plan}
    if [st.key[1] for st in model.session._plan][-7:] != ["Gather", "Transpose", "LSTM", "Transpose", "Reshape",
                                                           "MatMul", "Where"]:
        raise SystemExit("the LM step graph is not the one this experiment reproduces; update it")
    if model.session._fused is None:
        raise SystemExit("the numba session did not fuse this LM step graph (runtime/numba_backend/fused_lm.py)")
    packed, head, table_e = plan["LSTM"].op._packed, plan["MatMul"].op, plan["Gather"].template[0]
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(model.bundle.model_path())).graph.initializer}
    head_bias = weights["head.bias"]

    ahead = head.ahead  # the head's software prefetch, as the session chose it (matvec.prefetched)

    @njit(**JIT)
    def kernels_only(token, E, Wb, ws, wz, bias, T1, rs, rz, P, rbh, h, c, Hq, hscale, hzp, hbias, logits):
        H = h.shape[0]
        x = np.empty((1, E.shape[1]), np.float32)
        for k in range(E.shape[1]):
            x[0, k] = E[token, k]
        xw = np.empty((1, ws.shape[0]), np.float32)
        _project_any(x, Wb, ws, wz, bias, xw)
        v = np.zeros((1, _k_padded(T1[0])), np.float32)
        for k in range(H):
            v[0, k] = h[k]
        g = np.empty((1, rs.shape[1]), np.float32)
        _matvec(v, 1, T1[0], rs[0], rz[0], g, 0, rs.shape[1], False)
        _lstm_cell(xw[0], g[0], h, c, P[0], rbh[0], NO_CLIP, 0)
        _project_any(h.reshape(1, H), Hq, hscale, hzp, hbias, logits, ahead)

    h, c = np.zeros(256, np.float32), np.zeros(256, np.float32)
    logits = np.empty((1, 10000), np.float32)

    def kernels_step():
        kernels_only(5, table_e, packed.Wb, packed.ws, packed.wz, packed.bias, packed.T1, packed.rs, packed.rz,
                     packed.P, packed.rbh, h, c, head.q, head.scale, head.zp, head_bias, logits)

    state = model.spawn_state()
    for _ in range(3):  # the same three tokens from the zero state: the same logits
        kernels_step()
        expected = state.feed_id(5)
    np.testing.assert_allclose(logits[0], expected, rtol=1e-5, atol=1e-5)

    plan_state, session = model.spawn_state(), model.session

    def plan_step():  # the same call with the session's fused step switched off
        fused_lm, session._fused = session._fused, None
        try:
            return plan_state.feed_id(5)
        finally:
            session._fused = fused_lm

    runs = {"numpy GEMV floor": gemv_floor(load_lm_checkpoint(ckpt).model),
            "numba State.feed_id (fused step, as shipped)": lambda: state.feed_id(5),
            "numba State.feed_id, fused step off (the plan)": plan_step,
            "kernels in one call, nothing around (experiment)": kernels_step}
    rows = []
    for rep in range(args.repeats):
        times = timeit_blocks(runs, rounds=40, block=50)
        base = stats_ms(times["numpy GEMV floor"])[0]
        rows += [[rep + 1, name, *stats_ms(t), stats_ms(t)[0] / base] for name, t in times.items()]
    print(f"LM step (LSTM 1x256, embed 256, vocab 10000), B=1 -- {machine()}")
    print(table(["run", "step", "median ms", "p99 ms", "x floor"], rows))


if __name__ == "__main__":
    main()
