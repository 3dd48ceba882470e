"""A client's personal state on disk, so that a killed run can resume (``fedprune run --resume``).

Flower keeps a client's ``Context.state`` (its masks, unit masks, own tensors, pruner
state: ``ClientMemory``) in the engine's memory; it is lost with the process. A
``StateStore`` writes that ``RecordDict`` (Flower's own protobuf serialization) to
``<folder>/client-<partition>/<step>.recorddict`` after every reply that changed it, where
``<step>`` is ``<method index>-<round>`` (the method's position in ``cfg.methods`` and the
server round of the message), through a temporary file and ``os.replace``. It keeps the
two newest steps.

When a client receives a message with an empty ``Context.state`` (a fresh process, e.g.
after a resume), it restores the newest step *before* that message's (method, round):
the server resumes after its last checkpointed round, so a step at or after the message's
round was written by the round that the killed run never finished and is ignored. Only
one round is ever in flight, so the second-newest step is always old enough then.

The folder must belong to one run: in simulation it is ``RUN_DIR/checkpoint/clients``
unless ``client_state_dir`` names another; on the deployment engine each node may set its
own (node config ``client-state-dir``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.common import serde
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedprune import wire
from fedprune.config import ExperimentConfig

SUFFIX = ".recorddict"
#: node config key naming a node's own state folder (deployment engine)
NODE_KEY = "client-state-dir"
Step = tuple[int, int]


def state_folder(cfg: ExperimentConfig, context: Context, default: Path | None) -> Path | None:
    """Where this client keeps its state: the node's ``client-state-dir``, else the config's
    ``client_state_dir``, else ``default`` (None: the state is not persisted)."""
    named = context.node_config.get(NODE_KEY) or cfg.client_state_dir
    return Path(str(named)) if named else default


def encode(state: RecordDict) -> bytes:
    """``state`` as bytes (Flower's protobuf form of a RecordDict)."""
    return bytes(serde.recorddict_to_proto(state).SerializeToString())


def decode(data: bytes) -> RecordDict:
    """The RecordDict that ``encode`` wrote."""
    proto = ProtoRecordDict()
    proto.ParseFromString(data)
    return serde.recorddict_from_proto(proto)


class StateStore:
    """Per-partition snapshots of ``Context.state`` under ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _dir(self, partition: int) -> Path:
        return self.folder / f"client-{partition}"

    def steps(self, partition: int) -> list[Step]:
        """The steps saved for ``partition``, oldest first."""
        found = []
        for path in self._dir(partition).glob(f"*{SUFFIX}"):
            method, _, server_round = path.name[: -len(SUFFIX)].partition("-")
            if method.isdigit() and server_round.isdigit():
                found.append((int(method), int(server_round)))
        return sorted(found)

    def _path(self, partition: int, step: Step) -> Path:
        return self._dir(partition) / f"{step[0]}-{step[1]}{SUFFIX}"

    def save(self, partition: int, step: Step, state: RecordDict) -> None:
        """Write ``state`` as of ``step`` atomically; keep only the two newest steps."""
        folder = self._dir(partition)
        folder.mkdir(parents=True, exist_ok=True)
        target = self._path(partition, step)
        tmp = target.with_suffix(".tmp")
        with tmp.open("wb") as file:
            file.write(encode(state))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
        for old in self.steps(partition)[:-2]:
            self._path(partition, old).unlink(missing_ok=True)

    def load_newest(self, partition: int) -> RecordDict | None:
        """The newest state saved for ``partition`` (a finished run: its final state), or None."""
        steps = self.steps(partition)
        return decode(self._path(partition, steps[-1]).read_bytes()) if steps else None

    def load_before(self, partition: int, step: Step) -> RecordDict | None:
        """The newest state saved before ``step``, or None if there is none."""
        earlier = [s for s in self.steps(partition) if s < step]
        return decode(self._path(partition, earlier[-1]).read_bytes()) if earlier else None


def step_of(message: Message, cfg: ExperimentConfig) -> Step:
    """(method index in ``cfg.methods``, server round) of a server message."""
    config = message.content.config_records["config"]
    method = str(config["method"])
    index = cfg.methods.index(method) if method in cfg.methods else len(cfg.methods)
    return index, wire.int_of(config, "server-round")


def persisted(store: StateStore | None, message: Message, context: Context, cfg: ExperimentConfig,
              handle: Callable[[], Message]) -> Message:
    """Run ``handle`` with the client's state restored from ``store`` if the engine lost it,
    and save the state afterwards if ``handle`` changed it (``store`` None: neither)."""
    if store is None:
        return handle()
    partition = wire.int_of(context.node_config, "partition-id")
    step = step_of(message, cfg)
    if len(context.state) == 0:
        restored = store.load_before(partition, step)
        if restored is not None:
            for key, record in restored.items():
                context.state[key] = record
    before = {key: id(record) for key, record in context.state.items()}
    reply = handle()
    if {key: id(record) for key, record in context.state.items()} != before:
        store.save(partition, step, context.state)
    return reply
