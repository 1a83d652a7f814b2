"""The one record reader (runtime/records.py), bad records in `rnnkit predict`, run_items, atomic_writer.

Property tests (Hypothesis, derandomized so every run tries the same examples): whatever the texts
-- quotes at either end, tabs, CR, U+2028, \\x0b, a BOM, NUL, emoji, long lines -- a file written
by the format's standard writer reads back exactly; the same bytes on stdin give the same rows;
garbage lines cost exactly themselves (rows in = good + bad) and never raise.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnkit.runtime.batch import run_items
from rnnkit.runtime.errors import InputError
from rnnkit.runtime.io import atomic_writer
from rnnkit.runtime.records import read_records

PROPERTY = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# pieces that broke (or could break) the old readers, mixed with arbitrary characters
PIECES = [
    '"',
    '""',
    "'",
    ",",
    "\t",
    "\r",
    "\r\n",
    "\n",
    "\u2028",
    "\u2029",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x85",
    "\ufeff",
    "\x00",
    "\U0001f600",
    " ",
    "\\",
    "{",
    "}",
]
chars = st.characters(exclude_categories=("Cs",))  # any code point but a surrogate
piece = st.one_of(st.sampled_from(PIECES), st.text(chars, max_size=6))
short_text = st.lists(piece, max_size=10).map("".join)
long_text = st.builds(lambda c, n: c * n, st.sampled_from(['"', "a", "\t", "é"]), st.integers(1000, 30_000))
text = st.one_of(short_text, short_text, short_text, long_text)


def records(data: bytes, fmt: str, fields=("text",), **kw):
    return list(read_records(io.BytesIO(data), fields, format=fmt, name="in", **kw))


def line_numbers(rows) -> list[int]:
    return [int(r.source.rsplit(":", 1)[1]) for r in rows]


def non_blank_lines(data: bytes, skip: int = 0) -> int:
    return sum(1 for line in data.split(b"\n")[skip:] if line.strip(b" \t\r"))


# -- round trips -----------------------------------------------------------------------------
@pytest.mark.slow
@PROPERTY
@given(texts=st.lists(text, max_size=12), bom=st.booleans(), ending=st.sampled_from(["\r\n", "\n"]))
def test_csv_written_by_csv_writer_reads_back_exactly(texts, bom, ending):
    out = io.StringIO(newline="")
    # with "\n" line ends csv.writer leaves a field with a \r unquoted, and a \r at its end reads as a
    # CRLF line end (by csv.reader too): QUOTE_ALL there, the default (\r\n, minimal quoting) otherwise
    writer = csv.writer(out, lineterminator=ending, quoting=csv.QUOTE_ALL if ending == "\n" else csv.QUOTE_MINIMAL)
    writer.writerow(["id", "text"])
    starts = []
    for i, t in enumerate(texts):
        starts.append(out.getvalue().count("\n") + 1)  # the physical line the row starts on
        writer.writerow([i, t])
    data = ("\ufeff" if bom else "").encode() + out.getvalue().encode("utf-8")
    rows = records(data, "csv", ("id", "text"))
    assert [r.error for r in rows] == [None] * len(texts)
    assert [r.values["text"] for r in rows] == texts
    assert [r.values["id"] for r in rows] == [str(i) for i in range(len(texts))]
    assert line_numbers(rows) == starts


@pytest.mark.slow
@PROPERTY
@given(texts=st.lists(text, max_size=12), ascii_only=st.booleans(), bom=st.booleans())
def test_jsonl_written_by_json_dumps_reads_back_exactly(texts, ascii_only, bom):
    data = ("\ufeff" if bom else "").encode() + "".join(
        json.dumps({"text": t, "n": i}, ensure_ascii=ascii_only) + "\n" for i, t in enumerate(texts)
    ).encode()
    rows = records(data, "jsonl")
    assert [r.values["text"] for r in rows] == texts and line_numbers(rows) == list(range(1, len(texts) + 1))


def _line_safe(t: str, tabs: bool) -> str:
    # TSV/txt cannot hold a newline (nor TSV a tab); a \r before the newline is the CRLF ending
    t = t.replace("\n", " ")
    if not tabs:
        t = t.replace("\t", " ")
    return t.rstrip("\r")


@pytest.mark.slow
@PROPERTY
@given(texts=st.lists(text, max_size=12), bom=st.booleans(), ending=st.sampled_from(["\r\n", "\n"]))
def test_tsv_reads_back_exactly(texts, bom, ending):
    texts = [_line_safe(t, tabs=False) for t in texts]
    body = "text\tlabel" + ending + "".join(f"{t}\t{i % 2}{ending}" for i, t in enumerate(texts))
    data = ("\ufeff" if bom else "").encode() + body.encode()
    rows = records(data, "tsv", ("text", "label"))
    assert [r.values["text"] for r in rows] == texts
    assert line_numbers(rows) == list(range(2, len(texts) + 2))


@PROPERTY
@given(texts=st.lists(text, max_size=12), bom=st.booleans(), ending=st.sampled_from(["\r\n", "\n"]))
def test_txt_reads_back_exactly_and_stdin_equals_file(tmp_path_factory, texts, bom, ending):
    texts = [t for t in (_line_safe(t, tabs=True) for t in texts) if t.strip(" \t\r")]  # blank lines are skipped
    # a file starting with U+FEFF is read as starting with a BOM: a writer of such a text adds one
    bom = bom or bool(texts and texts[0].startswith("\ufeff"))
    data = ("\ufeff" if bom else "").encode() + "".join(t + ending for t in texts).encode()
    rows = records(data, "txt")
    assert [r.values["text"] for r in rows] == texts
    path = tmp_path_factory.mktemp("txt") / "in.txt"
    path.write_bytes(data)
    from_file = list(read_records(path, ("text",)))
    from_stdin = list(read_records(io.BytesIO(data), ("text",), name=str(path)))  # a stream: plain text
    assert from_stdin == from_file and [r.values for r in from_file] == [r.values for r in rows]


# -- garbage ---------------------------------------------------------------------------------
garbage = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"\xff\xfe bad",
            b"caf\xe9",
            b'{"text": ',
            b'{"text": NaN}',
            b'{"text": "\\ud800"}',
            b'{"text": true}',
            b"[" * 5000,
            b"\t\t",
            b'"unclosed',
            b'a"b',
            b"\r",
            b"   ",
            b"\x00\x00",
            b"\xed\xa0\x80",
        ]
    ),
)


def _mixed(draw_lines, good_lines):
    lines = list(good_lines)
    for position, junk in draw_lines:
        lines.insert(position % (len(lines) + 1), junk)
    return b"\n".join(lines) + b"\n"


@pytest.mark.slow
@PROPERTY
@given(
    fmt=st.sampled_from(["txt", "tsv", "jsonl"]),
    texts=st.lists(short_text, max_size=8),
    junk=st.lists(st.tuples(st.integers(0, 100), garbage), max_size=8),
)
def test_garbage_lines_cost_exactly_themselves(fmt, texts, junk):
    texts = [_line_safe(t, tabs=False) for t in texts]
    if fmt == "jsonl":
        good = [json.dumps({"text": t}).encode() for t in texts]
    elif fmt == "tsv":
        good = [f"{t}\t1".encode() for t in texts]
    else:
        good = [b"first line"] + [t.encode() for t in texts]  # line 1 stays clean (BOM rule)
    data = _mixed(junk, good)
    header = b"text\tlabel\n" if fmt == "tsv" else b""
    rows = records(header + data, fmt, ("text", "label") if fmt == "tsv" else ("text",))
    assert len(rows) == non_blank_lines(data)  # rows in = good + bad
    assert line_numbers(rows) == sorted(set(line_numbers(rows)))
    assert all((r.values is None) != (r.error is None) for r in rows)
    for r in rows:
        if r.values:
            json.dumps(r.values, ensure_ascii=False).encode("utf-8")  # whatever is good can be written


@pytest.mark.slow
@PROPERTY
@given(texts=st.lists(short_text, max_size=8), junk=st.lists(st.tuples(st.integers(0, 100), garbage), max_size=8))
def test_csv_garbage_without_quotes_costs_exactly_itself(texts, junk):
    pieces = []  # (row index or None for junk, bytes ending in \n)
    for i, t in enumerate(texts):
        out = io.StringIO(newline="")
        csv.writer(out).writerow([i, t])
        pieces.append((i, out.getvalue().encode()))
    for position, j in junk:  # between rows, never inside a multi-line row
        pieces.insert(position % (len(pieces) + 1), (None, j.replace(b'"', b"'") + b"\n"))
    data, starts = b"id,text\n", {}
    for i, piece in pieces:
        if i is not None:
            starts[data.count(b"\n") + 1] = texts[i]
        data += piece
    rows = records(data, "csv", ("id", "text"))
    assert len(rows) == len(texts) + sum(non_blank_lines(j) for i, j in pieces if i is None)
    by_line = {line: r for line, r in zip(line_numbers(rows), rows)}
    assert {line: by_line[line].values["text"] for line in starts} == starts


@PROPERTY
@given(data=st.binary(max_size=300), fmt=st.sampled_from(["csv", "tsv", "jsonl", "txt"]))
def test_any_bytes_never_raise_past_the_header(data, fmt):
    header = {"csv": b"text\n", "tsv": b"text\n", "jsonl": b"", "txt": b""}[fmt]
    rows = records(header + data, fmt)
    assert line_numbers(rows) == sorted(set(line_numbers(rows)))
    assert len(rows) <= non_blank_lines(header + data)


# -- single cases ----------------------------------------------------------------------------
def test_imdb_style_tsv_quotes_are_text():
    lines = [
        '"A masterpiece" says nobody.\t0',
        '"Unclosed quote at the start.\t1',
        "Plain line.\t1",
        'Mid "quote" here.\t0',
        '"\t1',
    ]
    rows = records(("sentence\tlabel\n" + "\n".join(lines) + "\n").encode(), "tsv", ("sentence", "label"))
    assert [r.values["sentence"] for r in rows] == [line.split("\t")[0] for line in lines]


def test_csv_malformed_records_cost_only_themselves():
    data = (
        b'text,label\n"never closed,a\nnext,b\n"ok ""quoted""",c\n"x"y,d\nlast,e\n'
        b'"multi\nline",f\n"unterminated at the end'
    )
    rows = records(data, "csv", ("text", "label"))
    assert [(line_numbers([r])[0], r.values and r.values["text"], (r.error or "")[:30]) for r in rows] == [
        (2, None, "the quote opened at line 2, co"),
        (3, "next", ""),
        (4, 'ok "quoted"', ""),
        (5, None, "text after the closing quote a"),
        (6, "last", ""),
        (7, "multi\nline", ""),
        (9, None, "the quote opened at line 9, co"),
    ]


