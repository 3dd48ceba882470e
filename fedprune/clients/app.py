"""The Flower ClientApp: personal prune -> local train -> sparse reply; personal evaluation.

Messages from the server carry a ``config`` ConfigRecord with ``method``,
``server-round``, ``encoding`` and ``mask-digest``:

- ``dense``: the full model (first contact);
- ``masked``: the values at the entries this client keeps and shares this round
  (its mask, which ``mask-digest`` names, AND the shared part of ``fedprune.partial``);
  bitmaps in the message are a global mask the server asks the client to adopt;
- ``none``: no model (``local`` training, in-process).

A client keeps its personal mask, its own tensors and movement scores per method
in ``Context.state`` (``ClientMemory``).
"""

from __future__ import annotations

import dataclasses
import time
import zlib

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedprune import partial, wire
from fedprune.clients.local import accuracy, train_local
from fedprune.clients import budgets
from fedprune.clients.state import ClientMemory
from fedprune.clients.structured import (
    UnitMasks,
    param_masks,
    post_training_model,
    select_personal_units,
    train_squeezed,
)
from fedprune.device.budget import fit_sparsity
from fedprune.config import ExperimentConfig, config_from_run_config
from fedprune.methods import METHODS, Method
from fedprune.pruning import CubicSchedule, apply_masks, full_masks, magnitude_masks, mask_sparsity
from fedprune.pruning.masks import Masks
from fedprune.pruning.movement import MovementScores
from fedprune.pruning.random_masks import random_masks
from fedprune.pruning.squeeze import squeeze
from fedprune.task import client_profile, clients_data, frozen_names, initial_model, new_model


def _seed(cfg: ExperimentConfig, *parts: object) -> int:
    return zlib.crc32("/".join(str(p) for p in (cfg.seed, *parts)).encode())


def _training_generator(cfg: ExperimentConfig, *parts: object) -> torch.Generator:
    """A seeded generator for the data order; torch's global RNG, which dropout draws from,
    is seeded alike, so training does not depend on what the worker process ran before."""
    seed = _seed(cfg, *parts)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def keeps_own_tensors(cfg: ExperimentConfig, method: Method) -> bool:
    """Whether the client must remember its own tensors between rounds."""
    return not method.federated or cfg.personal_layers != "none" or cfg.personal_fraction > 0


def shared_part(cfg: ExperimentConfig, template: dict[str, torch.Tensor], partition: int,
                server_round: int) -> Masks:
    """The entries this client shares in ``server_round`` (see ``fedprune.partial``)."""
    return partial.shared_masks(template, cfg.personal_layers, cfg.personal_fraction, cfg.seed,
                                partition, server_round, frozen_names(cfg, list(template)))


def receive(message: Message, cfg: ExperimentConfig, method: Method, memory: ClientMemory,
            partition: int) -> tuple[nn.Module, Masks | None]:
    """The personal model as of this message, and the personal mask it runs under."""
    config = message.content["config"]
    encoding = str(config["encoding"])
    masks = memory.mask()
    own = memory.model()
    if encoding == "none":
        model = initial_model(cfg, method.name)
        if own is not None:
            model.load_state_dict(own)
        return model, masks
    model = new_model(cfg, method.name)
    template = model.state_dict()
    record = message.content["arrays"]
    frozen = frozen_names(cfg, list(template))
    if encoding == "dense":
        state = wire.unpack(wire.values_only(record), template, partial.nothing_of(template, frozen))
        sent = shared_part(cfg, template, partition, int(config["server-round"]))
    elif encoding == "masked":
        adopted = wire.bitmaps_in(record, template)
        if adopted:  # the server asks this client to adopt a global mask
            masks = adopted
            memory.save_mask(masks)
        if int(config["mask-digest"]) != wire.mask_digest(masks):
            raise ValueError("server sent values under a mask this client does not hold")
        sent = partial.intersect(masks, shared_part(cfg, template, partition, int(config["server-round"])))
        state = wire.unpack(wire.values_only(record), template, sent)
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    if own is not None:  # personal entries come from the client itself, never from the server
        state = {k: torch.where(sent[k], v, own[k]) if k in sent else v for k, v in state.items()}
    state.update({name: template[name] for name in frozen})  # never trained, never sent
    model.load_state_dict(state)
    if masks:
        apply_masks(model, masks)
    return model, masks


