"""Unstructured masks: which parameters are prunable, applying masks, bitmap codec."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

import numpy as np
import torch
from torch import nn

from fedprune.models import find_family
from fedprune.models.family import layer_weights

Masks = dict[str, torch.Tensor]


def prunable_names(model: nn.Module) -> list[str]:
    """The weights unstructured pruning may prune, as the model's family says (BERT: the
    encoder's ``Linear`` weights); every ``Linear``/``Conv`` weight for MLP, CNN and any
    model no family knows."""
    family = find_family(model)
    return layer_weights(model) if family is None else family.prunable_names(model)


def full_masks(model: nn.Module) -> Masks:
    """All-true masks for every prunable weight (nothing pruned yet)."""
    params = dict(model.named_parameters())
    return {name: torch.ones_like(params[name], dtype=torch.bool) for name in prunable_names(model)}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero every pruned entry of ``model`` in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))


def mask_sparsity(masks: Masks, names: list[str] | None = None) -> float:
    """Fraction of pruned entries over the masked weight matrices (>= 2-D; biases not counted),
    only those in ``names`` when given (``prunable_names``: a pruned residual width also masks
    the embeddings, which the sparsity does not count)."""
    weights = [mask for name, mask in masks.items() if mask.dim() >= 2 and (names is None or name in names)]
    total = sum(mask.numel() for mask in weights)
    if total == 0:
        return 0.0
    kept = sum(int(mask.sum()) for mask in weights)
    return 1.0 - kept / total


def encode_bitmap(mask: torch.Tensor) -> np.ndarray:
    """Pack a boolean mask into bits (1 bit per entry, row-major, numpy.packbits)."""
    return np.packbits(mask.detach().cpu().numpy().astype(bool).reshape(-1))


def decode_bitmap(bits: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``encode_bitmap`` for a mask of ``shape``."""
    count = int(np.prod(shape))
    if bits.dtype != np.uint8 or bits.size != (count + 7) // 8:
        raise ValueError(f"bitmap of {bits.size} bytes does not fit a mask of shape {shape}")
    flat = np.unpackbits(bits, count=count).astype(bool)
    return torch.from_numpy(flat.reshape(shape))


#: masks bit-packed: per name, the mask's shape and its ``encode_bitmap`` bytes
PackedMasks = dict[str, tuple[tuple[int, ...], np.ndarray]]


def pack_masks(masks: Masks) -> PackedMasks:
    """``masks`` at 1 bit per entry (a torch bool tensor takes 1 byte per entry)."""
    return {name: (tuple(mask.shape), encode_bitmap(mask)) for name, mask in masks.items()}


def unpack_masks(packed: PackedMasks) -> Masks:
    """Inverse of ``pack_masks``: boolean tensors."""
    return {name: decode_bitmap(bits, shape) for name, (shape, bits) in packed.items()}


def packed_bytes(packed: PackedMasks) -> int:
    """Bytes the packed bits take (shapes aside)."""
    return sum(bits.nbytes for _, bits in packed.values())


class PackedMaskStore(MutableMapping[int, Masks]):
    """A dict of masks by key (e.g. client) that keeps them bit-packed: storing packs, reading
    unpacks a fresh copy. Memory per mask: one bit per entry."""

    def __init__(self) -> None:
        self._packed: dict[int, PackedMasks] = {}

    def __getitem__(self, key: int) -> Masks:
        return unpack_masks(self._packed[key])

    def __setitem__(self, key: int, masks: Masks) -> None:
        self._packed[key] = pack_masks(masks)

    def __delitem__(self, key: int) -> None:
        del self._packed[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)

    def nbytes(self) -> int:
        """Bytes of every stored mask's bits."""
        return sum(packed_bytes(p) for p in self._packed.values())