def test_jsonl_bad_records_name_line_and_type():
    lines = [
        b'{"text": "ok"}',
        b'{"text": true}',
        b'{"text": 5}',
        b'{"text": null}',
        b'{"text": ["a"]}',
        b'{"text": NaN}',
        b'{"text": -Infinity}',
        b"[" * 100_000,
        b'{"text": "\\ud800 x"}',
        b'"just a string"',
        b'{"text": "a", "text": "b"}',
        b'{"txt": "a"}',
        b"\xff",
    ]
    rows = records(b"\n".join(lines), "jsonl", hint={"text": "--text-field", "encoding": "--encoding"})
    errors = [r.error for r in rows]
    assert errors[0] is None and len(rows) == len(lines)
    assert errors[1] == "'text' is a boolean (true); expected a string"
    assert errors[2] == "'text' is a number (5); expected a string" and errors[3] == "'text' is null; expected a string"
    assert errors[4] == "'text' is an array; expected a string"
    assert "NaN is not a JSON value" in errors[5] and "-Infinity is not a JSON value" in errors[6]
    assert "nested too deeply" in errors[7]
    assert errors[8] == "'text' contains a lone surrogate U+D800 at character 1; not valid Unicode"
    assert errors[9] == "expected a JSON object per line, got a string"
    assert "key 'text' given twice" in errors[10]
    assert errors[11] == "object has no key 'text'; available keys: 'txt' -- choose the key with --text-field"
    assert errors[12].startswith("invalid utf-8 at byte 0 of the line") and "with --encoding" in errors[12]