def _schedule(cfg: ExperimentConfig, method: Method, final: float) -> CubicSchedule:
    """The cubic schedule towards this client's ``final`` sparsity; structured methods with
    ``structured_schedule = once`` jump to it at ``prune_start_round`` (after dense warm-up)."""
    if method.pruning == "structured" and cfg.structured_schedule == "once":
        start = cfg.prune_start_round
        return CubicSchedule(final, final, start, start)
    return CubicSchedule(min(cfg.initial_sparsity, final), final,
                         cfg.prune_start_round, cfg.prune_end_round, cfg.prune_frequency)


def _train(model: nn.Module, cfg: ExperimentConfig, data, masks: Masks | None, epochs: int,
           generator: torch.Generator, after_backward=None) -> float:
    """Local epochs; with FedRep, head-only epochs first, then body-only epochs."""
    common = dict(batch_size=cfg.batch_size, optimizer=cfg.optimizer, learning_rate=cfg.learning_rate,
                  momentum=cfg.momentum, masks=masks, generator=generator, after_backward=after_backward)
    names = [name for name, _ in model.named_parameters()]
    frozen = set(frozen_names(cfg, names))
    names = [name for name in names if name not in frozen]
    if cfg.fedrep_head_epochs == 0:
        return train_local(model, data.train_x, data.train_y, epochs=epochs, trainable=names, **common)
    head = [n for n in names if partial.is_head(n)]
    train_local(model, data.train_x, data.train_y, epochs=cfg.fedrep_head_epochs, trainable=head, **common)
    body = [n for n in names if not partial.is_head(n)]
    return train_local(model, data.train_x, data.train_y, epochs=epochs, trainable=body, **common)


def _prune_to(method: Method, cfg: ExperimentConfig, model: nn.Module, masks: Masks | None,
              scores: MovementScores | None, target: float, partition: int, server_round: int,
              memory: ClientMemory, data) -> tuple[Masks | None, UnitMasks | None]:
    """Masks (and unit masks, for structured methods) at sparsity ``target``; no side effects."""
    if method.pruning == "structured":
        units = select_personal_units(model, method.selector, target, memory.units(), data.train_x,
                                      data.train_y, cfg, _seed(cfg, "select", partition, server_round))
        return param_masks(model, units), units
    current = masks or full_masks(model)
    if method.pruning == "magnitude":
        return magnitude_masks(model, current, target, method.scope), None
    if method.pruning == "movement":
        return scores.masks(current, target), None
    if method.pruning == "random":
        if masks is not None:
            return masks, None  # drawn once, then fixed
        generator = torch.Generator().manual_seed(_seed(cfg, "random-mask", partition))
        return random_masks(model, target, generator), None
    raise ValueError(f"unknown pruning {method.pruning!r}")


def _new_mask(method: Method, cfg: ExperimentConfig, model: nn.Module, masks: Masks | None,
              scores: MovementScores | None, server_round: int, partition: int,
              memory: ClientMemory, data) -> tuple[Masks | None, UnitMasks | None]:
    """The personal mask after this round's pruning step (unchanged when none is due).

    A client with a device profile aims at the sparsity its budget allows; at its
    final pruning step the sparsity rises until the personal model fits (structured
    methods) or its sparse storage fits (unstructured methods, byte budgets).
    """
    units = memory.units()
    if method.pruning == "none":
        return masks, units
    profile = client_profile(cfg, partition)
    inputs = data.train_x[:budgets.BATCH]
    final = cfg.final_sparsity if profile is None else budgets.first_guess(profile, model, inputs)
    schedule = _schedule(cfg, method, final)
    # random masks are drawn once, at the first pruning round, straight at the final sparsity
    target = final if method.pruning == "random" else schedule.sparsity(server_round)
    # A client with no mask yet and a target of 0 stays dense: no all-true mask on the wire.
    if not schedule.prunes_at(server_round) or not (masks or target > 0):
        return masks, units
    prune = lambda s: _prune_to(method, cfg, model, masks, scores, s, partition, server_round,  # noqa: E731
                                memory, data)
    if profile is None or target < final or not budgets.can_fit(profile, method, model, inputs):
        return prune(target)
    chosen: dict[float, tuple] = {}

    def fits(sparsity: float) -> bool:
        chosen[sparsity] = prune(sparsity)
        return budgets.personal_fits(profile, model, *chosen[sparsity], inputs)

    sparsity, _ = fit_sparsity(target, fits)
    return chosen[sparsity]


