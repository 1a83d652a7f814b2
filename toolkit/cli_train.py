"""``rnnkit train classify|tag|lm|seq2seq``: parse the options into a training config, call the
task's ``train_*`` function (imported inside the command: torch loads only when a run starts),
print the best epoch.  Every option's default is the config dataclass's own (``defaults``)."""

from __future__ import annotations

import click

from .cli_common import RnnkitGroup, defaults
from .configs import (
    ATTENTIONS,
    BEST_BY,
    CELL_TYPES,
    DISTILL_MIXES,
    LEVELS,
    LM_LR_SCHEDULES,
    LM_TOKENIZERS,
    LR_SCHEDULES,
    NONFINITE,
    POOLINGS,
    THREADS_HELP,
    LMTrainConfig,
    Seq2SeqTrainConfig,
    TagTrainConfig,
    TrainConfig,
)


@click.group(cls=RnnkitGroup)
def train():
    """Train a model (needs torch)."""


_T = defaults(TrainConfig)  # the defaults live in one place: the dataclass
FORCE_HELP = (
    "Replace what an earlier run left in --out (a trained checkpoint, or an interrupted run: see --resume); "
    "without it such an --out is refused."
)
NONFINITE_HELP = (
    "A NaN/inf loss or gradient: stop (one line naming the epoch, step and layer; the checkpoint keeps the "
    "best epoch) or skip that step. Every step's gradient norms go to gradients.jsonl/.png in --out."
)
NPROC_HELP = (
    "Training processes on this machine (torch DistributedDataParallel, gloo): each takes its share of "
    "every batch of the one seeded batch order; rank 0 evaluates and writes the checkpoint. Several "
    "machines: torchrun (docs/distillation.md)."
)
TEACHER_HELP = "Distil from this checkpoint or bundle (docs/distillation.md); its targets are cached on disk."
RESUME_HELP = (
    "Continue the run that was killed or interrupted in --out (from its last finished epoch; same "
    "options and data, only --epochs may change): the result is the uninterrupted run's."
)


@train.command("classify")
@click.option(
    "--train",
    "train_path",
    required=True,
    type=click.Path(),
    help="CSV/TSV/JSONL file or folder of per-label text files.",
)
@click.option(
    "--dev", "dev_path", type=click.Path(), help="Dev set (same formats). Default: hold out --dev-split of TRAIN."
)
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Checkpoint directory to write.")
@click.option("--cell", type=click.Choice(list(CELL_TYPES)), default=_T.cell, show_default=True)
@click.option("--layers", type=click.IntRange(1, 8), default=_T.layers, show_default=True)
@click.option("--hidden", type=click.IntRange(1, 4096), default=_T.hidden, show_default=True)
@click.option("--embed", type=click.IntRange(1, 4096), default=_T.embed, show_default=True)
@click.option("--bidirectional/--unidirectional", default=_T.bidirectional, show_default=True)
@click.option("--pooling", type=click.Choice(list(POOLINGS)), default=_T.pooling, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 0.95), default=_T.dropout, show_default=True)
@click.option(
    "--word-dropout",
    type=click.FloatRange(0, 0.95),
    default=_T.word_dropout,
    show_default=True,
    help="Training only: replace this share of tokens by <unk> (helps unseen words).",
)
@click.option("--epochs", type=click.IntRange(1, 1000), default=_T.epochs, show_default=True)
@click.option(
    "--patience",
    type=click.IntRange(0),
    default=_T.patience,
    show_default=True,
    help="Stop after this many epochs without a better dev accuracy (0: never).",
)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=_T.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_T.lr, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=_T.weight_decay, show_default=True)
@click.option(
    "--clip", type=click.FloatRange(min=0), default=_T.clip, show_default=True, help="Gradient-norm clipping (0: off)."
)
@click.option(
    "--on-nonfinite",
    type=click.Choice(list(NONFINITE)),
    default=_T.on_nonfinite,
    show_default=True,
    help=NONFINITE_HELP,
)
@click.option("--seed", type=int, default=_T.seed, show_default=True)
@click.option("--dev-split", type=click.FloatRange(0, 0.9, min_open=True), default=_T.dev_split, show_default=True)
@click.option("--lowercase/--keep-case", default=_T.lowercase, show_default=True)
@click.option("--max-vocab", type=click.IntRange(3), default=_T.max_vocab, show_default=True)
@click.option("--min-freq", type=click.IntRange(1), default=_T.min_freq, show_default=True)
@click.option(
    "--max-length",
    type=click.IntRange(0),
    default=_T.max_length,
    show_default=True,
    help="Truncate texts to this many tokens (0: no limit).",
)
@click.option("--text-field", default=_T.text_field, show_default=True)
@click.option("--label-field", default=_T.label_field, show_default=True)
@click.option("--encoding", default=_T.encoding, show_default=True)
@click.option("--threads", type=click.IntRange(0), default=_T.threads, show_default=True, help=THREADS_HELP)
@click.option("--teacher", default=_T.teacher, help=TEACHER_HELP + " Soft targets (Hinton et al. 2015).")
@click.option(
    "--distill-temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=_T.distill_temperature,
    show_default=True,
    help="--teacher: softmax temperature of the soft targets.",
)
@click.option(
    "--distill-alpha",
    type=click.FloatRange(0, 1),
    default=_T.distill_alpha,
    show_default=True,
    help="--teacher: weight of the soft-target loss (the rest: the labels' cross-entropy).",
)
@click.option("--nproc", type=click.IntRange(1, 256), default=_T.nproc, show_default=True, help=NPROC_HELP)
@click.option("--resume", "resume", is_flag=True, help=RESUME_HELP)
@click.option("--force", is_flag=True, help=FORCE_HELP)
def train_classify(train_path, dev_path, out_dir, resume, force, **options):
    """Train a text classifier (sentiment, topics, ...)."""
    from .train import train_classifier

    result = train_classifier(
        train_path, out_dir, TrainConfig(**options), dev_path=dev_path, resume=resume, force=force
    )
    click.echo(f"best dev accuracy {result.dev_accuracy:.4f} (epoch {result.best_epoch}); checkpoint: {result.out_dir}")


