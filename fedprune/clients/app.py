"""The Flower ClientApp: personal prune -> local train -> sparse reply; personal evaluation.

Messages from the server carry a ``config`` ConfigRecord with ``method``,
``server-round``, ``encoding`` (``dense`` or ``masked``) and ``mask-digest`` (the
mask the masked values follow; see ``fedprune.wire``). A client keeps its
personal mask per method in ``Context.state``.
"""

from __future__ import annotations

import time
import zlib

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedprune import wire
from fedprune.clients.local import accuracy, train_local
from fedprune.clients.state import load_mask, save_mask
from fedprune.config import ExperimentConfig, config_from_run_config
from fedprune.methods import METHODS
from fedprune.pruning import CubicSchedule, apply_masks, full_masks, magnitude_masks, mask_sparsity
from fedprune.pruning.masks import Masks
from fedprune.task import clients_data, new_model


def _seed(cfg: ExperimentConfig, partition: int, server_round: int, method: str) -> int:
    return zlib.crc32(f"{cfg.seed}/{method}/{partition}/{server_round}".encode())


def _received_model(message: Message, masks: Masks | None, cfg: ExperimentConfig) -> torch.nn.Module:
    """Rebuild the model the server sent, in full-size coordinates."""
    config = message.content["config"]
    model = new_model(cfg)
    if config["encoding"] == "masked":
        if int(config["mask-digest"]) != wire.mask_digest(masks):
            raise ValueError("server sent values under a mask this client does not hold")
        values_mask = masks
    else:
        values_mask = None
    state = wire.unpack(message.content["arrays"], model.state_dict(), values_mask)
    model.load_state_dict(state)
    if masks:
        apply_masks(model, masks)
    return model


def _schedule(cfg: ExperimentConfig) -> CubicSchedule:
    return CubicSchedule(cfg.initial_sparsity, cfg.final_sparsity,
                         cfg.prune_start_round, cfg.prune_end_round, cfg.prune_frequency)


def handle_train(message: Message, context: Context, cfg: ExperimentConfig) -> Message:
    """Train the personal model on local data, prune on schedule, reply with kept values."""
    torch.set_num_threads(1)
    config = message.content["config"]
    method = METHODS[str(config["method"])]
    server_round = int(config["server-round"])
    partition = int(context.node_config["partition-id"])
    data = clients_data(cfg)[partition]
    masks = load_mask(context.state, method.name)
    model = _received_model(message, masks, cfg)

    started = time.perf_counter()
    generator = torch.Generator().manual_seed(_seed(cfg, partition, server_round, method.name))
    loss = train_local(model, data.train_x, data.train_y, epochs=cfg.local_epochs,
                       batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                       momentum=cfg.momentum, masks=masks, generator=generator)
    schedule = _schedule(cfg)
    target = schedule.sparsity(server_round)
    # A client with no mask yet and a target of 0 stays dense: no all-true mask on the wire.
    if method.pruning == "magnitude" and schedule.prunes_at(server_round) and (masks or target > 0):
        masks = magnitude_masks(model, masks or full_masks(model), target, cfg.gmp_scope)
        apply_masks(model, masks)
        save_mask(context.state, method.name, masks)
    seconds = time.perf_counter() - started

    digest = wire.mask_digest(masks)
    # The mask travels only when the server does not hold it yet.
    arrays = wire.pack(model.state_dict(), masks, with_bitmaps=digest != int(config["mask-digest"]))
    metrics = MetricRecord({
        "num-examples": len(data.train_y),
        "train-loss": loss,
        "compute-seconds": seconds,
        "sparsity": mask_sparsity(masks or {}),
        "partition-id": partition,
    })
    reply = RecordDict({"arrays": arrays, "metrics": metrics,
                        "wire": ConfigRecord({"mask-digest": digest})})
    return Message(reply, reply_to=message)


def handle_evaluate(message: Message, context: Context, cfg: ExperimentConfig) -> Message:
    """Accuracy of the personal model (server's values under the personal mask) on local test data."""
    torch.set_num_threads(1)
    config = message.content["config"]
    partition = int(context.node_config["partition-id"])
    data = clients_data(cfg)[partition]
    masks = load_mask(context.state, str(config["method"]))
    model = _received_model(message, masks, cfg)
    metrics = MetricRecord({
        "num-examples": len(data.test_y),
        "accuracy": accuracy(model, data.test_x, data.test_y),
        "sparsity": mask_sparsity(masks or {}),
        "partition-id": partition,
    })
    return Message(RecordDict({"metrics": metrics}), reply_to=message)


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
