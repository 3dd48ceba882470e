"""Training and evaluation of a (possibly masked) model on local tensors: pure torch."""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch import nn

from fedprune.pruning.masks import Masks, apply_masks

OPTIMIZERS = ("sgd", "adamw")


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    optimizer: str = "sgd",
    learning_rate: float,
    momentum: float,
    masks: Masks | None,
    generator: torch.Generator,
    trainable: Collection[str] | None = None,
    after_backward: Callable[[], None] | None = None,
) -> float:
    """``optimizer`` (``sgd`` with momentum, or ``adamw``, fresh state per call) for
    ``epochs`` over ``(x, y)``; returns the mean training loss.

    Pruned entries stay exactly zero: their gradients are zeroed before every
    step and the masks are re-applied after it (momentum cannot revive them).
    ``trainable`` limits the update to those parameter names (others stay fixed);
    ``after_backward`` runs after every backward pass (e.g. movement scores).
    """
    params = dict(model.named_parameters())
    chosen = [p for name, p in params.items() if trainable is None or name in trainable]
    if not chosen or epochs == 0:
        return float("nan")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: unknown {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    step = (torch.optim.SGD(chosen, lr=learning_rate, momentum=momentum) if optimizer == "sgd"
            else torch.optim.AdamW(chosen, lr=learning_rate))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            model.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            if after_backward is not None:
                after_backward()
            if masks:
                for name, mask in masks.items():
                    grad = params[name].grad
                    if grad is not None:
                        grad.mul_(mask)
            step.step()
            if masks:
                apply_masks(model, masks)
            total += loss.item() * len(batch)
            count += len(batch)
    return total / max(count, 1)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``."""
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return correct / max(len(y), 1)