def test_whole_file_problems_raise_at_once(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_records(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="is a directory"):
        read_records(tmp_path)
    with pytest.raises(InputError, match="not ASCII-compatible"):
        read_records(io.BytesIO(b""), encoding="utf-16")
    with pytest.raises(InputError, match="unknown encoding 'utf-9'"):
        read_records(io.BytesIO(b""), encoding="utf-9")
    with pytest.raises(
        InputError,
        match=r"in:1: header has no column 'text'; available columns: 'txt', 'label'"
        r" -- the first row must be a header; choose the column with text_field=",
    ):
        records(b"\xef\xbb\xbftxt,label\na,b\n", "csv", hint={"text": "text_field="})
    with pytest.raises(InputError, match=r"in:2: the header row is unreadable: invalid utf-8"):
        records(b"\n\xfftext\tlabel\na\tb\n", "tsv")
    with pytest.raises(InputError, match="the file is empty"):
        records(b"\n \n", "csv")
    with pytest.raises(InputError, match="header names column 'text' 2 times"):
        records(b"text\ttext\na\tb\n", "tsv")


def test_bom_is_not_part_of_the_header():
    rows = records(b"\xef\xbb\xbftext,label\nhi,1\n", "csv", ("text", "label"))
    assert rows[0].values == {"text": "hi", "label": "1"}


# -- run_items -------------------------------------------------------------------------------
def fake_model(renumber: int = 0):
    """Refuses items that are "" (as a model does, by its position in the call, shifted by ``renumber``)."""
    calls = []

    def run(items, batch_size, progress=None):
        calls.append(len(items))
        for i, item in enumerate(items):
            if item == "":
                raise InputError(f"text #{max(0, i + renumber)} ('') has no tokens")
            if item == "option":
                raise InputError("batch_size must be >= 1, got 0")
        return [item.upper() for item in items]

    return run, calls


def test_run_items_sets_bad_items_aside_in_few_calls():
    items = ["a", "", "b", "c", "", "d"] * 50
    run, calls = fake_model()
    results, errors = run_items(run, items, 8)
    assert results == [i.upper() if i else None for i in items]
    assert [p for p, _ in errors] == [i for i, item in enumerate(items) if not item]
    assert errors[0][1] == "text ('') has no tokens"
    assert len(calls) < 4 * 100 + 2  # about 3 calls per bad item, not one per item


def test_run_items_does_not_trust_a_wrong_item_number():
    items = ["a", "b", "", "c"]
    run, _ = fake_model(renumber=-1)  # names the item before the bad one
    results, errors = run_items(run, items, 8)
    assert results == ["A", "B", None, "C"] and [p for p, _ in errors] == [2]


def test_run_items_raises_what_is_not_about_an_item():
    run, _ = fake_model()
    with pytest.raises(InputError, match="batch_size"):
        run_items(run, ["a", "option"], 8)


# -- atomic_writer ---------------------------------------------------------------------------
def _host():
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())


