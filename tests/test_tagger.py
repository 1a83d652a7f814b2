"""Sequence tagging: readers, char vocabulary, model padding invariance, training, ONNX graph parity, int8."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rnnkit.runtime.charset import CharVocab, encode_sentences
from rnnkit.runtime.errors import BundleError, InputError
from rnnkit.runtime.tokenizer import WordTokenizer
from rnnkit.runtime.tolerance import FP32
from rnnkit.toolkit.conll import read_tagged

CONLLU = """# newdoc id = x
# sent_id = 1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
3.1\tknow\tknow\tVERB\tVB\t_\t_\t_\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = 2
1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_

"""


def _write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


# -- readers ------------------------------------------------------------------------------


def test_conllu_upos_xpos_skips_comments_ranges_empty_nodes(tmp_path):
    p = _write(tmp_path, "a.conllu", CONLLU)
    s = read_tagged(p)
    assert [x.tokens for x in s] == [["I", "do", "n't", "know", "."], ["Hi"]]
    assert s[0].tags == ["PRON", "AUX", "PART", "VERB", "PUNCT"] and s[1].tags == ["INTJ"]
    assert s[0].source.endswith("a.conllu:4") and s[1].source.endswith("a.conllu:13")
    assert read_tagged(p, column="xpos")[0].tags == ["PRP", "VBP", "RB", "VB", "."]
    crlf = _write(tmp_path, "b.conllu", "\ufeff" + CONLLU.replace("\n", "\r\n"))
    assert [x.tags for x in read_tagged(crlf)] == [x.tags for x in s]


def test_tsv(tmp_path):
    p = _write(tmp_path, "a.tsv", "The\tDET\ndog\tNOUN\n\n\n#\tSYM\n")
    s = read_tagged(p)
    assert [x.tokens for x in s] == [["The", "dog"], ["#"]] and s[1].tags == ["SYM"]


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("a.conllu", "1\tI\tI\tPRON\n", "a.conllu:1: 4 tab-separated column(s), expected 10"),
        ("a.conllu", "1\tI\t_\t_\tPRP\t_\t_\t_\t_\t_\n", "a.conllu:1: no UPOS tag (column 4 is '_')"),
        (
            "a.conllu",
            "1\tI\tI\tPRON\tPRP\t_\t_\t_\t_\t_\n3\tx\tx\tX\tX\t_\t_\t_\t_\t_\n",
            "a.conllu:2: word ID 3 but 2 expected",
        ),
        ("a.conllu", "x\tI\tI\tPRON\tPRP\t_\t_\t_\t_\t_\n", "a.conllu:1: ID 'x' is not an integer"),
        ("a.conllu", "1-x\tI\tI\tPRON\tPRP\t_\t_\t_\t_\t_\n", "a.conllu:1: ID '1-x' is neither"),
        ("a.conllu", "1\tI\tI\tPRON\tPRP\t_\t_\t_\t_\t_\n# c\n", "a.conllu:2: comment line inside a sentence"),
        ("a.conllu", "# only a comment\n\n", "a.conllu: no sentences"),
        ("a.tsv", "The\tDET\ndog\n", "a.tsv:2: 1 tab-separated column(s), expected 2"),
        ("a.tsv", "The\tDET\tx\n", "a.tsv:1: 3 tab-separated column(s)"),
        ("a.tsv", "The\t\n", "a.tsv:1: empty tag"),
        ("a.tsv", "\tDET\n", "a.tsv:1: empty word"),
        ("a.tsv", "", "a.tsv: no sentences"),
        ("a.tsv", "\n \n", "a.tsv: no sentences"),
        ("a.tsv", "1\tI\tI\tPRON\tPRP\t_\t_\t_\t_\t_\n", "is this a CoNLL-U file"),
        ("a.tsv", b"ok\tX\n\nbad\xff\tX\n", "a.tsv:3: not valid utf-8"),
    ],
)
def test_reader_errors(tmp_path, name, text, message):
    p = _write(tmp_path, name, text)
    with pytest.raises(InputError) as e:
        read_tagged(p)
    assert message in str(e.value)


def test_reader_argument_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_tagged(tmp_path / "missing.tsv")
    with pytest.raises(InputError, match="is a directory"):
        read_tagged(tmp_path)
    with pytest.raises(InputError, match="column must be one of"):
        read_tagged(tmp_path / "x.conllu", column="lemma")


# -- char vocabulary and word lookup ------------------------------------------------------


def test_charset_roundtrip_and_long_words():
    cv = CharVocab.build(["abc", "abd", "Zed"])
    assert cv.chars[:4] == ["<pad>", "<unk>", "a", "b"]
    ids = cv.encode_words(["ab", "ж", "x" * 40 + "ing"])
    assert ids.shape == (3, 32) and ids[1, 0] == 1 and (ids[0, 2:] == 0).all()
    long = cv.encode_word("abc" + "z" * 40 + "abd")
    assert long[:3] == cv.encode_word("abc") and long[-3:] == cv.encode_word("abd") and len(long) == 32
    assert CharVocab.from_dict(json.loads(json.dumps(cv.to_dict()))).chars == cv.chars
    batch = cv.encode_batch([["ab"], [], ["abc", "Zed"]])
    assert batch.shape == (3, 2, 3) and (batch[1] == 0).all()


@pytest.mark.parametrize(
    "d,message",
    [
        ([], "expected an object"),
        ({"chars": ["<pad>", "<unk>"]}, "lacks key(s)"),
        ({"chars": ["<unk>", "<pad>"], "normalization": "NFKC", "max_chars": 32}, "starts with"),
        ({"chars": ["<pad>", "<unk>", "ab"], "normalization": "NFKC", "max_chars": 32}, "not single characters"),
        ({"chars": ["<pad>", "<unk>", "a", "a"], "normalization": "NFKC", "max_chars": 32}, "duplicate"),
        ({"chars": ["<pad>", "<unk>"], "normalization": "X", "max_chars": 0, "y": 1}, "unknown key(s) 'y'"),
    ],
)
def test_charset_from_dict_errors(d, message):
    with pytest.raises(BundleError, match="m.json: ") as e:
        CharVocab.from_dict(d, source="m.json")
    assert message in str(e.value)


def test_word_lookup_normalises_whole_tokens():
    tok = WordTokenizer(["<pad>", "<unk>", "don't", "ﬁne", "fine", "a"])
    ids, lens = encode_sentences(tok, [["Don't", "FINE", "ﬁne", "日本"], []])
    assert ids.tolist() == [[2, 4, 4, 1], [0, 0, 0, 0]] and lens.tolist() == [4, 0]
    with pytest.raises(InputError, match="list of sentences"):
        encode_sentences(tok, ["a", "b"])


# -- model --------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from rnnkit.export.quantize import quantize_classifier  # noqa: E402
from rnnkit.export.task_tag import build_tagger_graph, check_tagger_graph  # noqa: E402
from rnnkit.runtime.tolerance import INT8  # noqa: E402
from rnnkit.toolkit.tagger import RecurrentTagger, TaggerConfig  # noqa: E402

CELLS = ("rnn", "lstm", "gru")
V, K, CV = 40, 6, 25


def make(cell="lstm", bidirectional=True, chars=True, layers=1, seed=0):
    torch.manual_seed(seed)
    config = TaggerConfig(
        vocab_size=V,
        num_tags=K,
        cell=cell,
        embed=6,
        hidden=5,
        layers=layers,
        bidirectional=bidirectional,
        char_vocab_size=CV if chars else 0,
        char_embed=4,
        char_filters=7,
        char_kernel=3,
    )
    module = RecurrentTagger(config).eval()
    with torch.no_grad():  # non-zero biases so a wrong gate order shows
        for name, p in module.named_parameters():
            if "bias" in name:
                p.uniform_(-0.5, 0.5)
    weights = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
    return config, module, weights


def batch(lengths, chars=True, seed=1, time=None, width=None):
    rng = np.random.default_rng(seed)
    t = time or max(lengths)
    ids = np.zeros((len(lengths), t), np.int64)
    cids = np.zeros((len(lengths), t, width or 9), np.int64)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(1, V, n)
        for j in range(n):
            w = int(rng.integers(1, (width or 9) + 1))
            cids[b, j, :w] = rng.integers(1, CV, w)
    feed = {"input_ids": ids, "sequence_lens": np.asarray(lengths, np.int32)}
    if chars:
        feed["char_ids"] = cids
    return feed


def torch_logits(module, feed):
    with torch.no_grad():
        c = feed.get("char_ids")
        return module(
            torch.from_numpy(feed["input_ids"]),
            torch.from_numpy(feed["sequence_lens"].astype(np.int64)),
            torch.from_numpy(c) if c is not None else None,
        ).numpy()


def row(feed, i):
    n = int(feed["sequence_lens"][i])
    out = {"input_ids": feed["input_ids"][i : i + 1, :n], "sequence_lens": feed["sequence_lens"][i : i + 1]}
    if "char_ids" in feed:
        w = max(1, int((feed["char_ids"][i, :n] != 0).sum(-1).max()))
        out["char_ids"] = feed["char_ids"][i : i + 1, :n, :w]
    return out


@pytest.mark.parametrize("cell", CELLS)
def test_torch_padding_invariance(cell):
    _, module, _ = make(cell, chars=True, layers=2)
    feed = batch([7, 1, 12, 3], width=11)
    full = torch_logits(module, feed)
    for i, n in enumerate(feed["sequence_lens"]):
        alone = torch_logits(module, row(feed, i))
        np.testing.assert_allclose(full[i, :n], alone[0], atol=FP32.atol, rtol=FP32.rtol)
        assert (full[i, n:] == 0).all()
    # wider char padding changes nothing
    wide = dict(feed, char_ids=np.concatenate([feed["char_ids"], np.zeros((4, 12, 5), np.int64)], axis=2))
    np.testing.assert_allclose(torch_logits(module, wide), full, atol=FP32.atol, rtol=FP32.rtol)


def test_model_input_errors():
    _, module, _ = make(chars=True)
    with pytest.raises(ValueError, match="char_ids must be given"):
        module(torch.ones(1, 2, dtype=torch.long), torch.tensor([2]))
    with pytest.raises(ValueError, match="at least|>= 1 token"):
        module(torch.ones(1, 2, dtype=torch.long), torch.tensor([0]), torch.ones(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="char_kernel must be odd"):
        TaggerConfig(vocab_size=5, num_tags=2, char_vocab_size=5, char_kernel=2)


# -- ONNX graph ---------------------------------------------------------------------------


def session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("chars", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_graph_matches_torch(cell, bidirectional, chars):
    """batch 1/3/8 x length 1/7/33 ragged: logits at FP32, tags equal, zeros past each length,
    every row alone == in its batch (rnnkit.export.validate)."""
    from rnnkit.export.exporter import session_forward as session_tag_forward
    from rnnkit.export.validate import check_parity as check_tagger_parity

    config, module, weights = make(cell, bidirectional, chars, layers=2)
    model = build_tagger_graph(config, weights)
    check_tagger_graph(model, config)
    report = check_tagger_parity(
        "torch",
        lambda f: torch_logits(module, f),
        {"onnxruntime": session_tag_forward(session(model))},
        FP32,
        V,
        CV if chars else 0,
        batch_sizes=(1, 3, 8),
        lengths=(1, 7, 33),
    )
    assert not report.failures, report.failures[:5]
    assert report.cases == 9


def test_parity_matrix_is_complete():
    from rnnkit.toolkit.models import CELLS as REGISTERED

    assert set(CELLS) == set(REGISTERED)


def test_graph_long_sentence_and_unk():
    config, module, weights = make("lstm", True, True)
    sess = session(build_tagger_graph(config, weights))
    feed = batch([3000, 2])
    feed["input_ids"][0, :100] = 1  # <unk>
    feed["char_ids"][0, :50, 0] = 1
    got = sess.run(None, feed)[0]
    assert FP32.close(got, torch_logits(module, feed)), FP32.worst(got, torch_logits(module, feed))


def test_graph_contract_and_checks():
    config, _, weights = make("gru", True, True)
    model = build_tagger_graph(config, weights)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["rnnkit.task"] == "tag" and props["rnnkit.architecture"] == "gru x1 bi"  # as in a bundle
    assert not {n.op_type for n in model.graph.node} - {
        "Gather",
        "Transpose",
        "Reshape",
        "Shape",
        "Concat",
        "Unsqueeze",
        "Slice",
        "Cast",
        "Range",
        "Less",
        "Equal",
        "Not",
        "Where",
        "Add",
        "MatMul",
        "Tanh",
        "ReduceMax",
        "ConstantOfShape",
        "GRU",
    }
    dims = [d.dim_param for d in model.graph.input[2].type.tensor_type.shape.dim]
    assert dims == ["batch", "time", "chars"]
    wrong = TaggerConfig(**{**config.to_dict(), "hidden": 9, "layers": 2, "char_vocab_size": 0})
    with pytest.raises(Exception) as e:
        check_tagger_graph(model, wrong)
    msg = str(e.value)
    assert "hidden_size=5, expected 9" in msg and "1 recurrent nodes, expected 2" in msg and "graph inputs" in msg


@pytest.mark.parametrize("cell", CELLS)
def test_int8_structure_and_agreement(cell):
    config, module, weights = make(cell, True, True)
    fp32 = build_tagger_graph(config, weights)
    q, params = quantize_classifier(fp32)
    check_tagger_graph(q, config)
    ops = [n.op_type for n in q.graph.node]
    want = {"lstm": "DynamicQuantizeLSTM", "gru": "GRU", "rnn": "RNN"}[cell]
    assert ops.count(want) == 1 and ops.count("Cast") >= 2
    assert sum(d["op"] == "Gather" for d in params["ops"]) == 2  # word and char tables, per row
    feed = batch([7, 1, 33], seed=3)
    a, b = session(fp32).run(None, feed)[0], session(q).run(None, feed)[0]
    assert INT8.close(b, a), INT8.worst(b, a)
    mask = np.arange(a.shape[1])[None, :] < feed["sequence_lens"][:, None]
    assert (a.argmax(-1) == b.argmax(-1))[mask].mean() >= 0.9


# -- training -----------------------------------------------------------------------------


def _synthetic(path, n, seed):
    """Tag = word class by suffix; unseen words of a class share its suffix (chars help)."""
    rng = np.random.default_rng(seed)
    stems = ["bar", "fo", "qu", "zim", "lop", "kra", "tev", "mul", "dos", "pin", "wex", "ryl"]
    classes = {"N": "ton", "V": "ing", "A": "ous", "D": ""}
    lines = []
    for _ in range(n):
        for _ in range(int(rng.integers(2, 9))):
            tag = str(rng.choice(list(classes)))
            word = (
                "the"
                if tag == "D"
                else str(rng.choice(stems)) + str(rng.choice(stems[:6] if seed == 0 else stems)) + classes[tag]
            )
            lines.append(f"{word}\t{tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_train_tagger_learns_and_roundtrips(tmp_path):
    from rnnkit.toolkit.train_tag import TagTrainConfig, load_tagger_checkpoint, train_tagger

    train = _synthetic(tmp_path / "train.tsv", 150, 0)
    dev = _synthetic(tmp_path / "dev.tsv", 40, 1)
    cfg = TagTrainConfig(
        cell="gru",
        hidden=16,
        embed=8,
        char_embed=8,
        char_filters=16,
        epochs=6,
        threads=1,
        batch_size=16,
        lr=1e-2,
        seed=0,
    )
    result = train_tagger(train, tmp_path / "ckpt", cfg, dev_path=dev, progress=False, log=None)
    assert result.dev_accuracy >= 0.95 and result.dev_unseen_accuracy >= 0.9
    out = tmp_path / "ckpt"
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "weights.pt",
        "curves.png",
        "confusion.png",
        "confusion.tsv",
    }
    meta = json.loads((out / "config.json").read_text())
    assert meta["task"] == "tag" and meta["training"]["dev_path"] == str(dev)
    ck = load_tagger_checkpoint(out)
    assert ck.predict([["the", "barfoing"], []]) == [["D", "V"], []]
    mixed = ck.predict([["日本", "😀", "Привет", "x" * 5000]])  # unseen chars -> <unk>; long words capped
    assert len(mixed[0]) == 4 and set(mixed[0]) <= set(ck.tags)
    meta["charset"]["chars"] = meta["charset"]["chars"][:-1]
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="'charset.chars' has"):
        load_tagger_checkpoint(out)


@pytest.mark.parametrize("cell", CELLS)
def test_numba_backend_runs_tagger_graph(cell):
    """Only ops the numba backend implements are written (no Conv): it matches torch at FP32."""
    pytest.importorskip("numba")
    from rnnkit.runtime.numba_backend.graph import NumbaSession

    config, module, weights = make(cell, True, True, layers=2)
    feed = batch([7, 1, 33], seed=4)
    got = NumbaSession(build_tagger_graph(config, weights)).run(None, feed)[0]
    want = torch_logits(module, feed)
    assert FP32.close(got, want), FP32.worst(got, want)


def test_check_tagger_parity_passes_and_catches():
    from rnnkit.export.exporter import session_forward as session_tag_forward
    from rnnkit.export.validate import check_parity as check_tagger_parity
    from rnnkit.export.validate import raise_on_failures
    from rnnkit.runtime.errors import ParityError

    config, module, weights = make("lstm", True, True)
    fwd = session_tag_forward(session(build_tagger_graph(config, weights)))
    shapes = dict(batch_sizes=(1, 3), lengths=(1, 7, 33))
    report = check_tagger_parity(
        "torch", lambda f: torch_logits(module, f), {"onnxruntime": fwd}, FP32, V, CV, **shapes
    )
    assert not report.failures and report.worst["onnxruntime"] < FP32.atol
    leaky = lambda f: fwd(f) + 1.0  # noqa: E731 -- wrong everywhere, padding included
    bad = check_tagger_parity("torch", lambda f: torch_logits(module, f), {"leaky": leaky}, FP32, V, CV, **shapes)
    with pytest.raises(ParityError, match="non-zero logits past a sentence's length"):
        raise_on_failures(bad, what="tagger")


def test_train_config_and_word_dropout_probabilities():
    from rnnkit.toolkit.train_tag import TagTrainConfig, _drop_probabilities

    with pytest.raises(InputError) as e:
        TagTrainConfig(cell="cnn", char_kernel=4, unk_alpha=-1, column="lemma")
    for part in ("cell must be one of", "char_kernel must be odd", "unk_alpha must be >= 0", "column must be"):
        assert part in str(e.value)

    class Data:
        ids = [np.array([2, 2, 2, 3])]

    assert _drop_probabilities(Data, 5, TagTrainConfig(word_dropout=0.0)) is None
    p = _drop_probabilities(Data, 5, TagTrainConfig(word_dropout=0.1, unk_alpha=1.0)).numpy()
    np.testing.assert_allclose(p[[2, 3, 4]], [1 - 0.9 * 0.75, 1 - 0.9 * 0.5, 1 - 0.9 * 0.0], rtol=1e-6)