_G = defaults(TagTrainConfig)


@train.command("tag")
@click.option("--train", "train_path", required=True, type=click.Path(), help="CoNLL-U (.conllu) or word<TAB>tag file.")
@click.option(
    "--dev", "dev_path", type=click.Path(), help="Dev set (same formats). Default: hold out --dev-split of TRAIN."
)
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Checkpoint directory to write.")
@click.option(
    "--column", type=click.Choice(["upos", "xpos"]), default=_G.column, show_default=True, help="CoNLL-U tag column."
)
@click.option("--cell", type=click.Choice(list(CELL_TYPES)), default=_G.cell, show_default=True)
@click.option("--layers", type=click.IntRange(1, 8), default=_G.layers, show_default=True)
@click.option("--hidden", type=click.IntRange(1, 4096), default=_G.hidden, show_default=True)
@click.option("--embed", type=click.IntRange(1, 4096), default=_G.embed, show_default=True)
@click.option("--bidirectional/--unidirectional", default=_G.bidirectional, show_default=True)
@click.option("--chars/--no-chars", default=_G.chars, show_default=True, help="Character CNN features per word.")
@click.option("--char-embed", type=click.IntRange(1, 1024), default=_G.char_embed, show_default=True)
@click.option("--char-filters", type=click.IntRange(1, 4096), default=_G.char_filters, show_default=True)
@click.option("--char-kernel", type=click.IntRange(1, 15), default=_G.char_kernel, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 0.95), default=_G.dropout, show_default=True)
@click.option("--word-dropout", type=click.FloatRange(0, 0.95), default=_G.word_dropout, show_default=True)
@click.option(
    "--unk-alpha",
    type=click.FloatRange(0),
    default=_G.unk_alpha,
    show_default=True,
    help="Replace a word seen n times by <unk> with probability a/(a+n) (helps unseen words).",
)
@click.option("--epochs", type=click.IntRange(1, 1000), default=_G.epochs, show_default=True)
@click.option("--patience", type=click.IntRange(0), default=_G.patience, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=_G.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_G.lr, show_default=True)
@click.option("--clip", type=click.FloatRange(min=0), default=_G.clip, show_default=True)
@click.option(
    "--on-nonfinite",
    type=click.Choice(list(NONFINITE)),
    default=_G.on_nonfinite,
    show_default=True,
    help=NONFINITE_HELP,
)
@click.option("--seed", type=int, default=_G.seed, show_default=True)
@click.option("--dev-split", type=click.FloatRange(0, 0.9, min_open=True), default=_G.dev_split, show_default=True)
@click.option("--max-vocab", type=click.IntRange(3), default=_G.max_vocab, show_default=True)
@click.option("--encoding", default=_G.encoding, show_default=True)
@click.option("--threads", type=click.IntRange(0), default=_G.threads, show_default=True, help=THREADS_HELP)
@click.option("--nproc", type=click.IntRange(1, 256), default=_G.nproc, show_default=True, help=NPROC_HELP)
@click.option("--resume", "resume", is_flag=True, help=RESUME_HELP)
@click.option("--force", is_flag=True, help=FORCE_HELP)
def train_tag(train_path, dev_path, out_dir, resume, force, **options):
    """Train a sequence tagger (POS tagging, ...)."""
    from .train_tag import train_tagger

    result = train_tagger(train_path, out_dir, TagTrainConfig(**options), dev_path=dev_path, resume=resume, force=force)
    click.echo(f"best dev accuracy {result.dev_accuracy:.4f} (epoch {result.best_epoch}); checkpoint: {result.out_dir}")