def test_atomic_writer_removes_partials_of_dead_processes_only(tmp_path):
    target = tmp_path / "out.jsonl"
    dead = tmp_path / f".out.jsonl.{_host()}-{2**22 + 12345}.abcd.partial"  # above pid_max: never alive
    alive = tmp_path / f".out.jsonl.{_host()}-{os.getpid()}.ef01.partial"
    other_host = tmp_path / ".out.jsonl.elsewhere-1.0000.partial"
    other_target = tmp_path / f".other.jsonl.{_host()}-{2**22 + 12345}.abcd.partial"
    for p in (dead, alive, other_host, other_target):
        p.write_text("half")
    with atomic_writer(target) as handle:
        handle.write("done\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out.jsonl", alive.name, other_host.name, other_target.name]
    )


def test_atomic_writer_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_writer(tmp_path / "a.txt") as handle:
            handle.write("x")
        os.umask(0o077)
        with atomic_writer(tmp_path / "b.txt") as handle:
            handle.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


# -- rnnkit predict --------------------------------------------------------------------------
def imdb_like(n: int = 1000, seed: int = 3) -> list[tuple[str, int]]:
    """UCI imdb_labelled.txt-style sentences: many start with a quote, some never close it."""
    from conftest import synthetic_texts

    texts, labels = synthetic_texts(n, seed)
    shapes = ['"{}" said nobody.', '"{}', '{} "really".', "{}", "'{}'", '""{}""', '{}"']
    return [(shapes[i % len(shapes)].format(t), int(l == "pos")) for i, (t, l) in enumerate(zip(texts, labels))]


