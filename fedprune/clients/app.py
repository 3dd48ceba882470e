"""The Flower ClientApp: personal prune -> local train -> sparse reply; personal evaluation.

Messages from the server carry a ``config`` ConfigRecord with ``method``,
``server-round``, ``encoding`` and ``mask-digest``:

- ``dense``: the full model (first contact);
- ``masked``: the values at the entries this client keeps and shares this round
  (its mask, which ``mask-digest`` names, AND the shared part of ``fedprune.partial``);
  bitmaps in the message are a global mask the server asks the client to adopt;
- ``none``: no model (methods that do not federate, such as ``local``).

The handlers are the same for every method: the method's parts (``fedprune.methods``)
decide what happens. A client keeps its personal mask, its own tensors and its pruner's
state per method in ``Context.state`` (``ClientMemory``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedprune import partial, wire
from fedprune.clients import budgets, faults
from fedprune.clients.state import ClientMemory
from fedprune.config import ExperimentConfig, config_from_run_config
from fedprune.data.federation import clients_data
from fedprune.data.partition import ClientData
from fedprune.device.budget import DeviceProfile, fit_sparsity
from fedprune.device.profiles import client_profile
from fedprune.methods import METHODS, Method
from fedprune.models.factory import initial_model, new_model, sharing
from fedprune.pruning import CubicSchedule, apply_masks, mask_sparsity
from fedprune.pruning.masks import Masks
from fedprune.pruning.pruner import BackwardHook, PruneData, Pruner
from fedprune.pruning.squeeze import expand, squeeze
from fedprune.pruning.units import param_masks, post_prune
from fedprune.seeds import derive_seed
from fedprune.training import accuracy, train_local


def _training_generator(cfg: ExperimentConfig, *parts: object) -> torch.Generator:
    """A seeded generator for the data order; torch's global RNG, which dropout draws from,
    is seeded alike, so training does not depend on what the worker process ran before."""
    seed = derive_seed(cfg.seed, *parts)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def keeps_own_tensors(cfg: ExperimentConfig, method: Method) -> bool:
    """Whether the client must remember its own tensors between rounds."""
    return not method.federated or cfg.personal_layers != "none" or cfg.personal_fraction > 0


def receive(message: Message, cfg: ExperimentConfig, method: Method, memory: ClientMemory,
            partition: int) -> tuple[nn.Module, Masks | None]:
    """The personal model as of this message, and the personal mask it runs under."""
    config = message.content.config_records["config"]
    encoding = str(config["encoding"])
    masks = memory.mask()
    own = memory.model()
    if encoding == "none":
        model = initial_model(cfg, method.model)
        if own is not None:
            model.load_state_dict(own)
        return model, masks
    model = new_model(cfg, method.model)
    shares = sharing(cfg, model)
    template = dict(shares.template)
    record = message.content.array_records["arrays"]
    server_round = wire.int_of(config, "server-round")
    if encoding == "dense":
        state = wire.unpack(wire.values_only(record), template, partial.nothing_of(template, shares.frozen))
        sent = shares.shared(partition, server_round)
    elif encoding == "masked":
        adopted = wire.bitmaps_in(record, template)
        if adopted:  # the server asks this client to adopt a global mask
            masks = adopted
            memory.save_mask(masks)
        if wire.int_of(config, "mask-digest") != wire.mask_digest(masks):
            raise ValueError("server sent values under a mask this client does not hold")
        sent = partial.intersect(masks, shares.shared(partition, server_round))
        state = wire.unpack(wire.values_only(record), template, sent)
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    if own is not None:  # personal entries come from the client itself, never from the server
        state = {k: torch.where(sent[k], v, own[k]) if k in sent else v for k, v in state.items()}
    state.update({name: template[name] for name in shares.frozen})  # never trained, never sent
    model.load_state_dict(state)
    if masks:
        apply_masks(model, masks)
    return model, masks


def _schedule(cfg: ExperimentConfig, final: float) -> CubicSchedule:
    """The cubic schedule of ``cfg`` towards this client's ``final`` sparsity."""
    return CubicSchedule(min(cfg.initial_sparsity, final), final, cfg.prune_start_round, cfg.prune_end_round,
                         cfg.prune_frequency)


