"""Family adapter of BERT-family encoders (``BertModel``, ``BertForSequenceClassification``,
fedprune's ``TextClassifier`` around them, and look-alikes with
``encoder.layer[i].attention.self.query`` ...).

Unit groups, per layer: ``heads`` (query/key/value rows + bias in blocks of ``head_dim``,
``attention.output.dense`` columns in blocks of ``head_dim``) and ``ffn``
(``intermediate.dense`` rows + bias, ``output.dense`` columns); then one global group,
``hidden`` (kind ``HIDDEN``), the residual width shared by every layer: the columns of the
word, position and token-type embeddings, the weight and bias of every LayerNorm (the
embeddings' and two per layer), the input columns of query/key/value and
``intermediate.dense``, the output rows (+ bias) of ``attention.output.dense`` and
``output.dense``, and the input columns of the pooler. The pooler's output and the
classifier stay whole. Structured pruners prune ``hidden`` only when asked
(``prune_hidden``); a unit mask without it keeps the full width.

With heads and width both pruned, query/key/value map the kept hidden dims to
``heads * head_dim`` and the output projection maps back to the kept hidden dims:
``heads * head_dim`` need not equal the width any more, and BERT's forward reads neither.

Activations: an FFN neuron is the output of ``intermediate`` (after the activation
function); a head is the input of ``attention.output.dense`` (the per-head context
vectors) reduced per head by the L2 norm over ``head_dim``; a hidden dim is the output of
the last layer (its ``output.LayerNorm``, what the pooler reads). All are averaged over
the non-padding tokens (``attention_mask == 1``; every token when no mask is given): the
whole sequence, not just ``[CLS]``, because lower layers carry most of their signal
outside ``[CLS]``. The hidden group is listed last: MI scores it against the labels, and
the last FFN against the kept hidden dims.

Unstructured pruning prunes the encoder's ``Linear`` weights only; the classifier is the
head (personal layers), the embeddings module is what ``freeze_embeddings`` freezes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from fedprune.models.family import ModelFamily, state_names
from fedprune.models.structure import HIDDEN, ActivationSource, Slice, UnitGroup, UnitMasks, linear_rows
from fedprune.models.text import TextClassifier, load_pretrained

if TYPE_CHECKING:
    from fedprune.config import ExperimentConfig
    from fedprune.data.datasets import DatasetInfo

HEADS, FFN = "heads", "ffn"


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(prefix, layers)`` of the first BERT-style encoder inside ``model``, else None
    (``prefix`` is the path of the layer list, e.g. ``net.bert.encoder.layer``)."""
    for name, module in model.named_modules():
        layers = getattr(getattr(module, "encoder", None), "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and _is_bert_layer(layers[0]):
            prefix = f"{name}.encoder.layer" if name else "encoder.layer"
            return prefix, layers
    return None


def _is_bert_layer(layer: nn.Module) -> bool:
    attention = getattr(layer, "attention", None)
    return (
        hasattr(getattr(attention, "self", None), "query")
        and hasattr(getattr(attention, "output", None), "dense")
        and hasattr(getattr(layer, "intermediate", None), "dense")
        and hasattr(getattr(layer, "output", None), "dense")
    )


def _encoder(model: nn.Module) -> tuple[str, nn.ModuleList]:
    found = encoder_layers(model)
    if found is None:
        raise TypeError(f"{type(model).__name__} has no BERT-style encoder")
    return found


class BertFamily(ModelFamily):
    """BERT-family encoders with a sequence-classification head."""

    name = "transformer"
    inputs = "text"  # DatasetInfo.inputs of the text datasets

    def owns(self, model: nn.Module) -> bool:
        return encoder_layers(model) is not None

    def build(self, cfg: ExperimentConfig, info: DatasetInfo, widths: list[int] | None = None) -> nn.Module:
        """The pretrained ``cfg.pretrained`` with a new classifier seeded by ``cfg.seed``."""
        if widths is not None:
            raise ValueError("model: transformer widths cannot be changed (no small-dense)")
        return load_pretrained(cfg.pretrained, info.num_classes, cfg.seed)

    def unit_groups(self, model: nn.Module) -> list[UnitGroup]:
        prefix, layers = _encoder(model)
        groups = []
        for index, layer in enumerate(layers):
            base = f"{prefix}.{index}"
            layer = cast(Any, layer)  # a Hugging Face BERT layer (checked by encoder_layers)
            attention = layer.attention.self
            head_dim = attention.attention_head_size
            qkv = [f"{base}.attention.self.{part}" for part in ("query", "key", "value")]
            groups.append(UnitGroup(
                name=f"{base}.{HEADS}",
                size=attention.query.out_features // head_dim,
                slices=tuple(Slice(f"{proj}.{kind}", 0, head_dim) for proj in qkv for kind in ("weight", "bias"))
                + (Slice(f"{base}.attention.output.dense.weight", 1, head_dim),),
                kind=HEADS,
                source=ActivationSource(f"{base}.attention.output.dense", "input", "head_norm_token_mean", head_dim),
            ))
            groups.append(UnitGroup(
                name=f"{base}.{FFN}",
                size=layer.intermediate.dense.out_features,
                slices=(*linear_rows(f"{base}.intermediate.dense"), Slice(f"{base}.output.dense.weight", 1)),
                kind=FFN,
                source=ActivationSource(f"{base}.intermediate", reduce="token_mean"),
            ))
        groups.append(self._hidden_group(model, prefix, len(layers)))
        return groups

    def _hidden_group(self, model: nn.Module, prefix: str, count: int) -> UnitGroup:
        """The residual width: one unit per hidden dim, owned across the whole model."""
        backbone = self._backbone(model)
        at = f"{backbone}." if backbone else ""
        embeddings = f"{at}embeddings"
        params = dict(model.named_parameters())
        norms = [f"{embeddings}.LayerNorm"]
        pieces = [Slice(name, 1, counted=False) for name in (f"{embeddings}.{kind}_embeddings.weight"
                  for kind in ("word", "position", "token_type")) if name in params]
        for index in range(count):
            base = f"{prefix}.{index}"
            pieces += [Slice(f"{base}.attention.self.{part}.weight", 1) for part in ("query", "key", "value")]
            pieces += [*linear_rows(f"{base}.attention.output.dense"), Slice(f"{base}.intermediate.dense.weight", 1),
                       *linear_rows(f"{base}.output.dense")]
            norms += [f"{base}.attention.output.LayerNorm", f"{base}.output.LayerNorm"]
        pieces += [Slice(f"{norm}.{kind}", 0) for norm in norms for kind in ("weight", "bias")]
        if f"{at}pooler.dense.weight" in params:
            pieces.append(Slice(f"{at}pooler.dense.weight", 1, counted=False))
        width = params[f"{embeddings}.word_embeddings.weight"].shape[1]
        return UnitGroup(name=f"{at}{HIDDEN}", size=width, slices=tuple(pieces), kind=HIDDEN,
                         source=ActivationSource(norms[-1], reduce="token_mean"))

    def prunable_names(self, model: nn.Module) -> list[str]:
        """The encoder's ``Linear`` weights (embeddings, pooler and classifier stay dense)."""
        prefix, _ = _encoder(model)
        encoder = prefix.removesuffix(".layer")
        return [f"{encoder}.{name}.weight" for name, module in model.get_submodule(encoder).named_modules()
                if isinstance(module, nn.Linear)]

    def _backbone(self, model: nn.Module) -> str:
        """Path of the module holding ``embeddings`` and ``encoder`` ('' for a bare encoder)."""
        prefix, _ = _encoder(model)
        return prefix.removesuffix("encoder.layer").removesuffix(".")

    def head_names(self, model: nn.Module) -> list[str]:
        """The ``classifier`` of a sequence classifier (none for a bare encoder)."""
        module = "net.classifier" if isinstance(model, TextClassifier) else "classifier"
        try:
            return state_names(model, module)
        except AttributeError:
            return []

    def embedding_names(self, model: nn.Module) -> list[str]:
        backbone = self._backbone(model)
        return state_names(model, f"{backbone}.embeddings" if backbone else "embeddings")

    def token_mask(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor | None:
        """Row 1 of ``TextClassifier``'s packed ``(batch, 2, tokens)`` inputs."""
        if isinstance(model, TextClassifier) and inputs.dim() == 3:
            return inputs[:, 1]
        return None

    def resize(self, model: nn.Module, groups: list[UnitGroup], unit_masks: UnitMasks) -> None:
        """Each attention module's head count (BERT reshapes with -1 heads, so only these two
        attributes and the sliced projections change)."""
        for group in groups:
            if group.kind != HEADS:
                continue
            mask = unit_masks.get(group.name)
            kept = group.size if mask is None else int(mask.sum())
            attention = cast(Any, model.get_submodule(group.name.removesuffix(f".{HEADS}") + ".attention.self"))
            attention.num_attention_heads = kept
            attention.all_head_size = kept * attention.attention_head_size