def handle_train(message: Message, context: Context, cfg: ExperimentConfig) -> Message:
    """Train the personal model on local data, prune on schedule, reply with what it shares."""
    torch.set_num_threads(1)
    config = message.content["config"]
    method = METHODS[str(config["method"])]
    server_round = int(config["server-round"])
    partition = int(context.node_config["partition-id"])
    data = clients_data(cfg)[partition]
    memory = ClientMemory(context.state, method.name)
    model, masks = receive(message, cfg, method, memory, partition)

    started = time.perf_counter()
    stream = method.trains_like or method.name
    generator = _training_generator(cfg, stream, partition, server_round)
    scores = None
    if method.pruning == "movement":
        scores = MovementScores(model, list(full_masks(model)), memory.scores())
    units = memory.units() if method.pruning == "structured" else None
    if units:
        loss = train_squeezed(model, units, lambda small: _train(small, cfg, data, None, cfg.local_epochs,
                                                                 generator))
    else:
        loss = _train(model, cfg, data, masks, cfg.local_epochs, generator,
                      after_backward=scores.accumulate if scores else None)
    new_masks, new_units = _new_mask(method, cfg, model, masks, scores, server_round, partition, memory, data)
    if new_units is not None:
        memory.save_units(new_units)
    if new_masks is not None:
        apply_masks(model, new_masks)
        memory.save_mask(new_masks)
    profile = client_profile(cfg, partition)
    met = -1.0 if profile is None else float(
        budgets.personal_fits(profile, model, new_masks, new_units, data.train_x[:budgets.BATCH]))
    if scores is not None:
        memory.save_scores(scores.scores)
    state = model.state_dict()
    if keeps_own_tensors(cfg, method):
        memory.save_model(state)
    seconds = time.perf_counter() - started

    digest = wire.mask_digest(new_masks)
    sent = partial.intersect(new_masks, shared_part(cfg, state, partition, server_round))
    # The mask travels only when the server does not hold it yet.
    changed = digest != int(config["mask-digest"])
    if not method.federated:
        arrays = wire.pack({}, None)
    elif method.pruning == "structured":
        arrays = wire.pack(state, sent, units=new_units if changed else None)
    else:
        arrays = wire.pack(state, sent, new_masks if changed else None)
    metrics = MetricRecord({
        "num-examples": len(data.train_y),
        "train-loss": loss,
        "compute-seconds": seconds,
        "sparsity": mask_sparsity(new_masks or {}),
        "partition-id": partition,
        "budget-met": met,
    })
    reply = RecordDict({"arrays": arrays, "metrics": metrics,
                        "wire": ConfigRecord({"mask-digest": digest, "server-round": server_round})})
    return Message(reply, reply_to=message)


def handle_evaluate(message: Message, context: Context, cfg: ExperimentConfig) -> Message:
    """Accuracy of the personal model on the client's local test part.

    The personal model is the server's values under the personal mask (plus the
    client's own personal tensors); ``post_training`` methods prune the received dense
    model here (and report the unit masks they chose); ``finetune`` methods fine-tune
    the personal model locally first (``finetune_learning_rate``).
    """
    torch.set_num_threads(1)
    config = message.content["config"]
    method = METHODS[str(config["method"])]
    server_round = int(config["server-round"])
    partition = int(context.node_config["partition-id"])
    data = clients_data(cfg)[partition]
    memory = ClientMemory(context.state, method.name)
    model, masks = receive(message, cfg, method, memory, partition)
    units = memory.units() if method.pruning == "structured" else None
    if method.post_training:
        full = model
        model, units = post_training_model(full, method.selector, cfg.final_sparsity, data.train_x, data.train_y,
                                           cfg, _seed(cfg, "post", partition, server_round))
        masks = param_masks(full, units)
    elif units:
        model = squeeze(model, units)  # the personal model a device would run
    if method.finetune:
        generator = _training_generator(cfg, "finetune", partition, server_round)
        tuning = dataclasses.replace(cfg, learning_rate=cfg.finetune_learning_rate or cfg.learning_rate)
        _train(model, tuning, data, None if units else masks, cfg.finetune_epochs, generator)
    metrics = MetricRecord({
        "num-examples": len(data.test_y),
        "accuracy": accuracy(model, data.test_x, data.test_y),
        "sparsity": mask_sparsity(masks or {}),
        "partition-id": partition,
    })
    content = RecordDict({"metrics": metrics})
    if method.post_training:
        content["arrays"] = wire.pack({}, None, units=units)
    return Message(content, reply_to=message)


def handle_query(message: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (for seeded sampling)."""
    info = MetricRecord({"partition-id": int(context.node_config["partition-id"])})
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
