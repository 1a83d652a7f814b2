"""PyTorch sequence tagger (many-to-many): word embedding [+ char CNN] -> recurrent stack -> per-token head.

The module layout (``embedding``, ``char_embedding``, ``char_conv``, ``rnn``, ``head``) is the
contract ``rnnkit.export.graph_tagger`` reads to write the same computation as native ONNX ops.
Padded batches go through ``pack_padded_sequence``, so a bidirectional pass never reads
padding and each sentence gets exactly the logits it gets alone; logits past a sentence's
length are 0.  Character features (Ma & Hovy 2016, "End-to-end sequence labeling via
bi-directional LSTM-CNNs-CRF", without the CRF): char embeddings -> Conv1d over the chars of
each word (zero-padded, centred windows) -> max over the word's real characters (padding
chars masked with -inf, so the padded width never changes a word's features) -> tanh;
concatenated to the word embedding.  Unseen words thus still get spelling features.

Imports torch; never imported by ``rnnkit.runtime`` or at CLI import time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit.toolkit.models import CELLS


@dataclass
class TaggerConfig:
    vocab_size: int            # rows of the word embedding, <pad>=0 and <unk>=1 included
    num_tags: int              # classes of the per-token head
    cell: str = "lstm"         # rnn | lstm | gru
    embed: int = 128           # word embedding width
    hidden: int = 128          # recurrent state width per direction
    layers: int = 1            # stacked recurrent layers
    bidirectional: bool = True  # read the sentence both ways (a tagger wants the right context too)
    dropout: float = 0.3       # on the token features, between layers and before the head (training only)
    padding_idx: int = 0       # the tokenizer's <pad> id
    char_vocab_size: int = 0   # rows of the char embedding (CharVocab.size); 0 = no character features
    char_embed: int = 32       # char embedding width
    char_filters: int = 64     # char CNN output channels = width of a word's char features
    char_kernel: int = 3       # char CNN window (odd: centred on each character)

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
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


class RecurrentTagger(nn.Module):
    def __init__(self, config: TaggerConfig):
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embed, padding_idx=c.padding_idx)
        if c.use_chars:
            self.char_embedding = nn.Embedding(c.char_vocab_size, c.char_embed, padding_idx=0)
            self.char_conv = nn.Conv1d(c.char_embed, c.char_filters, c.char_kernel, padding=c.char_kernel // 2)
        kwargs = dict(num_layers=c.layers, batch_first=True, bidirectional=c.bidirectional,
                      dropout=c.dropout if c.layers > 1 else 0.0)
        self.rnn = CELLS[c.cell](c.input_width, c.hidden, **kwargs)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden * c.directions, c.num_tags)

    def char_features(self, char_ids: torch.Tensor) -> torch.Tensor:
        """char_ids (B, T, C) int64, 0 = padding -> (B, T, F); all-padding words -> 0."""
        b, t, c = char_ids.shape
        flat = char_ids.reshape(b * t, c)
        e = self.char_embedding(flat).transpose(1, 2)                     # (N, Ec, C)
        conv = self.char_conv(e)                                         # (N, F, C)
        mask = (flat != 0).unsqueeze(1)                                  # (N, 1, C)
        best = conv.masked_fill(~mask, float("-inf")).max(dim=2).values  # (N, F)
        feats = torch.where(mask.any(dim=2), torch.tanh(best), torch.zeros_like(best))
        return feats.reshape(b, t, -1)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor,
                char_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) int64 padded with <pad>; lengths (B,) >= 1; char_ids (B, T, C) or None
        -> logits (B, T, num_tags), 0 at t >= lengths[b]."""
        c = self.config
        batch, time = input_ids.shape
        if c.use_chars != (char_ids is not None):
            raise ValueError("char_ids must be given exactly when the model has character features "
                             f"(char_vocab_size={c.char_vocab_size})")
        lengths = lengths.to("cpu", torch.int64)
        if batch and int(lengths.min()) < 1:
            raise ValueError(f"every sentence needs >= 1 token, got lengths {lengths.tolist()} "
                             "-- drop empty sentences before calling the model")
        x = self.embedding(input_ids)                                    # (B, T, E)
        if char_ids is not None:
            if char_ids.shape[:2] != input_ids.shape:
                raise ValueError(f"char_ids has shape {tuple(char_ids.shape)}, expected "
                                 f"({batch}, {time}, chars)")
            x = torch.cat([x, self.char_features(char_ids)], dim=-1)     # (B, T, E+F)
        x = self.dropout(x)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        y, _ = pad_packed_sequence(out, batch_first=True, total_length=time)  # (B, T, D*H)
        logits = self.head(self.dropout(y))                              # (B, T, K)
        mask = torch.arange(time)[None, :] < lengths[:, None]            # (B, T)
        return logits.masked_fill(~mask.to(logits.device).unsqueeze(-1), 0.0)
