"""Partial updates: which entries of the model are shared with the server in a round.

Two kinds of personal parameters, combinable with any pruning method:

- personal layers (FedPer, Arivazhagan et al. 2019; FedRep, Collins et al. 2021):
  ``personal_layers = "head"`` keeps the classifier head (the tensors the model family
  names in ``ModelFamily.head_names``) on the client forever;
- random partial updates (SRP-pFed): ``personal_fraction = p`` makes a random
  fraction p of every other tensor's entries personal, drawn anew each round from
  (seed, client, round), so client and server derive the same split without
  sending it;
- frozen tensors (``freeze_embeddings``): never trained, never sent.

Shared masks are ``True`` where an entry travels; tensors absent are fully shared.
Pure torch, no Flower import.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from fedprune.pruning.masks import Masks
from fedprune.seeds import derive_seed

PERSONAL_LAYERS = ("none", "head")


def nothing_of(template: Mapping[str, torch.Tensor], names: Collection[str]) -> Masks:
    """All-false masks for ``names``: tensors that do not travel at all (``wire.pack`` leaves them out)."""
    return {name: torch.zeros(template[name].shape, dtype=torch.bool) for name in names}


def shared_masks(template: Mapping[str, torch.Tensor], personal: Collection[str], personal_fraction: float,
                 seed: int, client: int, server_round: int, frozen: Collection[str] = ()) -> Masks:
    """The entries of each tensor that client ``client`` shares in ``server_round``.

    ``personal`` tensors (personal layers) and ``frozen`` tensors (never changed, so both
    sides hold their initial values) never travel; of the others a random
    ``personal_fraction`` of the entries stays home this round.
    """
    masks: Masks = {}
    generator = torch.Generator().manual_seed(derive_seed(f"srp/{seed}", client, server_round))
    for name, tensor in template.items():
        if name in frozen or name in personal:
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


def merge(received: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
          sent: Masks) -> dict[str, torch.Tensor]:
    """The values a client holds: ``received`` where ``sent`` marks an entry as shared, its
    ``own`` elsewhere; tensors absent from ``sent`` are ``received`` whole."""
    return {k: torch.where(sent[k], v, own[k]) if k in sent else v for k, v in received.items()}


@dataclass(frozen=True)
class Sharing:
    """Which entries a client shares in a round: everything but its personal layers, its frozen
    tensors and (with ``fraction`` > 0) a random part drawn per client and round."""

    template: Mapping[str, torch.Tensor]
    personal: frozenset[str] = frozenset()
    frozen: frozenset[str] = frozenset()
    fraction: float = 0.0
    seed: int = 0

    @property
    def partial(self) -> bool:
        """True if some entries never reach the server."""
        return bool(self.personal or self.frozen or self.fraction > 0)

    def shared(self, client: int, server_round: int) -> Masks:
        """``shared_masks`` of ``client`` in ``server_round`` ({}: everything is shared)."""
        return shared_masks(self.template, self.personal, self.fraction, self.seed, client, server_round,
                            self.frozen)
