"""Export users' own torch modules: the public entry points beside ``rnnkit export``.

* ``export_module(module, tokenizer, labels, out)`` for users' own classifier ``nn.Module``s
  (adapted by ``rnnkit.export.module``; their own ``forward`` is the oracle);
* ``export_seq2seq(module, source_tokenizer, target_tokenizer, out)`` for users' own ``Seq2Seq``.

Both build the task's ``Exportable`` and run the one pipeline (``rnnkit.export.pipeline.export``:
build -> check -> write -> validate -> quantize -> dev gate -> commit).  Checkpoints written by
``rnnkit train`` are exported by ``rnnkit.toolkit.export_checkpoint`` (the CLI's ``rnnkit export``),
which reads them and calls the same pipeline.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

from ..runtime.errors import InputError
from ..runtime.tokenizer import WordTokenizer
from .forms import DEFAULT_GRAPH_FORM
from .oracle import torch_forward
from .pipeline import DEFAULT_MAX_LENGTH as DEFAULT_MAX_LENGTH
from .pipeline import DevSet as DevSet
from .pipeline import export
from .pipeline import session_forward as session_forward
from .validate import ParityReport, output_space, outputs, parity_feeds


def export_module(
    module,
    tokenizer: WordTokenizer,
    labels: Sequence[str],
    out: str | os.PathLike,
    pooling: str = "last",
    forward: Callable | None = None,
    int8: bool = False,
    dev: DevSet | None = None,
    min_agreement: float = 0.99,
    max_length: int = DEFAULT_MAX_LENGTH,
    log: Callable[[str], None] = print,
    flags: dict[str, str] | None = None,
    graph_form: str = DEFAULT_GRAPH_FORM,
    int8_format: str | None = None,
    validate_on: str | list[str] | None = None,
) -> dict:
    """Export a user's own trained classifier ``nn.Module`` (Embedding -> RNN/LSTM/GRU -> Linear and glue).

    ``forward(module, input_ids, lengths) -> scores`` tells validation how to call it
    (default ``module(input_ids, lengths)``); the written graph must match it on ragged
    padded batches up to ``max_length`` tokens or the export fails.  ``graph_form``, ``int8_format``
    and ``validate_on`` as in ``rnnkit.export.pipeline.export`` (``rnnkit.export.forms``).  The forward may return
    logits, probabilities or log-probabilities (detected, logged and recorded in the manifest's
    validation; the last two are compared as probabilities, since the graph writes logits).
    """
    from .module import config_from_module, module_path, one_direction_hint
    from .task_classify import classifier_exportable

    config, weights = config_from_module(module, pooling=pooling, padding_idx=0)
    if config.vocab_size != tokenizer.vocab_size:
        raise InputError(
            f"the module's embedding has {config.vocab_size} rows but the tokenizer has "
            f"{tokenizer.vocab_size} entries; pass the tokenizer the model was trained with"
        )
    if config.num_labels != len(labels):
        raise InputError(f"the module's head has {config.num_labels} outputs but {len(labels)} labels were given")
    oracle = torch_forward(module, forward, user=True)
    space = output_space(outputs(oracle(next(parity_feeds(config.vocab_size, batch_sizes=(8,), lengths=(33,)))))[0])
    log(
        f"{module_path(module)}.forward returns {space.replace('_', '-')}"
        + ("" if space == "logits" else "; validating on probabilities (softmax of the graph's logits)")
    )

    def explain(report: ParityReport) -> list[str] | None:
        if not config.bidirectional or (report.diagnosis and "padding" in report.diagnosis[0]):
            return None
        hint = one_direction_hint(module, forward, config, weights, space)
        return [hint] if hint else None

    item = classifier_exportable(config, weights, tokenizer, list(labels), oracle, space, explain)
    return export(
        item,
        out,
        int8=int8,
        dev=dev,
        min_agreement=min_agreement,
        max_length=max_length,
        log=log,
        source={"module": module_path(module)},
        flags=flags,
        graph_form=graph_form,
        int8_format=int8_format,
        validate_on=validate_on,
    )


def export_seq2seq(
    module,
    source_tokenizer,
    target_tokenizer,
    out: str | os.PathLike,
    int8: bool = False,
    dev: DevSet | None = None,
    min_agreement: float = 0.99,
    max_length: int = DEFAULT_MAX_LENGTH,
    log: Callable[[str], None] = print,
    flags: dict[str, str] | None = None,
    graph_form: str = DEFAULT_GRAPH_FORM,
    int8_format: str | None = None,
    validate_on: str | list[str] | None = None,
) -> dict:
    """Export a user's trained ``rnnkit.export.nets.Seq2Seq`` (its ``config`` says the shape) with
    the tokenizers it was trained with (``WordTokenizer`` or ``CharTokenizer``; the target's ids
    must put ``<s>``/``</s>`` at the config's ``bos_id``/``eos_id``).

    ``dev``: source texts with reference outputs (``labels``, optional) for the dev metrics; with
    ``int8``, the export fails when int8 picks another next token than fp32 (along fp32's greedy
    outputs) on more than ``1 - min_agreement`` of the dev tokens."""
    from . import task_seq2seq

    item = task_seq2seq.from_module(module, source_tokenizer, target_tokenizer)
    return export(
        item,
        out,
        int8=int8,
        dev=dev,
        min_agreement=min_agreement,
        max_length=max_length,
        log=log,
        source={"module": type(module).__name__},
        flags=flags,
        graph_form=graph_form,
        int8_format=int8_format,
        validate_on=validate_on,
    )
