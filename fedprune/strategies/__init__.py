"""Aggregation rules: Flower Strategy subclasses."""

from fedprune.strategies.dense import DenseFedAvg
from fedprune.strategies.local import LocalOnly
from fedprune.strategies.masked import MaskedFedAvg, masked_mean
from fedprune.strategies.personalized import PersonalizedStrategy, UnitStructure

__all__ = ["DenseFedAvg", "LocalOnly", "MaskedFedAvg", "PersonalizedStrategy", "UnitStructure", "masked_mean"]
