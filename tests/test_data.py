"""Data reading (CSV, TSV, JSONL, one-file-per-label folder), its errors, the dev split, metrics."""

import json
import random

import numpy as np
import pytest

from rnnkit.runtime.errors import InputError
from rnnkit.toolkit import metrics
from rnnkit.toolkit.data import Example, check_labels, folder_label, read_examples, split_dev


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


# -- formats ----------------------------------------------------------------------------


def test_csv_with_quotes_and_extra_columns(tmp_path):
    f = write(tmp_path / "d.csv", 'id,text,label\n1,"good, really",pos\n2,"a ""bad"" one",neg\n')
    ex = read_examples(f)
    assert [(e.text, e.label) for e in ex] == [("good, really", "pos"), ('a "bad" one', "neg")]
    assert ex[1].source == f"{f}:3"


def test_csv_multiline_field_keeps_start_line(tmp_path):
    f = write(tmp_path / "d.csv", 'text,label\n"two\nlines",pos\nnext,neg\n')
    ex = read_examples(f)
    assert ex[0].text == "two\nlines" and ex[0].source.endswith(":2") and ex[1].source.endswith(":4")


def test_tsv_custom_fields_and_bom(tmp_path):
    f = write(tmp_path / "d.tsv", "\ufeffsentence\tpolarity\nnice\t1\nbad\t0\n")
    ex = read_examples(f, text_field="sentence", label_field="polarity")
    assert [(e.text, e.label) for e in ex] == [("nice", "1"), ("bad", "0")]


def test_jsonl_and_json_extension(tmp_path):
    lines = [{"text": "good", "label": "pos"}, {"text": "bad", "label": 0}]
    for name in ("d.jsonl", "d.json"):
        f = write(tmp_path / name, "\n".join(json.dumps(x) for x in lines) + "\n\n")
        ex = read_examples(f)
        assert [(e.text, e.label) for e in ex] == [("good", "pos"), ("bad", "0")]


def test_folder_one_file_per_label(tmp_path):
    write(tmp_path / "rt-polarity.pos", "great fun\nsuperb\n")
    write(tmp_path / "rt-polarity.neg", "dull\r\n")
    write(tmp_path / "README.md", "# not data\n")
    write(tmp_path / ".hidden", "x\n")
    ex = read_examples(tmp_path)
    assert [(e.text, e.label) for e in ex] == [("dull", "neg"), ("great fun", "pos"), ("superb", "pos")]
    assert ex[2].source == f"{tmp_path / 'rt-polarity.pos'}:2"


@pytest.mark.parametrize("name, label", [("rt-polarity.pos", "pos"), ("neg", "neg"), ("pos.txt", "pos")])
def test_folder_label(name, label):
    assert folder_label(name) == label


def test_latin1_with_explicit_encoding(tmp_path):
    f = write(tmp_path / "d.csv", "text,label\ncafé crème,pos\n", encoding="latin-1")
    assert read_examples(f, encoding="latin-1")[0].text == "café crème"


# -- errors -----------------------------------------------------------------------------


def err(path, **kw):
    with pytest.raises(InputError) as e:
        read_examples(path, **kw)
    return str(e.value)


def test_missing_path(tmp_path):
    msg = err(tmp_path / "nope.csv")
    assert f"{tmp_path / 'nope.csv'}: no such file or folder" in msg


def test_unknown_extension(tmp_path):
    msg = err(write(tmp_path / "d.xlsx", "x"))
    assert "d.xlsx: unknown data format '.xlsx'" in msg and ".jsonl" in msg


def test_unknown_encoding(tmp_path):
    assert "unknown encoding 'utf-9'" in err(write(tmp_path / "d.csv", "text,label\n"), encoding="utf-9")


@pytest.mark.parametrize("name, content", [("d.csv", ""), ("d.jsonl", "\n  \n")])
def test_empty_file(tmp_path, name, content):
    assert f"{name}: the file is empty" in err(write(tmp_path / name, content))


def test_header_only_csv(tmp_path):
    assert "d.csv: the file has a header but no examples" in err(write(tmp_path / "d.csv", "text,label\n"))


def test_empty_folder(tmp_path):
    write(tmp_path / "README.md", "docs only")
    assert f"{tmp_path}: the folder has no data files" in err(tmp_path)


def test_missing_column_lists_available(tmp_path):
    f = write(tmp_path / "d.csv", "sentence,label\nhi,pos\n")
    msg = err(f)
    assert f"{f}:1: header has no column 'text'" in msg
    assert "available columns: 'sentence', 'label'" in msg and "--text-field" in msg


def test_missing_jsonl_key_lists_available(tmp_path):
    f = write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "y": 1}\n')
    msg = err(f)
    assert f"{f}:2: object has no key 'label'; available keys: 'text', 'y'" in msg


def test_invalid_utf8_names_file_line_and_offset(tmp_path):
    f = write(tmp_path / "rt.pos", "fine\nalso fine\n", encoding="utf-8")
    f.write_bytes(f.read_bytes() + b"caf\xe9 au lait\n")
    msg = err(tmp_path)
    assert f"{f}:3: invalid utf-8 at byte 3 of the line (b'caf\\xe9 au lait')" in msg
    assert "1 bad record;" in msg and "latin-1" in msg


def test_invalid_json_line(tmp_path):
    f = write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label: 1}\n')
    assert f"{f}:2: invalid JSON at column 15" in err(f)


def test_json_line_not_an_object(tmp_path):
    f = write(tmp_path / "d.jsonl", '["a", "b"]\n')
    assert f"{f}:1: expected a JSON object per line, got an array" in err(f)


