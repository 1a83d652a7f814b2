"""From records to predictions: the model inputs of a record, and batches where one refused item costs that item.

Shared by local ``rnnkit predict`` (``rnnkit.toolkit.predict``) and the Dask workers
(``rnnkit.runtime.partitions`` / ``rnnkit.runtime.dask_worker``), so both engines accept and
refuse exactly the same rows with the same messages.

Pure stdlib; must not import torch.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator, Sequence

from .errors import InputError
from .records import Record

EMPTY = "empty text; remove it or give it some words"
# Task objects name the item they refuse by its position in the call ("text #3 has no tokens",
# "sentence #0 has 300 tokens, more than ..."); other InputErrors (a bad option) concern the whole call.
_ITEM = re.compile(r"^(text|sentence) #(\d+)")


def items_of(
    records: Iterable[Record], text_field: str = "text", tagging: bool = False, pretokenized: bool = False
) -> Iterator[tuple[str, object, str | None]]:
    """``(source, item, error)`` per record: the text (a token list for tagging JSONL ``tokens`` or
    ``pretokenized`` lines), or None and why not.  Classification and seq2seq refuse blank texts
    here; tagging gives an empty sentence an empty result."""
    for source, values, error in records:
        item = None
        if error is None:
            assert values is not None  # a record without an error has its values (records.py)
            item = values["tokens"] if "tokens" in values else values[text_field]
            if tagging and pretokenized and isinstance(item, str):
                item = item.split()
            elif not tagging and not item.strip():
                item, error = None, EMPTY
        yield source, item, error


def run_items(
    run: Callable, items: Sequence, batch_size: int, progress: Callable[[int], None] | None = None
) -> tuple[list, list[tuple[int, str]]]:
    """``run(items, batch_size=, progress=)`` (a task object's ``run_batch``, options bound) over
    ``items`` -> (results, errors): ``results[i]`` is None for an item the model refused and
    ``errors`` lists ``(i, message)`` for those, in order.

    A refusal names its item ("text #3 ..."): that item is set aside, the items before it (already
    checked) run as one call and the items after it are tried again, so k bad items cost about k
    extra calls, not one call per item.  The named item is confirmed alone before it is blamed
    (a method that renumbers its items could name the wrong one); if it runs fine alone, or a
    message names no item, the group falls back to one call per item.  An InputError that names
    no item even for a single item (a bad option) is not about the item and is raised.
    """
    results: list = [None] * len(items)
    errors: dict[int, str] = {}

    def call(group):
        return run([items[i] for i in group], batch_size=batch_size, progress=progress)

    groups = [list(range(len(items)))]
    while groups:
        group = groups.pop()
        if not group:
            continue
        try:
            for i, result in zip(group, call(group)):
                results[i] = result
            continue
        except InputError as exc:
            match = _ITEM.match(str(exc))
            if match is None and len(group) == 1:
                raise
            if len(group) == 1:
                errors[group[0]] = _ITEM.sub(r"\1", str(exc), count=1)
                continue
            k = int(match.group(2)) if match else -1
        if 0 <= k < len(group):
            try:
                results[group[k]] = call([group[k]])[0]
            except InputError as alone:
                if not _ITEM.match(str(alone)):
                    raise
                errors[group[k]] = _ITEM.sub(r"\1", str(alone), count=1)
                groups.extend([group[k + 1 :], group[:k]])  # the prefix first (popped last-in)
                continue
        groups.extend([i] for i in reversed(group) if results[i] is None and i not in errors)
    if progress and errors:
        progress(len(errors))  # refused items count as done for a bar
    return results, sorted(errors.items())