def _train(model: nn.Module, cfg: ExperimentConfig, data: ClientData, masks: Masks | None, epochs: int,
           generator: torch.Generator, after_backward: BackwardHook | None = None) -> float:
    """Local epochs; with FedRep, head-only epochs first, then body-only epochs."""
    def run(names: list[str], epochs: int) -> float:
        return train_local(model, data.train_x, data.train_y, epochs=epochs, trainable=names,
                           batch_size=cfg.batch_size, optimizer=cfg.optimizer, learning_rate=cfg.learning_rate,
                           momentum=cfg.momentum, masks=masks, generator=generator, after_backward=after_backward)

    shares = sharing(cfg, model)
    names = [name for name, _ in model.named_parameters() if name not in shares.frozen]
    if cfg.fedrep_head_epochs == 0:
        return run(names, epochs)
    run([n for n in names if n in shares.personal], cfg.fedrep_head_epochs)
    return run([n for n in names if n not in shares.personal], epochs)


def _prune_step(pruner: Pruner, model: nn.Module, masks: Masks | None, units: Masks | None, data: PruneData,
                profile: DeviceProfile | None, inputs: torch.Tensor) -> tuple[Masks | None, Masks | None]:
    """The personal mask (and unit masks) after this round's pruning step; unchanged when none is due.

    A client with a device profile aims at the sparsity its budget allows; at its final
    pruning step the sparsity rises until the personal model fits (structured pruners:
    the squeezed model; unstructured ones: its sparse storage, byte budgets only).
    """
    target = pruner.sparsity_at(data.step)
    # A client with no mask yet and a target of 0 stays dense: no all-true mask on the wire.
    if target is None or not (masks or target > 0):
        return masks, units

    def prune(sparsity: float) -> tuple[Masks, Masks | None]:
        if pruner.structured:
            chosen = pruner.prune(model, units, sparsity, data)
            return param_masks(model, chosen), chosen
        return pruner.prune(model, masks, sparsity, data), None

    final = pruner.schedule.final
    if profile is None or target < final or not budgets.can_fit(profile, pruner.structured, model, inputs):
        return prune(target)
    chosen: dict[float, tuple[Masks, Masks | None]] = {}

    def fits(sparsity: float) -> bool:
        chosen[sparsity] = prune(sparsity)
        return budgets.personal_fits(profile, model, *chosen[sparsity], inputs)

    sparsity, _ = fit_sparsity(target, fits)
    return chosen[sparsity]


def _make_pruner(method: Method, cfg: ExperimentConfig, model: nn.Module, profile: DeviceProfile | None,
                 inputs: torch.Tensor) -> Pruner | None:
    """The method's pruner for this client: towards ``final_sparsity``, or the budget's first guess."""
    if method.pruner is None:
        return None
    final = cfg.final_sparsity if profile is None else budgets.first_guess(profile, model, inputs)
    return method.pruner(_schedule(cfg, final), cfg.pruner_options)


def _request(message: Message, context: Context) -> tuple[Method, int, int]:
    config = message.content.config_records["config"]
    partition = wire.int_of(context.node_config, "partition-id")
    return METHODS[str(config["method"])], wire.int_of(config, "server-round"), partition


@dataclass(frozen=True)
class LocalRound:
    """What a client's round of local training left: its loss, its personal mask (and unit
    masks) and whether its personal model fits its device budget (-1: no budget)."""

    loss: float
    masks: Masks | None
    units: Masks | None
    budget_met: float


def _train_and_prune(model: nn.Module, masks: Masks | None, method: Method, cfg: ExperimentConfig,
                     memory: ClientMemory, partition: int, server_round: int) -> LocalRound:
    """Train ``model`` in place on the client's data, prune on schedule, remember what to keep."""
    data = clients_data(cfg)[partition]
    generator = _training_generator(cfg, method.stream, partition, server_round)
    profile = client_profile(cfg, partition)
    inputs = data.train_x[:budgets.BATCH]
    pruner = _make_pruner(method, cfg, model, profile, inputs)
    hook = pruner.observe(model, memory.pruner_state()) if pruner is not None else None
    units = memory.units() if method.structured else None
    if units:  # train the squeezed personal model, write it back into full-size coordinates
        small = squeeze(model, units)
        loss = _train(small, cfg, data, None, cfg.local_epochs, generator)
        model.load_state_dict(expand(small, model, units))
    else:
        loss = _train(model, cfg, data, masks, cfg.local_epochs, generator, after_backward=hook)
    if pruner is not None:
        prune_data = PruneData(data.train_x, data.train_y, partition, server_round, cfg.seed)
        masks, units = _prune_step(pruner, model, masks, units, prune_data, profile, inputs)
        memory.save_pruner_state(pruner.state())
    if units is not None:
        memory.save_units(units)
    if masks is not None:
        apply_masks(model, masks)
        memory.save_mask(masks)
    if keeps_own_tensors(cfg, method):
        memory.save_model(model.state_dict())
    met = -1.0 if profile is None else float(budgets.personal_fits(profile, model, masks, units, inputs))
    return LocalRound(loss, masks, units, met)