_L = defaults(LMTrainConfig)


@train.command("lm")
@click.option("--train", "train_path", required=True, type=click.Path(), help="Plain-text file.")
@click.option(
    "--dev",
    "dev_path",
    type=click.Path(),
    help="Plain-text dev file. Default: the last --dev-split of TRAIN (by position).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Checkpoint directory to write.")
@click.option(
    "--level",
    type=click.Choice(["char", "word"]),
    default=_L.level,
    show_default=True,
    help="Tokens: characters or words.",
)
@click.option("--cell", type=click.Choice(list(CELL_TYPES)), default=_L.cell, show_default=True)
@click.option("--layers", type=click.IntRange(1, 8), default=_L.layers, show_default=True)
@click.option("--hidden", type=click.IntRange(1, 4096), default=_L.hidden, show_default=True)
@click.option("--embed", type=click.IntRange(1, 4096), default=_L.embed, show_default=True)
@click.option(
    "--dropout",
    type=click.FloatRange(0, 0.95),
    default=_L.dropout,
    show_default=True,
    help="On the embeddings, between layers and before the head.",
)
@click.option(
    "--tie-weights/--no-tie-weights",
    default=_L.tie_weights,
    show_default=True,
    help="The head reuses the embedding matrix (needs --embed equal to --hidden).",
)
@click.option(
    "--tokenizer",
    type=click.Choice(list(LM_TOKENIZERS)),
    default=_L.tokenizer,
    show_default=True,
    help="Word level: words (rnnkit's splitter) or whitespace (a pre-tokenized corpus such as PTB: "
    "the space-separated fields, case kept).",
)
@click.option(
    "--unk-token",
    default=_L.unk_token,
    show_default=True,
    help="Whitespace tokenizer: the corpus's unknown-word token, read as the model's <unk>.",
)
@click.option(
    "--eos-per-line/--no-eos-per-line",
    default=_L.eos_per_line,
    show_default=True,
    help="Whitespace tokenizer: an end-of-line token <eos> per line (the literature's perplexities count it).",
)
@click.option("--epochs", type=click.IntRange(1, 1000), default=_L.epochs, show_default=True)
@click.option(
    "--patience",
    type=click.IntRange(0),
    default=_L.patience,
    show_default=True,
    help="Stop after this many epochs without a lower dev loss (0: never).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    default=_L.batch_size,
    show_default=True,
    help="Parallel text streams.",
)
@click.option(
    "--bptt",
    type=click.IntRange(1, 100000),
    default=_L.bptt,
    show_default=True,
    help="Tokens per truncated-backprop window (the state is carried across windows).",
)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_L.lr, show_default=True)
@click.option(
    "--lr-schedule",
    type=click.Choice(list(LM_LR_SCHEDULES)),
    default=_L.lr_schedule,
    show_default=True,
    help="cosine: decay the rate to lr/10 over the run; plateau: multiply it by --lr-decay after "
    "each epoch without a lower dev loss.",
)
@click.option(
    "--lr-decay",
    type=click.FloatRange(0, 1, min_open=True),
    default=_L.lr_decay,
    show_default=True,
    help="--lr-schedule plateau: the factor.",
)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=_L.weight_decay, show_default=True)
@click.option(
    "--clip", type=click.FloatRange(min=0), default=_L.clip, show_default=True, help="Gradient-norm clipping (0: off)."
)
@click.option(
    "--on-nonfinite",
    type=click.Choice(list(NONFINITE)),
    default=_L.on_nonfinite,
    show_default=True,
    help=NONFINITE_HELP,
)
@click.option("--seed", type=int, default=_L.seed, show_default=True)
@click.option(
    "--max-train-tokens",
    type=click.IntRange(0),
    default=_L.max_train_tokens,
    show_default=True,
    help="Train on the first N tokens only (0: all).",
)
@click.option("--dev-split", type=click.FloatRange(0, 0.9, min_open=True), default=_L.dev_split, show_default=True)
@click.option("--lowercase/--keep-case", default=_L.lowercase, show_default=True, help="Word level only.")
@click.option(
    "--max-vocab",
    type=click.IntRange(3),
    default=_L.max_vocab,
    show_default=True,
    help="Word level only: entries with <pad> and <unk> (whitespace: the corpus's types, <unk> and <eos> "
    "included; <pad> is extra).",
)
@click.option("--min-freq", type=click.IntRange(1), default=_L.min_freq, show_default=True, help="Word level only.")
@click.option("--encoding", default=_L.encoding, show_default=True)
@click.option("--threads", type=click.IntRange(0), default=_L.threads, show_default=True, help=THREADS_HELP)
@click.option("--resume", "resume", is_flag=True, help=RESUME_HELP)
@click.option("--force", is_flag=True, help=FORCE_HELP)
def train_lm_cmd(train_path, dev_path, out_dir, resume, force, **options):
    """Train a language model (text generation, next-word suggestion)."""
    from .train_lm import train_lm

    result = train_lm(train_path, out_dir, LMTrainConfig(**options), dev_path=dev_path, resume=resume, force=force)
    click.echo(
        f"best dev loss {result.dev_loss:.4f} nats/token (epoch {result.best_epoch}); checkpoint: {result.out_dir}"
    )


