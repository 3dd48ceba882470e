"""Experiment configuration: defaults, TOML and ``key=value`` overrides, validation.

Every setting is one flat key (the config reference in README.md lists them).
Validation happens before anything runs; a bad value raises ``ConfigError``
naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from fedprune.data.datasets import DATASET_NAMES, TEXT_DATASETS
from fedprune.data.partition import PARTITIONERS
from fedprune.models.builders import MODEL_NAMES
from fedprune.partial import PERSONAL_LAYERS
from fedprune.pruning.consensus import RULES

from fedprune.methods import METHODS


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the field."""


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: data, model, federation, local training and pruning settings."""

    methods: list[str] = field(default_factory=lambda: ["fedavg", "gmp"])
    seed: int = 0
    # data
    dataset: str = "digits"
    partitioner: str = "pathological"
    num_clients: int = 10
    classes_per_client: int = 2
    dirichlet_alpha: float = 0.5
    test_fraction: float = 0.2
    # text data (dataset = "text" or "amazon")
    data_path: str = ""
    text_column: str = ""
    label_column: str = "label"
    data_config: str = ""
    domains: list[str] = field(default_factory=list)
    clients_per_domain: int = 1
    max_train_examples: int = 0
    max_test_examples: int = 0
    max_length: int = 64
    # model
    model: str = "mlp"
    mlp_widths: list[int] = field(default_factory=lambda: [128, 64])
    cnn_channels: list[int] = field(default_factory=lambda: [16, 32])
    cnn_hidden: int = 64
    pretrained: str = "minilm"
    freeze_embeddings: bool = False
    latency_tokens: int = 128
    # federation
    rounds: int = 20
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    evaluate_every: int = 1
    # local training
    local_epochs: int = 2
    batch_size: int = 32
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.9
    # pruning (gmp: cubic schedule over rounds)
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.8
    prune_start_round: int = 1
    prune_end_round: int = 4
    prune_frequency: int = 1
    # partial updates and personalization
    personal_layers: str = "none"
    fedrep_head_epochs: int = 0
    personal_fraction: float = 0.0
    finetune_epochs: int = 1
    finetune_learning_rate: float = 0.0  # 0: learning_rate
    global_mask: str = "none"
    vote_threshold: float = 0.5
    # device classes: [[device_profiles]] tables (name, max_flops, max_param_bytes, threads,
    # fraction or clients)
    device_profiles: list[dict] = field(default_factory=list)
    # structured pruning (mi, l1-structured, random-structured)
    structured_schedule: str = "gradual"
    mi_estimator: str = "gaussian"
    mi_greedy: bool = False
    mi_allocation: str = "uniform"
    mi_max_rows: int = 2048
    # simulation
    num_cpus_per_client: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every setting (JSON/TOML friendly)."""
        return dataclasses.asdict(self)


_FIELDS = get_type_hints(ExperimentConfig)
_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASET_NAMES,
    "partitioner": PARTITIONERS,
    "model": MODEL_NAMES,
    "personal_layers": PERSONAL_LAYERS,
    "global_mask": ("none", *RULES),
    "structured_schedule": ("gradual", "once"),
    "mi_estimator": ("gaussian", "binned"),
    "mi_allocation": ("uniform", "global", "kind"),
    "optimizer": ("sgd", "adamw"),
}


def _type_name(kind: Any) -> str:
    if get_origin(kind) is list:
        return f"a list of {get_args(kind)[0].__name__}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]


