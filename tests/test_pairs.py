"""Sequence-pair readers, grouped splits and the seq2seq sides of the tokenizers (torch-free)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from rnnkit.runtime.errors import BundleError, InputError
from rnnkit.runtime.tokenizer import BOS_ID, EOS_ID, TARGET_SPECIALS, CharTokenizer, WordTokenizer, tokenizer_from_dict
from rnnkit.toolkit.pairs import group_pairs, group_split, read_cmudict, read_pairs, read_tatoeba, read_tsv

CMUDICT = """;;; a comment line
'bout B AW1 T
abbe AE1 B IY0
abbe(2) AE0 B EY1
aalborg AO1 L B AO0 R G # place, danish

zywicki Z IH0 W IH1 K IY0
"""


def test_read_tsv_ignores_extra_columns_and_reads_gzip(tmp_path):
    text = "go .\tva !\tCC-BY 2.0\nhi\tsalut\n\n"
    (tmp_path / "p.tsv").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "p.tsv.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    assert read_tsv(tmp_path / "p.tsv") == read_tsv(tmp_path / "p.tsv.gz") == [("go .", "va !"), ("hi", "salut")]


@pytest.mark.parametrize(
    "line, what", [("no tab here", "no tab"), ("src\t  ", "empty target"), ("\ttgt", "empty source")]
)
def test_bad_tsv_line_names_file_and_line(tmp_path, line, what):
    p = tmp_path / "bad.tsv"
    p.write_text(f"a\tb\nc\td\n{line}\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"bad.tsv:3: {what}"):
        read_tsv(p)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(InputError, match="no such pairs file"):
        read_tsv(tmp_path / "nope.tsv")
    (tmp_path / "x.tsv").write_text("a\tb\n", encoding="utf-8")
    with pytest.raises(InputError, match="unknown pairs format 'xml'"):
        read_pairs(tmp_path / "x.tsv", "xml")


def test_cmudict_comments_alternates_and_stress(tmp_path):
    p = tmp_path / "cmu.dict"
    p.write_text(CMUDICT, encoding="utf-8")
    pairs = read_cmudict(p)
    assert pairs == [
        ("'bout", "B AW T"),
        ("abbe", "AE B IY"),
        ("abbe", "AE B EY"),
        ("aalborg", "AO L B AO R G"),
        ("zywicki", "Z IH W IH K IY"),
    ]
    assert read_cmudict(p, keep_stress=True)[2] == ("abbe", "AE0 B EY1")
    assert [e.references for e in group_pairs(pairs) if e.source == "abbe"] == [("AE B IY", "AE B EY")]
    p.write_text("abbe\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"cmu.dict:1: 'abbe' has a word but no phones"):
        read_cmudict(p)


def test_tatoeba_odd_spaces_become_plain_spaces(tmp_path):
    p = tmp_path / "fra.txt.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write("Wow!\tÇa alors\u202f!\nHi.\tSalut\u00a0!\nRun!\tCours\u2009!\n")
    assert [t for _, t in read_tatoeba(p)] == ["Ça alors !", "Salut !", "Cours !"]


def random_pairs(n_sources: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n_sources):
        for k in range(int(rng.integers(1, 4))):  # 1-3 references per source
            pairs.append((f"src{i}", f"tgt{i}-{k}"))
    order = rng.permutation(len(pairs))
    return [pairs[i] for i in order]


def test_group_split_keeps_every_source_on_one_side_and_is_seeded():
    pairs = random_pairs(500, 0)
    parts = group_split(pairs, (0.85, 0.05, 0.10), seed=0)
    sources = [{s for s, _ in p} for p in parts]
    assert not (sources[0] & sources[1]) and not (sources[0] & sources[2]) and not (sources[1] & sources[2])
    assert sorted(sum(parts, [])) == sorted(pairs)
    assert [len(s) for s in sources] == [425, 25, 50]
    assert group_split(pairs, (0.85, 0.05, 0.10), seed=0) == parts
    assert group_split(pairs, (0.85, 0.05, 0.10), seed=1) != parts
    # the split depends on the set of sources, not on the order of the file
    assert [sorted(p) for p in group_split(pairs[::-1], (0.85, 0.05, 0.10), 0)] == [sorted(p) for p in parts]
    with pytest.raises(InputError, match="fractions"):
        group_split(pairs, (0.5, -0.1), 0)


def test_char_tokenizer_lowercase_is_serialised_and_old_dicts_still_load():
    tok = CharTokenizer.build(["Hello", "World"], lowercase=True)
    assert "H" not in tok.vocab and tok.encode("HELLO") == tok.encode("hello")
    again = tokenizer_from_dict(tok.to_dict())
    assert again.lowercase and again.encode("HeLLo") == tok.encode("hello")
    old = {"level": "char", "normalization": "NFC", "vocab": ["<pad>", "<unk>", "a", "B"]}  # before the option
    assert not CharTokenizer.from_dict(old).lowercase and CharTokenizer.from_dict(old).encode("B") == [3]
    assert CharTokenizer(old["vocab"]).to_dict() == old  # unchanged form when the option is off
    with pytest.raises(BundleError, match="'tokenizer.lowercase' is 'yes'"):
        CharTokenizer.from_dict({**old, "lowercase": "yes"})


def test_target_tokenizers_have_bos_eos_and_decode_target():
    phones = WordTokenizer.build(["AH B", "K AH T"], lowercase=False, specials=TARGET_SPECIALS)
    assert phones.vocab[:4] == list(TARGET_SPECIALS) and phones.tokenize("AH B") == ["AH", "B"]
    ids = phones.encode("K AH T")
    assert phones.decode_target([BOS_ID, *ids, EOS_ID, *ids]) == "K AH T"
    assert phones.decode_target(ids) == "K AH T"  # no </s>: the whole row
    assert WordTokenizer.from_dict(phones.to_dict()).vocab == phones.vocab
    chars = CharTokenizer.build(["chat", "chien"], specials=TARGET_SPECIALS)
    assert chars.decode_target([BOS_ID, *chars.encode("chat"), EOS_ID, 5]) == "chat"
    assert CharTokenizer.from_dict(chars.to_dict()).vocab == chars.vocab  # <s>, </s> allowed at ids 2, 3
    moved = {**chars.to_dict(), "vocab": ["<pad>", "<unk>", "</s>", "<s>"]}  # swapped
    with pytest.raises(BundleError, match="longer than one character"):
        CharTokenizer.from_dict(moved)


@pytest.mark.slow
@pytest.mark.shared
def test_g2p_recipe_writes_the_published_split_without_training(tmp_path):
    """``scripts/g2p_cmudict.py --split-only``: the seeded word split the README's G2P figures use,
    written with no training; every word on one side, alternate pronunciations kept together."""
    import subprocess
    import sys

    from conftest import ROOT, SHARED

    if not (SHARED / "cmudict" / "cmudict.dict").is_file():
        pytest.skip("../shared/datasets/cmudict is absent (CI has it)")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "g2p_cmudict.py"), "--split-only", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    words = {}
    for name in ("train", "dev", "test"):
        pairs = read_tsv(tmp_path / f"{name}.tsv")
        words[name] = {p[0] for p in pairs}
        assert len(pairs) >= len(words[name]) > 0
    assert (
        not (words["train"] & words["test"])
        and not (words["train"] & words["dev"])
        and not (words["dev"] & words["test"])
    )
    total = sum(len(w) for w in words.values())
    assert abs(len(words["test"]) / total - 0.10) < 0.01 and abs(len(words["dev"]) / total - 0.05) < 0.01
    assert not (tmp_path / "ckpt").exists()  # no training happened
