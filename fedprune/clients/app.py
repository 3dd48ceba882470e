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

import time
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedprune import partial, wire
from fedprune.clients import faults
from fedprune.clients.local_round import accuracies, onboard, personal_at_evaluation, train_and_prune
from fedprune.clients.persist import StateStore, persisted, state_folder
from fedprune.clients.state import ClientMemory
from fedprune.config import ExperimentConfig, config_from_run_config
from fedprune.data.federation import clients_data
from fedprune.methods import METHODS, Method
from fedprune.models.factory import initial_model, new_model, sharing
from fedprune.pruning import apply_masks, mask_sparsity
from fedprune.pruning.masks import Masks, prunable_names
from fedprune.pruning.squeeze import squeeze

#: a ClientApp handler: (message, context, config) -> reply
Handler = Callable[[Message, Context, ExperimentConfig], Message]


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
        state = partial.merge(state, own, sent)
    state.update({name: template[name] for name in shares.frozen})  # never trained, never sent
    model.load_state_dict(state)
    if masks:
        apply_masks(model, masks)
    return model, masks


def _request(message: Message, context: Context) -> tuple[Method, int, int]:
    config = message.content.config_records["config"]
    partition = wire.int_of(context.node_config, "partition-id")
    return METHODS[str(config["method"])], wire.int_of(config, "server-round"), partition


def handle_train(message: Message, context: Context, cfg: ExperimentConfig) -> Message:
    """Train the personal model on local data, prune on schedule, reply with what it shares."""
    torch.set_num_threads(1)
    method, server_round, partition = _request(message, context)
    fault = str(message.content.config_records["config"].get("fault", ""))
    faults.before_reply(fault, cfg)  # injected crash, hang or straggle (fedprune.faults)
    memory = ClientMemory(context.state, method.name)
    model, masks = receive(message, cfg, method, memory, partition)
    started = time.perf_counter()
    result = train_and_prune(model, masks, method, cfg, memory, partition, server_round)
    seconds = time.perf_counter() - started

    state = model.state_dict()
    digest = wire.mask_digest(result.masks)
    sent = partial.intersect(result.masks, sharing(cfg, model).shared(partition, server_round))
    # The mask travels only when the server does not hold it yet.
    changed = digest != wire.int_of(message.content.config_records["config"], "mask-digest")
    if not method.federated:  # no values; the mask, if new, so that the simulator can time the model
        arrays = wire.pack({}, None, None if method.structured or not changed else result.masks,
                           units=result.units if method.structured and changed else None)
    elif method.structured:
        arrays = wire.pack(state, sent, units=result.units if changed else None)
    else:
        arrays = wire.pack(state, sent, result.masks if changed else None)
    data = clients_data(cfg)[partition]
    values = (len(data.train_y), result.loss, seconds, mask_sparsity(result.masks or {}, prunable_names(model)),
              partition, result.budget_met, result.steps)
    metrics = MetricRecord(dict(zip(wire.TRAIN_METRICS, values, strict=True)))
    if message.content.config_records["config"].get("measure", False):  # the model right after training
        # squeezed: a pruned residual width is only exact there (its LayerNorms span the kept dims)
        trained = squeeze(model, result.units) if result.units else model
        metrics.update(accuracies(trained, data, prefix="trained-"))
    reply = RecordDict({"arrays": arrays, "metrics": metrics,
                        "wire": ConfigRecord({"mask-digest": digest, "server-round": server_round})})
    if fault:
        faults.corrupt(reply, fault)
    return Message(reply, reply_to=message)


def handle_evaluate(message: Message, context: Context, cfg: ExperimentConfig) -> Message:
    """Accuracy of the personal model on the client's local test part (and validation part).

    The personal model is the server's values under the personal mask (plus the client's
    own personal tensors), squeezed for structured pruners, after what the method does at
    evaluation (``local_round.personal_at_evaluation``). A message with ``onboard`` set asks
    a new client, which never trained, to make its personal model from the final model first
    (``local_round.onboard``).
    """
    torch.set_num_threads(1)
    method, server_round, partition = _request(message, context)
    data = clients_data(cfg)[partition]
    memory = ClientMemory(context.state, method.name)
    model, masks = receive(message, cfg, method, memory, partition)
    if message.content.config_records["config"].get("onboard", False):
        model, masks, units = onboard(model, method, cfg, partition, server_round)
    else:
        units = memory.units() if method.structured else None
        model, masks, units = personal_at_evaluation(model, masks, units, method, cfg, partition, server_round)
    measured = accuracies(model, data)
    values = (len(data.test_y), measured.pop("accuracy"), mask_sparsity(masks or {}, prunable_names(model)), partition)
    metrics = MetricRecord({**dict(zip(wire.EVALUATE_METRICS, values, strict=True)), **measured})
    content = RecordDict({"metrics": metrics})
    if method.personal.reports_units:
        content["arrays"] = wire.pack({}, None, units=units)
    return Message(content, reply_to=message)


def handle_query(message: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (for seeded sampling)."""
    info = MetricRecord({"partition-id": wire.int_of(context.node_config, "partition-id")})
    return Message(RecordDict({"info": info}), reply_to=message)


def build_client_app(cfg: ExperimentConfig | None = None, state_dir: Path | None = None) -> ClientApp:
    """A ClientApp for ``cfg``; with None, the config is read from ``Context.run_config``.

    Each client persists its ``Context.state`` after every reply that changed it and
    restores it when the engine lost it (``fedprune.clients.persist``), under the node's
    ``client-state-dir``, the config's ``client_state_dir`` or ``state_dir`` (none: not
    persisted).
    """
    app = ClientApp()

    def settings(context: Context) -> ExperimentConfig:
        return cfg if cfg is not None else config_from_run_config(context.run_config)

    def handled(handler: Handler, message: Message, context: Context) -> Message:
        settled = settings(context)
        folder = state_folder(settled, context, state_dir)
        store = None if folder is None else StateStore(folder)
        return persisted(store, message, context, settled, lambda: handler(message, context, settled))

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return handled(handle_train, message, context)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return handled(handle_evaluate, message, context)

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return handle_query(message, context)

    return app


app = build_client_app()
