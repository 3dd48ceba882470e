"""The experiment's models, built from an ``ExperimentConfig`` through the model's family.

``new_model(cfg, variant)`` builds the model a method trains (``full``: the configured
model; ``small-dense``: its widths shrunk to the sparse models' kept parameter count);
``initial_model`` seeds it so that every method starts from the same weights. The
names a config makes special (personal head, frozen embeddings), the cost-measurement
inputs and the rebuilt personal models live here too.
"""

from __future__ import annotations

import torch
from torch import nn

from fedprune.config import ExperimentConfig, dataset_args
from fedprune.data.datasets import TEXT, DatasetInfo, load_dataset
from fedprune.models import family_named
from fedprune.models.family import ModelFamily
from fedprune.models.small_dense import MODEL_VARIANTS, shrink_widths
from fedprune.models.text import random_tokens, vocab_size
from fedprune.partial import Sharing
from fedprune.pruning.masks import Masks, apply_masks, prunable_names
from fedprune.pruning.squeeze import squeeze

_SHRUNK: dict[tuple, list[int]] = {}


def _info(cfg: ExperimentConfig) -> DatasetInfo:
    return load_dataset(*dataset_args(cfg))[1]


def _family(cfg: ExperimentConfig) -> ModelFamily:
    return family_named(cfg.model)


def sparse_kept_parameters(cfg: ExperimentConfig) -> int:
    """Parameters a sparse model keeps at ``final_sparsity``: kept prunable weights + the rest."""
    model = new_model(cfg)
    prunable = set(prunable_names(model))
    return sum(round(p.numel() * (1 - cfg.final_sparsity)) if name in prunable else p.numel()
               for name, p in model.named_parameters())


def small_dense_widths(cfg: ExperimentConfig) -> list[int]:
    """The configured widths scaled by one factor to ``sparse_kept_parameters`` (cached per process)."""
    family, info = _family(cfg), _info(cfg)
    widths = family.widths(cfg)
    if widths is None:
        raise ValueError(f"model: {cfg.model} has no widths to shrink (no small-dense)")
    target = sparse_kept_parameters(cfg)
    key = (dataset_args(cfg), cfg.model, tuple(widths), target)
    if key not in _SHRUNK:
        _SHRUNK[key] = shrink_widths(lambda w: family.build(cfg, info, w), widths, target)
    return list(_SHRUNK[key])


def new_model(cfg: ExperimentConfig, variant: str = "full") -> nn.Module:
    """The model of ``variant`` (``full`` or ``small-dense``), freshly initialised from the
    torch RNG; transformers are the pretrained model with a classifier seeded by ``seed``."""
    if variant not in MODEL_VARIANTS:
        raise ValueError(f"model variant {variant!r}; allowed: {', '.join(MODEL_VARIANTS)}")
    widths = small_dense_widths(cfg) if variant == "small-dense" else None
    return _family(cfg).build(cfg, _info(cfg), widths)


def initial_model(cfg: ExperimentConfig, variant: str = "full") -> nn.Module:
    """The shared starting model: the same weights for every method with the same seed."""
    torch.manual_seed(cfg.seed)
    return new_model(cfg, variant)


def frozen_names(cfg: ExperimentConfig, model: nn.Module) -> list[str]:
    """State-dict names that never train nor travel (``freeze_embeddings``: the embeddings)."""
    return _family(cfg).embedding_names(model) if cfg.freeze_embeddings else []


def personal_names(cfg: ExperimentConfig, model: nn.Module) -> list[str]:
    """State-dict names that never leave the client (``personal_layers = "head"``: the head)."""
    return _family(cfg).head_names(model) if cfg.personal_layers == "head" else []


def sharing(cfg: ExperimentConfig, model: nn.Module) -> Sharing:
    """What each client of ``cfg`` shares per round (personal head, frozen embeddings, SRP-pFed)."""
    template = {k: v.detach() for k, v in model.state_dict().items()}
    return Sharing(template, frozenset(personal_names(cfg, model)), frozenset(frozen_names(cfg, model)),
                   cfg.personal_fraction, cfg.seed)


def cost_inputs(cfg: ExperimentConfig, model: nn.Module, batch: int) -> torch.Tensor:
    """A seeded input batch for timing and FLOP counts: random features, or random tokens
    (``latency_tokens`` long, no padding) for text models."""
    if _family(cfg).inputs == TEXT:
        return random_tokens(batch, cfg.latency_tokens, vocab_size(model))
    return torch.randn(batch, *_info(cfg).input_shape, generator=torch.Generator().manual_seed(0))


def personal_model(cfg: ExperimentConfig, variant: str, global_state: dict[str, torch.Tensor],
                   masks: Masks | None, units: Masks | None) -> nn.Module:
    """The model a client would run: the global tensors under its mask, squeezed if structured.

    (Personal tensors that never left the client are not known here; they change
    values, not cost.)
    """
    model = new_model(cfg, variant)
    model.load_state_dict(global_state)
    if masks:
        apply_masks(model, masks)
    if units:
        model = squeeze(model, units)
    return model.eval()