@pytest.mark.parametrize(
    "name, content, line, field",
    [
        ("d.csv", "text,label\nok,pos\n   ,neg\n", 3, "'text' is empty"),
        ("d.csv", "text,label\nok,pos\nfine,\n", 3, "'label' is empty"),
        ("d.tsv", "text\tlabel\nok\t \n", 2, "'label' is empty"),
        ("d.jsonl", '{"text": "ok", "label": "a"}\n{"text": " ", "label": "a"}\n', 2, "'text' is empty"),
        ("d.jsonl", '{"text": "ok", "label": ""}\n', 1, "'label' is empty"),
    ],
)
def test_empty_text_or_label(tmp_path, name, content, line, field):
    f = write(tmp_path / name, content)
    assert f"{f}:{line}: {field}" in err(f)


def test_blank_lines_in_folder_file_are_skipped(tmp_path):
    f = write(tmp_path / "x.pos", "good\n \n\r\nnice\n")
    assert [(e.text, e.source) for e in read_examples(tmp_path)] == [("good", f"{f}:1"), ("nice", f"{f}:4")]


def test_csv_row_with_wrong_field_count(tmp_path):
    f = write(tmp_path / "d.csv", "text,label\nhello, world,pos\n")
    assert f"{f}:2: row has 3 fields but the header has 2" in err(f)


def test_bad_records_counted_first_five_listed(tmp_path):
    # training refuses the file as a whole: the count, and the first 5 locations with their reasons
    rows = ['{"text": "ok", "label": "a"}'] + ['{"text": "x", "label": true}'] * 6 + ['{"text": "y", "label": 7}']
    f = write(tmp_path / "d.jsonl", "\n".join(rows) + "\n")
    msg = err(f)
    assert msg.startswith(f"{f}: 6 bad records; training data is used whole")
    assert f"{f}:6: 'label' is a boolean (true); expected a string or an integer" in msg
    assert f"{f}:7:" not in msg and "... and 1 more" in msg


def test_jsonl_integer_label_and_tsv_quotes_are_text(tmp_path):
    f = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 1.5}\n')
    assert "'label' is a number (1.5); expected a string or an integer" in err(f)
    f = write(tmp_path / "d.tsv", 'text\tlabel\n"Quoted" start\t1\n"open quote\t0\nlast\t1\n')
    assert [e.text for e in read_examples(f)] == ['"Quoted" start', '"open quote', "last"]


def test_csv_malformed_record_does_not_swallow_the_next_rows(tmp_path):
    f = write(tmp_path / "d.csv", 'text,label\n"never closed,a\nnext,b\n')
    msg = err(f)
    assert f"{f}: 1 bad record;" in msg and f"{f}:2: the quote opened at line 2, column 1 is never closed" in msg


# -- split and labels -------------------------------------------------------------------


def _examples(counts):
    return [Example(f"{lab} {i}", lab, f"f:{i}") for lab, n in counts.items() for i in range(n)]


def test_split_is_stratified_seeded_and_disjoint():
    ex = _examples({"a": 50, "b": 30, "c": 3})
    train, dev = split_dev(ex, 0.1, seed=0)
    assert sorted(e.label for e in dev) == ["a"] * 5 + ["b"] * 3 + ["c"]
    assert len(train) + len(dev) == len(ex) and not set(train) & set(dev)
    assert split_dev(ex, 0.1, seed=0) == (train, dev)
    assert split_dev(ex, 0.1, seed=1)[1] != dev


def test_split_does_not_depend_on_global_random_state():
    ex = _examples({"a": 40, "b": 40})
    random.seed(123)
    np.random.seed(123)
    first = split_dev(ex, 0.25, seed=7)
    random.seed(999)
    np.random.seed(999)
    assert split_dev(ex, 0.25, seed=7) == first


def test_split_golden_indices():
    # sha256-based order: the same on every platform and Python/numpy version
    _, dev = split_dev(_examples({"a": 10, "b": 10}), 0.2, seed=0)
    assert [e.text for e in dev] == GOLDEN_DEV


GOLDEN_DEV = ["a 3", "a 5", "b 2", "b 5"]  # literal, so a change of the split algorithm fails


def test_split_rejects_bad_fraction():
    with pytest.raises(InputError, match="between 0 and 1"):
        split_dev(_examples({"a": 4}), 1.0)


def test_check_labels():
    train, dev = _examples({"a": 3, "b": 3}), _examples({"a": 1, "c": 1, "d": 1})
    with pytest.raises(InputError) as e:
        check_labels(train, dev)
    assert "dev labels ['c', 'd'] never occur in training" in str(e.value)
    assert check_labels(train, _examples({"b": 2})) == ["a", "b"]
    with pytest.raises(InputError, match=r"training data has 1 label\(s\) \['a'\]"):
        check_labels(_examples({"a": 3}), [])


# -- metrics ----------------------------------------------------------------------------


def test_metrics_against_hand_computed_values():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    cm = metrics.confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    # F1: class0 2*2/(3+2)=0.8, class1 2/(2+2)=0.5, class2 2/(1+2)=2/3
    assert metrics.macro_f1(y_true, y_pred, 3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_macro_f1_ignores_absent_classes_and_handles_zero():
    assert metrics.macro_f1([0, 0], [0, 0], num_labels=3) == 1.0
    assert metrics.macro_f1([0, 1], [1, 0], num_labels=2) == 0.0
    with pytest.raises(ValueError, match="3 labels but y_pred has 2"):
        metrics.accuracy([0, 1, 1], [0, 1])