_S = defaults(Seq2SeqTrainConfig)


@train.command("seq2seq")
@click.option("--train", "train_path", required=True, type=click.Path(), help="Pairs file (see --format).")
@click.option(
    "--dev",
    "dev_path",
    type=click.Path(),
    help="Dev pairs (same format). Default: a seeded --dev-split of TRAIN, grouped by source.",
)
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Checkpoint directory to write.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tsv", "cmudict", "tatoeba"]),
    default="tsv",
    show_default=True,
    help="tsv: source<TAB>target; cmudict: 'word PH ON ES'; tatoeba: TSV with odd spaces normalised.",
)
@click.option("--keep-stress", is_flag=True, help="cmudict: keep the 0/1/2 stress digits on vowels.")
@click.option("--source-level", type=click.Choice(list(LEVELS)), default=_S.source_level, show_default=True)
@click.option("--target-level", type=click.Choice(list(LEVELS)), default=_S.target_level, show_default=True)
@click.option("--source-lowercase/--source-keep-case", default=_S.source_lowercase, show_default=True)
@click.option("--target-lowercase/--target-keep-case", default=_S.target_lowercase, show_default=True)
@click.option("--cell", type=click.Choice(list(CELL_TYPES)), default=_S.cell, show_default=True)
@click.option("--layers", type=click.IntRange(1, 8), default=_S.layers, show_default=True)
@click.option(
    "--hidden",
    type=click.IntRange(1, 4096),
    default=_S.hidden,
    show_default=True,
    help="Decoder width; a bidirectional encoder uses hidden/2 per direction.",
)
@click.option("--embed", type=click.IntRange(1, 4096), default=_S.embed, show_default=True)
@click.option("--bidirectional/--unidirectional", default=_S.bidirectional, show_default=True, help="Encoder only.")
@click.option("--attention", type=click.Choice(list(ATTENTIONS)), default=_S.attention, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 0.95), default=_S.dropout, show_default=True)
@click.option(
    "--teacher-forcing",
    type=click.FloatRange(0, 1, min_open=True),
    default=_S.teacher_forcing,
    show_default=True,
    help="Chance of feeding the reference token (below 1: scheduled sampling, slower).",
)
@click.option(
    "--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=_S.label_smoothing, show_default=True
)
@click.option("--epochs", type=click.IntRange(1, 1000), default=_S.epochs, show_default=True)
@click.option(
    "--patience",
    type=click.IntRange(0),
    default=_S.patience,
    show_default=True,
    help="Stop after this many epochs without a better dev result (0: never).",
)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=_S.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_S.lr, show_default=True)
@click.option("--lr-schedule", type=click.Choice(list(LR_SCHEDULES)), default=_S.lr_schedule, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=_S.weight_decay, show_default=True)
@click.option(
    "--clip", type=click.FloatRange(min=0), default=_S.clip, show_default=True, help="Gradient-norm clipping (0: off)."
)
@click.option(
    "--on-nonfinite",
    type=click.Choice(list(NONFINITE)),
    default=_S.on_nonfinite,
    show_default=True,
    help=NONFINITE_HELP,
)
@click.option("--seed", type=int, default=_S.seed, show_default=True)
@click.option(
    "--best-by",
    type=click.Choice(list(BEST_BY)),
    default=_S.best_by,
    show_default=True,
    help="Dev criterion of the best epoch (accuracy: exact match of greedy outputs).",
)
@click.option(
    "--dev-decode",
    type=click.IntRange(0),
    default=_S.dev_decode,
    show_default=True,
    help="Greedy-decode only the first N dev sources each epoch (0: all).",
)
@click.option(
    "--max-source-len",
    type=click.IntRange(0),
    default=_S.max_source_len,
    show_default=True,
    help="Drop training pairs with longer sources, in tokens (0: no limit).",
)
@click.option("--max-target-len", type=click.IntRange(0), default=_S.max_target_len, show_default=True)
@click.option("--source-max-vocab", type=click.IntRange(5), default=_S.source_max_vocab, show_default=True)
@click.option("--target-max-vocab", type=click.IntRange(5), default=_S.target_max_vocab, show_default=True)
@click.option("--min-freq", type=click.IntRange(1), default=_S.min_freq, show_default=True, help="Word level only.")
@click.option("--dev-split", type=click.FloatRange(0, 0.9, min_open=True), default=_S.dev_split, show_default=True)
@click.option("--encoding", default=_S.encoding, show_default=True)
@click.option("--threads", type=click.IntRange(0), default=_S.threads, show_default=True, help=THREADS_HELP)
@click.option(
    "--init",
    type=click.Path(),
    default=_S.init,
    help="Fine-tune: start from this seq2seq checkpoint (its weights, vocabularies and architecture).",
)
@click.option(
    "--teacher",
    default=_S.teacher,
    help=TEACHER_HELP + " Its beam outputs for the training sources become targets (Kim & Rush 2016).",
)
@click.option("--distill-beam", type=click.IntRange(1, 64), default=_S.distill_beam, show_default=True)
@click.option(
    "--distill-int8/--distill-fp32",
    default=_S.distill_int8,
    show_default=True,
    help="--teacher: decode with the teacher bundle's int8 graphs (faster; a checkpoint is exported with them).",
)
@click.option(
    "--distill-mix",
    type=click.Choice(list(DISTILL_MIXES)),
    default=_S.distill_mix,
    show_default=True,
    help="keep-references: train on the references and the teacher's outputs; replace: the outputs only.",
)
@click.option("--nproc", type=click.IntRange(1, 256), default=_S.nproc, show_default=True, help=NPROC_HELP)
@click.option("--resume", "resume", is_flag=True, help=RESUME_HELP)
@click.option("--force", is_flag=True, help=FORCE_HELP)
def train_seq2seq_cmd(train_path, dev_path, out_dir, fmt, keep_stress, resume, force, **options):
    """Train an encoder-decoder (grapheme-to-phoneme, translation)."""
    from .train_seq2seq import train_seq2seq

    result = train_seq2seq(
        train_path,
        out_dir,
        Seq2SeqTrainConfig(**options),
        dev_path=dev_path,
        fmt=fmt,
        keep_stress=keep_stress,
        resume=resume,
        force=force,
    )
    d = result.dev
    click.echo(
        f"best epoch {result.best_epoch}: dev exact match {d['accuracy']:.4f}, token error rate "
        f"{d['token_error_rate']:.4f}, BLEU {d['bleu']:.2f}; checkpoint: {result.out_dir}"
    )