def write_imdb(path, rows) -> None:
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in rows), encoding="utf-8")


def cli(*args, input=None):
    from rnnkit.toolkit.cli import cli as command

    return CliRunner().invoke(command, [str(a) for a in args], input=input)


def test_imdb_style_tsv_and_stdin_give_every_row(gru_bundle, tmp_path):
    rows = imdb_like()
    src, out = tmp_path / "imdb.tsv", tmp_path / "out.jsonl"
    write_imdb(src, rows)
    result = cli("predict", gru_bundle, "--input", src, "--text-field", "sentence", "--output", out)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in lines] == [s for s, _ in rows] and len(lines) == 1000
    assert "1000 rows in, 1000 predictions, 0 errors" in result.output
    # the same sentences on stdin (plain text) and as a .txt file: the same bytes, the same rows
    data = "".join(s + "\n" for s, _ in rows).encode()
    txt = tmp_path / "imdb.txt"
    txt.write_bytes(data)
    from_stdin = cli("predict", gru_bundle, input=data)
    from_file = cli("predict", gru_bundle, "--input", txt)
    assert from_stdin.exit_code == 0 and from_file.exit_code == 0, from_stdin.output
    assert from_stdin.stdout == from_file.stdout and len(from_stdin.stdout.splitlines()) == 1000
    assert [json.loads(line)["label"] for line in from_stdin.stdout.splitlines()] == [r["label"] for r in lines]


def test_stdin_splits_on_newline_only(gru_bundle):
    result = cli("predict", gru_bundle, input="good\rfilm\nbad\u2028plot\x0bhere\x1cnow\n".encode())
    assert result.exit_code == 0, result.output
    # (JSON lines: one per \n -- str.splitlines() would also cut at the U+2028 the output keeps as is)
    assert [json.loads(line)["text"] for line in result.stdout.split("\n")[:-1]] == [
        "good\rfilm",
        "bad\u2028plot\x0bhere\x1cnow",
    ]


def poison_jsonl(max_length: int) -> tuple[bytes, int, int]:
    """(JSONL bytes, good rows, bad rows): a bad record of every kind between good ones."""
    bad = [
        b'{"text": "bad \xff bytes"}',
        b'{"text": "good", oops}',
        b"[" * 100_000,
        b'{"text": "lone \\ud800"}',
        b'{"text": true}',
        b'{"text": 12}',
        b'{"text": null}',
        b'{"text": NaN}',
        b'{"text": ""}',
        b'{"text": "   "}',
        json.dumps({"text": "film " * (max_length + 5)}).encode(),
        b'{"review": "x"}',
    ]
    good = [json.dumps({"text": t}).encode() for t in ("a good film", "dull plot", "great acting", "weak story")]
    lines = [line for pair in zip(good * 3, bad) for line in pair]
    return b"\n".join(lines) + b"\n\n", len(bad), len(bad)


