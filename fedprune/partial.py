"""Partial updates: which entries of the model are shared with the server in a round.

Two kinds of personal parameters, combinable with any pruning method:

- personal layers (FedPer, Arivazhagan et al. 2019; FedRep, Collins et al. 2021):
  ``personal_layers = "head"`` keeps the classifier head (``head.*`` or
  ``[...].classifier.*``) on the client forever;
- random partial updates (SRP-pFed): ``personal_fraction = p`` makes a random
  fraction p of every other tensor's entries personal, drawn anew each round from
  (seed, client, round), so client and server derive the same split without
  sending it;
- frozen tensors (``freeze_embeddings``): never trained, never sent.

Shared masks are ``True`` where an entry travels; tensors absent are fully shared.
Pure torch, no Flower import.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping

import torch

from fedprune.pruning.masks import Masks

PERSONAL_LAYERS = ("none", "head")
HEAD_MODULES = frozenset({"head", "classifier"})


def is_head(name: str) -> bool:
    """True for parameters of the classifier head (a module named ``head`` or ``classifier``)."""
    return not HEAD_MODULES.isdisjoint(name.split(".")[:-1])


def is_embedding(name: str) -> bool:
    """True for parameters of a transformer's embeddings module (``[...].embeddings.*``)."""
    return "embeddings" in name.split(".")[:-1]


def nothing_of(template: Mapping[str, torch.Tensor], names: Collection[str]) -> Masks:
    """All-false masks for ``names``: tensors that do not travel at all (``wire.pack`` leaves them out)."""
    return {name: torch.zeros(template[name].shape, dtype=torch.bool) for name in names}


def shared_masks(template: Mapping[str, torch.Tensor], personal_layers: str, personal_fraction: float,
                 seed: int, client: int, server_round: int, frozen: Collection[str] = ()) -> Masks:
    """The entries of each tensor that client ``client`` shares in ``server_round``.

    ``frozen`` tensors never change, so they never travel (both sides hold their
    initial values).
    """
    masks: Masks = {}
    generator = torch.Generator().manual_seed(zlib.crc32(f"srp/{seed}/{client}/{server_round}".encode()))
    for name, tensor in template.items():
        if name in frozen or (personal_layers == "head" and is_head(name)):
            masks[name] = torch.zeros(tensor.shape, dtype=torch.bool)
        elif personal_fraction > 0:
            masks[name] = torch.rand(tensor.shape, generator=generator) >= personal_fraction
    return masks


def intersect(first: Masks | None, second: Masks | None) -> Masks:
    """Entry-wise AND of two mask sets; a tensor missing from one set counts as all-true."""
    first, second = first or {}, second or {}
    result = dict(first)
    for name, mask in second.items():
        result[name] = result[name] & mask if name in result else mask
    return result
