"""Which device profile (``fedprune.device.budget``) each client of an experiment has."""

from __future__ import annotations

from fedprune.config import ExperimentConfig
from fedprune.device.budget import DeviceProfile, assign_profiles


def profiles_of(cfg: ExperimentConfig) -> dict[int, DeviceProfile | None]:
    """Client id -> device profile, from ``device_profiles`` (None: no budget)."""
    profiles = [DeviceProfile.from_mapping(p) for p in cfg.device_profiles]
    return assign_profiles(profiles, cfg.num_clients)


def client_profile(cfg: ExperimentConfig, partition: int) -> DeviceProfile | None:
    """The device profile of client ``partition`` (None: no budget)."""
    return profiles_of(cfg).get(partition)


def profile_threads(cfg: ExperimentConfig) -> dict[int, int]:
    """Client id -> the thread count its personal model is timed with (1 without a profile)."""
    return {client: (p.threads if p else 1) for client, p in profiles_of(cfg).items()}