def max_length_of(bundle) -> int:
    return json.loads((bundle / "manifest.json").read_text())["graph"]["max_length"]


def test_local_predict_reports_bad_records_and_goes_on(gru_bundle, tmp_path):
    data, n_good, n_bad = poison_jsonl(max_length_of(gru_bundle))
    src, out, errors = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    src.write_bytes(data)
    result = cli("predict", gru_bundle, "--input", src, "--output", out, "--errors", errors)
    assert result.exit_code == 0, result.output
    assert f"{n_good + n_bad} rows in, {n_good} predictions, {n_bad} errors ({errors})" in result.output
    assert len(out.read_text(encoding="utf-8").splitlines()) == n_good
    bad = [json.loads(line) for line in errors.read_text(encoding="utf-8").splitlines()]
    assert [e["source"] for e in bad] == [f"{src}:{2 * i + 2}" for i in range(n_bad)]
    reasons = [e["error"] for e in bad]
    assert reasons[0].startswith("invalid utf-8 at byte 14") and reasons[1].startswith("invalid JSON at column")
    assert "nested too deeply" in reasons[2] and "lone surrogate U+D800" in reasons[3]
    assert reasons[4:8] == [
        "'text' is a boolean (true); expected a string",
        "'text' is a number (12); expected a string",
        "'text' is null; expected a string",
        "invalid JSON: NaN is not a JSON value (JSON has no NaN or Infinity)",
    ]
    assert reasons[8].startswith("empty text") and reasons[9].startswith("empty text")
    assert reasons[10].startswith(
        f"text has {max_length_of(gru_bundle) + 5} tokens, more than this bundle's max_length"
    )
    assert reasons[11] == "object has no key 'text'; available keys: 'review' -- choose the key with --text-field"
    # without --errors: one line each on stderr; --truncate: the long text is predicted
    result = cli("predict", gru_bundle, "--input", src, "--truncate")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("bad record ") == n_bad - 1 and "max_length" not in result.stderr
    assert any(json.loads(line).get("truncated") == 5 for line in result.stdout.splitlines())
    # --strict: exit 1 at the first bad record, nothing written
    result = cli("predict", gru_bundle, "--input", src, "--output", tmp_path / "strict.jsonl", "--strict")
    assert result.exit_code == 1 and f"Error: {src}:2: invalid utf-8" in result.output
    assert not (tmp_path / "strict.jsonl").exists()


def test_every_record_bad_fails(gru_bundle, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"review": "good"}\n{"review": "bad"}\n')
    result = cli("predict", gru_bundle, "--input", src)
    assert result.exit_code == 1
    assert "Error: nothing predicted: all 2 records are bad (first: " in result.output
    assert "2 rows in, 0 predictions, 2 errors" in result.output


def test_api_path_names_api_arguments(gru_bundle, tmp_path):
    from rnnkit.runtime.partitions import expand_inputs, iter_rows

    src = tmp_path / "in.csv"
    src.write_text("review\nfine\n")
    with pytest.raises(InputError, match="choose the column with text_field="):
        list(iter_rows(expand_inputs([str(src)]), hint={"text": "text_field="}))


@PROPERTY
@given(line=st.lists(st.sampled_from(['"', '""', ",", "a", "\r", " ", "é"]), max_size=14).map("".join))
def test_csv_fast_path_agrees_with_the_parser(line):
    from collections import deque

    from rnnkit.runtime.records import _csv_line, _csv_record

    fast = _csv_line(line)
    cells, used, problem = _csv_record(deque([(1, line, None)]), lambda: False)
    if fast is not None:
        assert (fast, used, problem) == (cells, 1, None)
    elif problem is None:  # the parser took it: a quote inside an unquoted field
        assert used == 1 and '"' in line
