"""Dense FedAvg: the example-weighted mean of full models (McMahan et al. 2017)."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedprune.strategies.personalized import Decoded, PersonalizedStrategy


class DenseFedAvg(PersonalizedStrategy):
    """Every client gets and returns the full model; Flower's FedAvg mean combines them."""

    def combine(self, decoded: list[Decoded]) -> dict[str, torch.Tensor]:
        """Flower's ``aggregate_arrayrecords`` over the (already checked) replies."""
        records = [RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": weight})})
                   for state, _, weight in decoded]
        merged = aggregate_arrayrecords(records, "num-examples").to_torch_state_dict()
        return {k: v.to(self.template[k].dtype) for k, v in merged.items()}
