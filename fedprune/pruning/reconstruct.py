"""Refit the layers that read pruned units, so a squeezed model reproduces its dense teacher.

Removing units of a group also removes their contribution to the layer that reads
them (the *consumer*: the next ``Linear``, or ``attention.output.dense`` and
``output.dense`` in a BERT layer). ``reconstruct`` refits every ``nn.Linear`` consumer
of the squeezed model by ridge regression on calibration inputs: its weights and bias
are chosen so that, given the squeezed model's own input at that layer, its output
matches the teacher's output of the same layer. Consumers are refit in forward order
inside a single forward pass (a forward hook solves and replaces the output), so each
refit also absorbs the error left by the layers below it. This is the layer-wise
reconstruction of post-training pruning (Kwon et al. 2022, "A Fast Post-Training
Pruning Framework for Transformers", mask tuning by least squares), applied to whole
columns; hand-written, since torch has no layer-wise least-squares refit.

Only ``Linear`` consumers are refit (a conv consumer would need its inputs unfolded);
padding tokens of packed text inputs are left out of the fit. A pruned residual width
(``prune_hidden``) makes every projection that reads it a consumer: query/key/value,
the FFN input and the pooler are refit too, towards the teacher's outputs on the kept
rows; LayerNorms and embeddings are not refit.
"""

from __future__ import annotations

import torch
from torch import nn

from fedprune.models import family_of
from fedprune.models.structure import UnitGroup, UnitMasks, dim_keep, unit_groups


def consumer_linears(model: nn.Module, groups: list[UnitGroup] | None = None) -> list[str]:
    """Names of the ``nn.Linear`` modules whose input columns belong to a unit group
    (``groups``, default ``unit_groups(model)``), in forward order."""
    modules = dict(model.named_modules())
    names = []
    for group in groups if groups is not None else unit_groups(model):
        for piece in group.slices:
            module = piece.param.rsplit(".", 1)[0]
            if piece.dim == 1 and isinstance(modules.get(module), nn.Linear) and module not in names:
                names.append(module)
    return names


def _rows(value: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """A hooked ``(batch, [tokens,] features)`` tensor as ``(rows, features)``, real tokens only."""
    if value.dim() == 3 and token_mask is not None:
        return value[token_mask.bool()]
    return value.reshape(-1, value.shape[-1])


@torch.no_grad()
def ridge_refit(layer: nn.Linear, inputs: torch.Tensor, targets: torch.Tensor, alpha: float) -> None:
    """Set ``layer``'s weight and bias to argmin ||inputs W^T + b - targets||^2 + lam ||[W b] - [W0 b0]||^2.

    ``lam = alpha * mean(diag(G))`` with ``G`` the Gram matrix of ``[inputs, 1]``, so
    ``alpha`` is scale-free; the penalty pulls towards the current values, not to zero.
    """
    rows, width = inputs.shape
    design = torch.cat([inputs, torch.ones(rows, 1, dtype=inputs.dtype)], dim=1).double()
    current = torch.cat([layer.weight, layer.bias[:, None]], dim=1).double()
    gram = design.T @ design
    lam = alpha * gram.diagonal().mean()
    solved = torch.linalg.solve(gram + lam * torch.eye(width + 1, dtype=torch.double),
                                design.T @ targets.double() + lam * current.T).T
    layer.weight.copy_(solved[:, :width].to(layer.weight.dtype))
    layer.bias.copy_(solved[:, width].to(layer.bias.dtype))


@torch.no_grad()
def reconstruct(small: nn.Module, teacher: nn.Module, units: UnitMasks, x: torch.Tensor,
                alpha: float = 0.1) -> list[str]:
    """Refit ``small``'s Linear consumers of pruned units towards ``teacher`` on inputs ``x``.

    ``small`` is ``teacher`` squeezed to ``units``. Both run in eval mode on ``x`` as one
    batch; a consumer whose own outputs are units of a group (an MLP's middle layer)
    is fit to the teacher's outputs of the kept units only. Returns the names of the
    refit layers; layers without a bias are left alone.
    """
    groups = [group for group in unit_groups(teacher) if group.name in units]  # groups left whole read nothing pruned
    teacher_modules, small_modules = dict(teacher.named_modules()), dict(small.named_modules())
    names = [name for name in consumer_linears(teacher, groups) if small_modules[name].bias is not None]
    kept_rows = {name: dims[0] for name, dims in dim_keep(teacher, groups, units).items() if 0 in dims}
    token_mask = family_of(teacher).token_mask(teacher, x)
    wanted: dict[str, torch.Tensor] = {}

    def remember(name: str):
        def hook(_m: nn.Module, _a: tuple, out: torch.Tensor) -> None:
            rows = kept_rows.get(f"{name}.weight")
            wanted[name] = _rows(out if rows is None else out[..., rows], token_mask)
        return hook

    def refit(name: str):
        def hook(layer: nn.Linear, args: tuple, _out: torch.Tensor) -> torch.Tensor:
            ridge_refit(layer, _rows(args[0], token_mask), wanted.pop(name), alpha)
            return nn.functional.linear(args[0], layer.weight, layer.bias)
        return hook

    modes = (teacher.training, small.training)
    handles = []
    try:
        teacher.eval(), small.eval()
        handles = [teacher_modules[n].register_forward_hook(remember(n)) for n in names]
        teacher(x)
        for handle in handles:
            handle.remove()
        handles = [small_modules[n].register_forward_hook(refit(n)) for n in names]
        small(x)
    finally:
        for handle in handles:
            handle.remove()
        teacher.train(modes[0]), small.train(modes[1])
    return names