def _coerce(name: str, value: Any) -> Any:
    """Check ``value`` against the field's type; lists also accept a comma string."""
    kind = _FIELDS[name]
    if kind == list[dict]:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{name}: expected a list of tables ([[{name}]] in TOML), got {value!r}")
        return [dict(v) for v in value]
    if get_origin(kind) is list:
        item = get_args(kind)[0]
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
            if item is int:
                try:
                    value = [int(part) for part in value]
                except ValueError:
                    raise ConfigError(f"{name}: expected {_type_name(kind)}, got {value!r}") from None
        if not isinstance(value, list) or not all(
            isinstance(v, item) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{name}: expected {_type_name(kind)}, got {value!r}")
        return list(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{name}: expected {_type_name(kind)}, got {value!r}")
    return value


def _check_ranges(cfg: ExperimentConfig, num_examples: int, num_groups: int) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    for name, allowed in _CHOICES.items():
        value = getattr(cfg, name)
        need(value in allowed, f"{name}: unknown value {value!r}; allowed: {', '.join(allowed)}")
    need(len(cfg.methods) > 0, f"methods: give at least one; allowed: {', '.join(METHODS)}")
    for method in cfg.methods:
        need(method in METHODS, f"methods: unknown method {method!r}; allowed: {', '.join(METHODS)}")
    need(len(set(cfg.methods)) == len(cfg.methods), "methods: a method is listed twice")
    for name in ("initial_sparsity", "final_sparsity"):
        value = getattr(cfg, name)
        need(0.0 <= value < 1.0, f"{name}: {value} is outside the allowed range [0, 1)")
    for name in ("fraction_train", "fraction_evaluate"):
        value = getattr(cfg, name)
        need(0.0 < value <= 1.0, f"{name}: {value} is outside the allowed range (0, 1]")
    need(0.0 < cfg.test_fraction < 1.0, f"test_fraction: {cfg.test_fraction} is outside the allowed range (0, 1)")
    for name in ("rounds", "local_epochs", "batch_size", "evaluate_every", "prune_frequency",
                 "num_clients", "classes_per_client", "cnn_hidden"):
        value = getattr(cfg, name)
        need(value >= 1, f"{name}: {value} must be at least 1")
    need(0.0 <= cfg.personal_fraction < 1.0,
         f"personal_fraction: {cfg.personal_fraction} is outside the allowed range [0, 1)")
    need(0.0 < cfg.vote_threshold <= 1.0,
         f"vote_threshold: {cfg.vote_threshold} is outside the allowed range (0, 1]")
    for name in ("fedrep_head_epochs", "finetune_epochs"):
        need(getattr(cfg, name) >= 0, f"{name}: {getattr(cfg, name)} must be at least 0")
    need(cfg.fedrep_head_epochs == 0 or cfg.personal_layers == "head",
         "fedrep_head_epochs: FedRep needs personal_layers = \"head\"")
    need(not (cfg.mi_greedy and cfg.mi_estimator != "gaussian"),
         "mi_greedy: greedy selection uses Gaussian conditional MI; set mi_estimator = \"gaussian\"")
    need(cfg.mi_max_rows >= 2, f"mi_max_rows: {cfg.mi_max_rows} must be at least 2")
    from fedprune.device.budget import DeviceProfile, assign_profiles

    try:
        assign_profiles([DeviceProfile.from_mapping(p) for p in cfg.device_profiles], cfg.num_clients)
    except ValueError as error:
        raise ConfigError(f"device_profiles: {error}") from None
    post = [m for m in cfg.methods if METHODS[m].post_training]
    need(not (cfg.device_profiles and post),
         f"device_profiles: not supported by {', '.join(post)} (it prunes every client to final_sparsity)")
    need(cfg.prune_start_round >= 1, f"prune_start_round: {cfg.prune_start_round} must be at least 1")
    need(cfg.prune_end_round >= cfg.prune_start_round,
         f"prune_end_round: {cfg.prune_end_round} must be at least prune_start_round ({cfg.prune_start_round})")
    need(cfg.learning_rate > 0, f"learning_rate: {cfg.learning_rate} must be positive")
    need(cfg.finetune_learning_rate >= 0,
         f"finetune_learning_rate: {cfg.finetune_learning_rate} must be at least 0 (0: learning_rate)")
    need(0.0 <= cfg.momentum < 1.0, f"momentum: {cfg.momentum} is outside the allowed range [0, 1)")
    need(cfg.dirichlet_alpha > 0, f"dirichlet_alpha: {cfg.dirichlet_alpha} must be positive")
    need(cfg.num_cpus_per_client > 0, f"num_cpus_per_client: {cfg.num_cpus_per_client} must be positive")
    for name in ("mlp_widths", "cnn_channels"):
        widths = getattr(cfg, name)
        need(len(widths) > 0 and min(widths) >= 1, f"{name}: widths must be a non-empty list of positive integers")
    need(cfg.num_clients <= num_examples,
         f"num_clients: {cfg.num_clients} clients but dataset {cfg.dataset!r} has only {num_examples} examples")
    need(2 * cfg.num_clients <= num_examples,
         f"num_clients: {cfg.num_clients} clients need at least 2 examples each (local train and test); "
         f"dataset {cfg.dataset!r} has {num_examples}")
    text = cfg.dataset in TEXT_DATASETS
    wanted = "transformer" if text else "mlp or cnn"
    need(text == (cfg.model == "transformer"),
         f"model: dataset {cfg.dataset!r} needs model = {wanted}, got {cfg.model!r}")
    need(cfg.partitioner != "natural" or cfg.dataset == "amazon",
         "partitioner: 'natural' (one group of clients per domain) needs dataset = \"amazon\"")
    if cfg.partitioner == "natural":
        groups = len(cfg.domains) or num_groups
        need(cfg.num_clients == groups * cfg.clients_per_domain,
             f"num_clients: {cfg.num_clients} does not match {groups} domains x clients_per_domain "
             f"{cfg.clients_per_domain} = {groups * cfg.clients_per_domain}")
    for name in ("clients_per_domain", "max_length", "latency_tokens"):
        need(getattr(cfg, name) >= 1, f"{name}: {getattr(cfg, name)} must be at least 1")
    for name in ("max_train_examples", "max_test_examples"):
        need(getattr(cfg, name) >= 0, f"{name}: {getattr(cfg, name)} must be at least 0 (0 = all)")
    need(not cfg.freeze_embeddings or cfg.model == "transformer",
         "freeze_embeddings: only transformer models have embeddings; set model = \"transformer\"")
    unsupported = [m for m in cfg.methods if METHODS[m].small_dense and cfg.model == "transformer"]
    need(not unsupported, "methods: small-dense is not available for transformer models; "
         "allowed there: " + ", ".join(m for m in METHODS if not METHODS[m].small_dense))
    if cfg.partitioner == "pathological":
        need(cfg.classes_per_client <= 10 or cfg.dataset != "digits",
             f"classes_per_client: {cfg.classes_per_client} exceeds the 10 classes of digits")


def make_config(values: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from a flat mapping (keys may use '-' for '_')."""
    settings: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key not in _FIELDS:
            raise ConfigError(f"{raw_key}: unknown key; allowed: {', '.join(sorted(_FIELDS))}")
        settings[key] = _coerce(key, value)
    cfg = ExperimentConfig(**settings)
    if cfg.dataset not in DATASET_NAMES:
        raise ConfigError(f"dataset: unknown value {cfg.dataset!r}; allowed: {', '.join(DATASET_NAMES)}")
    from fedprune.data.datasets import load_dataset

    try:
        table, _ = load_dataset(*dataset_args(cfg))
    except ValueError as error:  # TextDataError: names the file and the problem
        message = str(error)
        raise ConfigError(message if message.startswith("data_path:") else f"data_path: {message}") from None
    groups = len(set(table["domain"])) if "domain" in table.column_names else 0
    _check_ranges(cfg, len(table), groups)
    return cfg


def dataset_args(cfg: ExperimentConfig) -> tuple:
    """The arguments of ``fedprune.data.load_dataset`` for ``cfg`` (hashable, for caching)."""
    return (cfg.dataset, cfg.data_path, cfg.text_column, cfg.label_column, cfg.data_config,
            tuple(cfg.domains))


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value (``0.5``, ``[64, 32]``, ``"x"``); bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _read_toml(path: str | Path, field_name: str) -> dict[str, Any]:
    """The flat settings of TOML file ``path``; errors name ``field_name``."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{field_name}: file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{field_name}: cannot read {str(path)!r} ({error.__class__.__name__})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{field_name}: {path} is not valid TOML ({error})") from None


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Defaults, then the TOML file ``path`` (flat keys), then ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_toml(path, "--config"))
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
    return make_config(values)


RUN_ONLY_KEYS = ("out-dir", "verbose", "config-file")


def config_from_run_config(run_config: Mapping[str, Any]) -> ExperimentConfig:
    """The experiment config from Flower's run config (``[tool.flwr.app.config]``).

    ``config-file`` (a TOML file, optional) is read first and the other keys override
    it; ``out-dir`` and ``verbose`` are read by the apps themselves.
    """
    values: dict[str, Any] = {}
    if run_config.get("config-file"):
        values.update(_read_toml(run_config["config-file"], "config-file"))
    values.update({k.replace("-", "_"): v for k, v in run_config.items() if k not in RUN_ONLY_KEYS})
    return make_config(values)
