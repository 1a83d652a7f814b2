"""Architecture configurations of rnnkit's four model families (torch-free).

One dataclass per task says the shape of a model: what ``rnnkit.export.nets`` builds in torch,
what the task's graph writer (``rnnkit.export.task_*``) writes as ONNX, and what a bundle
records as its ``architecture``.  Training and export read the same classes; training options
(learning rate, epochs ...) live in ``rnnkit.toolkit.configs``.  No torch here, so the CLI can
show defaults and the graph writers and checkers can run without it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

CELL_TYPES = ("rnn", "lstm", "gru")
POOLINGS = ("last", "mean", "max", "attention")
ATTENTIONS = ("none", "additive", "dot")


@dataclass
class ClassifierConfig:
    vocab_size: int  # rows of the embedding, <pad>=0 and <unk>=1 included
    num_labels: int  # classes of the head
    cell: str = "lstm"  # rnn | lstm | gru
    embed: int = 128  # embedding width
    hidden: int = 256  # recurrent state width per direction
    layers: int = 1  # stacked recurrent layers
    bidirectional: bool = False
    pooling: str = "last"  # last | mean | max | attention: how T states become one vector
    dropout: float = 0.3  # on embeddings, between layers and before the head (training only)
    padding_idx: int = 0  # the tokenizer's <pad> id

    def __post_init__(self):
        if self.cell not in CELL_TYPES:
            raise ValueError(f"cell must be one of {list(CELL_TYPES)}, got {self.cell!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TaggerConfig:
    vocab_size: int  # rows of the word embedding, <pad>=0 and <unk>=1 included
    num_tags: int  # classes of the per-token head
    cell: str = "lstm"  # rnn | lstm | gru
    embed: int = 128  # word embedding width
    hidden: int = 128  # recurrent state width per direction
    layers: int = 1  # stacked recurrent layers
    bidirectional: bool = True  # read the sentence both ways (a tagger wants the right context too)
    dropout: float = 0.3  # on the token features, between layers and before the head (training only)
    padding_idx: int = 0  # the tokenizer's <pad> id
    char_vocab_size: int = 0  # rows of the char embedding (CharVocab.size); 0 = no character features
    char_embed: int = 32  # char embedding width
    char_filters: int = 64  # char CNN output channels = width of a word's char features
    char_kernel: int = 3  # char CNN window (odd: centred on each character)

    def __post_init__(self):
        if self.cell not in CELL_TYPES:
            raise ValueError(f"cell must be one of {sorted(CELL_TYPES)}, got {self.cell!r}")
        if self.use_chars and (self.char_kernel < 1 or self.char_kernel % 2 == 0):
            raise ValueError(f"char_kernel must be odd and >= 1, got {self.char_kernel}")
        for name in ("vocab_size", "num_tags", "embed", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def use_chars(self) -> bool:
        return self.char_vocab_size > 0

    @property
    def input_width(self) -> int:
        """Width of a token's features entering the first recurrent layer."""
        return self.embed + (self.char_filters if self.use_chars else 0)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LMConfig:
    vocab_size: int  # rows of the embedding and columns of the head, <pad>=0 and <unk>=1 included
    cell: str = "lstm"  # rnn | lstm | gru
    embed: int = 128  # token embedding width
    hidden: int = 512  # recurrent state width
    layers: int = 2  # stacked recurrent layers
    dropout: float = 0.2  # on embeddings, between layers and before the head (training only)
    padding_idx: int = 0  # the tokenizer's <pad> id
    bidirectional: bool = False  # always False: a language model reads left to right

    def __post_init__(self):
        if self.cell not in CELL_TYPES:
            raise ValueError(f"cell must be one of {list(CELL_TYPES)}, got {self.cell!r}")
        if self.bidirectional:
            raise ValueError("a language model is unidirectional (it predicts the next token from the left context)")
        for name in ("vocab_size", "embed", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def directions(self) -> int:
        return 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Seq2SeqConfig:
    """An encoder-decoder (``rnnkit.toolkit.seq2seq.Seq2Seq``).

    The encoder's per-layer final states (both directions concatenated when bidirectional)
    are the decoder's initial states, so ``hidden`` is the decoder's width and the
    concatenated encoder width; a bidirectional encoder uses ``hidden // 2`` per direction.
    """

    source_vocab_size: int  # source embedding rows, <pad>=0 and <unk>=1 included
    target_vocab_size: int  # target embedding rows and head columns: <pad>=0 <unk>=1 <s>=2 </s>=3 ...
    cell: str = "lstm"  # rnn | lstm | gru, encoder and decoder alike
    embed: int = 128  # source and target embedding width
    hidden: int = 256  # decoder state width = encoder memory width
    layers: int = 2  # encoder and decoder layers (the decoder's layer i starts from the encoder's)
    bidirectional: bool = True  # encoder only
    attention: str = "dot"  # none | additive (Bahdanau's score) | dot (Luong's "general": h W m)
    dropout: float = 0.2  # embeddings, between layers, before the head (training only)
    padding_idx: int = 0
    bos_id: int = 2  # decoding starts from <s>
    eos_id: int = 3  # and stops at </s>

    def __post_init__(self):
        if self.cell not in CELL_TYPES:
            raise ValueError(f"cell must be one of {list(CELL_TYPES)}, got {self.cell!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {list(ATTENTIONS)}, got {self.attention!r}")
        for name in ("source_vocab_size", "embed", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.target_vocab_size <= max(self.bos_id, self.eos_id):
            raise ValueError(f"target_vocab_size must exceed the <s>/</s> ids, got {self.target_vocab_size}")
        if self.bidirectional and self.hidden % 2:
            raise ValueError(
                f"a bidirectional encoder splits hidden between its two directions: "
                f"hidden must be even, got {self.hidden}"
            )

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def encoder_hidden(self) -> int:
        return self.hidden // self.directions

    def to_dict(self) -> dict:
        return asdict(self)