def handle_train(message: Message, context: Context, cfg: ExperimentConfig) -> Message:
    """Train the personal model on local data, prune on schedule, reply with what it shares."""
    torch.set_num_threads(1)
    method, server_round, partition = _request(message, context)
    fault = str(message.content.config_records["config"].get("fault", ""))
    faults.before_reply(fault, cfg)  # injected crash, hang or straggle (fedprune.faults)
    memory = ClientMemory(context.state, method.name)
    model, masks = receive(message, cfg, method, memory, partition)
    started = time.perf_counter()
    result = _train_and_prune(model, masks, method, cfg, memory, partition, server_round)
    seconds = time.perf_counter() - started

    state = model.state_dict()
    digest = wire.mask_digest(result.masks)
    sent = partial.intersect(result.masks, sharing(cfg, model).shared(partition, server_round))
    # The mask travels only when the server does not hold it yet.
    changed = digest != wire.int_of(message.content.config_records["config"], "mask-digest")
    if not method.federated:
        arrays = wire.pack({}, None)
    elif method.structured:
        arrays = wire.pack(state, sent, units=result.units if changed else None)
    else:
        arrays = wire.pack(state, sent, result.masks if changed else None)
    examples = len(clients_data(cfg)[partition].train_y)
    values = (examples, result.loss, seconds, mask_sparsity(result.masks or {}), partition, result.budget_met)
    metrics = MetricRecord(dict(zip(wire.TRAIN_METRICS, values, strict=True)))
    reply = RecordDict({"arrays": arrays, "metrics": metrics,
                        "wire": ConfigRecord({"mask-digest": digest, "server-round": server_round})})
    if fault:
        faults.corrupt(reply, fault)
    return Message(reply, reply_to=message)


def handle_evaluate(message: Message, context: Context, cfg: ExperimentConfig) -> Message:
    """Accuracy of the personal model on the client's local test part.

    The personal model is the server's values under the personal mask (plus the
    client's own personal tensors), squeezed for structured pruners; the method's
    ``personal`` part may then prune it after training (and report the unit masks it
    chose) and fine-tune it locally (``finetune_epochs`` at ``finetune_learning_rate``).
    """
    torch.set_num_threads(1)
    method, server_round, partition = _request(message, context)
    data = clients_data(cfg)[partition]
    memory = ClientMemory(context.state, method.name)
    model, masks = receive(message, cfg, method, memory, partition)
    units = memory.units() if method.structured else None
    if method.personal.prune is not None:
        full = model
        pruner = method.personal.prune(_schedule(cfg, cfg.final_sparsity), cfg.pruner_options)
        prune_data = PruneData(data.train_x, data.train_y, partition, server_round, cfg.seed)
        model, units = post_prune(full, pruner, cfg.final_sparsity, prune_data)
        masks = param_masks(full, units)
    elif units:
        model = squeeze(model, units)  # the personal model a device would run
    if method.personal.finetune:
        generator = _training_generator(cfg, "finetune", partition, server_round)
        tuning = dataclasses.replace(cfg, learning_rate=cfg.finetune_learning_rate or cfg.learning_rate)
        _train(model, tuning, data, None if units else masks, cfg.finetune_epochs, generator)
    values = (len(data.test_y), accuracy(model, data.test_x, data.test_y), mask_sparsity(masks or {}), partition)
    metrics = MetricRecord(dict(zip(wire.EVALUATE_METRICS, values, strict=True)))
    content = RecordDict({"metrics": metrics})
    if method.personal.reports_units:
        content["arrays"] = wire.pack({}, None, units=units)
    return Message(content, reply_to=message)


def handle_query(message: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (for seeded sampling)."""
    info = MetricRecord({"partition-id": wire.int_of(context.node_config, "partition-id")})
    return Message(RecordDict({"info": info}), reply_to=message)


def build_client_app(cfg: ExperimentConfig | None = None) -> ClientApp:
    """A ClientApp for ``cfg``; with None, the config is read from ``Context.run_config``."""
    app = ClientApp()

    def settings(context: Context) -> ExperimentConfig:
        return cfg if cfg is not None else config_from_run_config(context.run_config)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return handle_train(message, context, settings(context))

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return handle_evaluate(message, context, settings(context))

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return handle_query(message, context)

    return app


app = build_client_app()
