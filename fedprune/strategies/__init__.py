"""Aggregation strategies: Flower ``Strategy`` subclasses, one per way of combining replies.

``PersonalizedStrategy`` holds what every method shares (sampling, payloads, reply
validation, evaluation cadence); ``DenseFedAvg``, ``MaskedFedAvg`` and ``LocalOnly`` only
combine. Per-entry rules for ``MaskedFedAvg`` live in ``rules.py``.
"""

from fedprune.strategies.dense import DenseFedAvg
from fedprune.strategies.local import LocalOnly
from fedprune.strategies.masked import MaskedFedAvg
from fedprune.strategies.personalized import PersonalizedStrategy, Rejection, UnitStructure
from fedprune.strategies.rules import AGGREGATION_RULES, masked_mean

__all__ = ["AGGREGATION_RULES", "DenseFedAvg", "LocalOnly", "MaskedFedAvg", "PersonalizedStrategy", "Rejection",
           "UnitStructure", "masked_mean"]
