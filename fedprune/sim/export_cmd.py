"""``fedprune export RUN_DIR [--format onnx|torchscript] [--out DIR]``: every client's personal
model of a finished run as a standalone file, checked against PyTorch at export.

For each method and client: ``OUT/METHOD/client-P.onnx`` (or ``.pt``, TorchScript) and
``OUT/METHOD/client-P.onnx.json`` (``.pt.json``): method, client, format, file, input and
output specs (``fedprune.device.export``), parameter count of the file's model, sparsity,
FLOPs per example, which values it holds, and the largest absolute difference between
the file's logits (onnxruntime / ``torch.jit.load``) and the PyTorch model's on a batch
of the client's own test inputs. Structured personal models are squeezed; unstructured
ones are dense with the pruned entries zero.

Values. The server keeps each personal model's structure under the final global values
(``models/METHOD.pt``). A client's personal model holds exactly those values when the
method keeps nothing of its own on the client (``mi``, ``gmp``, ``fedavg`` ...). A client
that keeps own tensors (personal layers, partial updates, methods that do not federate)
saves them in its state (``fedprune.clients.persist``: ``RUN_DIR/checkpoint/clients`` or
``client_state_dir``), which is read here and merged as the client merges them. Values a
client makes at evaluation (``fedavg-ft``'s fine-tuning, ``mi-post``'s pruning, refit and
fine-tuning) or at onboarding (new clients) are stored nowhere: that step is replayed
here, seeded as in the run, and kept only if it reproduces the accuracy the client
reported (and, for ``mi-post``, its unit masks). Where none of this gives the client's
values (no saved state, a replay that differs), the file holds the server's values under
the client's structure, and its JSON (``personal_values: false``) and the command's output
say so.

Nothing is written unless every file passes: the files are made in a temporary folder
beside ``OUT`` and moved into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import RecordDict
from torch import nn

from fedprune import partial
from fedprune.analysis.table import markdown_table
from fedprune.clients.local_round import keeps_own_tensors, onboard, personal_at_evaluation
from fedprune.clients.persist import StateStore
from fedprune.clients.state import ClientMemory
from fedprune.config import ConfigError, ExperimentConfig
from fedprune.data.federation import clients_data, new_partitions
from fedprune.device import flops_per_example, parameter_count
from fedprune.device.export import FORMATS, export, max_abs_difference, tensor_specs
from fedprune.methods import METHODS, Method
from fedprune.models.factory import cost_inputs, initial_model, new_model, personal_model, sharing
from fedprune.pruning.masks import Masks, mask_sparsity, prunable_names
from fedprune.server.costs import BATCH
from fedprune.sim.device_cmd import finished_run
from fedprune.training import accuracy

#: largest absolute difference of logits allowed between the file and the PyTorch model
#: (float32 kernels that sum in another order differ by ~1e-7 relative; 1e-4 leaves room for
#: larger models while any wrong operation, which changes logits by ~1e-2 or more, fails)
TOLERANCE = 1e-4
#: test inputs of the client that the check runs on
CHECK_ROWS = 32
COLUMNS = ("method", "client", "file", "parameters", "sparsity", "kFLOPs/ex", "max abs diff", "values")


@dataclass(frozen=True)
class Personal:
    """A client's personal model as the run folder allows to rebuild it."""

    model: nn.Module
    masks: Masks | None
    squeezed: bool
    exact: bool  # True: the client's own personal values; False: the server's values
    values: str  # which values it holds, in words


def client_states(cfg: ExperimentConfig, run_dir: Path) -> dict[int, RecordDict]:
    """Each client's newest saved ``Context.state`` (``fedprune.clients.persist``), by partition:
    in the config's ``client_state_dir`` or ``RUN_DIR/checkpoint/clients`` ({} when none exists,
    e.g. a deployment whose nodes kept their own folders)."""
    store = StateStore(Path(cfg.client_state_dir) if cfg.client_state_dir else run_dir / "checkpoint" / "clients")
    found = {partition: store.load_newest(partition) for partition in range(cfg.num_clients)}
    return {partition: state for partition, state in found.items() if state is not None}


def reported_accuracies(run_dir: Path, cfg: ExperimentConfig) -> dict[tuple[str, int], float]:
    """(method, client) -> the personal accuracy the client reported at the end of the run
    (phase ``personal`` of the last round, ``new-client`` for new clients)."""
    found = {}
    for line in (run_dir / "rounds.jsonl").read_text().splitlines():
        record = json.loads(line)
        last = record.get("phase") == "personal" and record.get("round") == cfg.rounds
        if last or record.get("phase") == "new-client":
            found[(record["method"], record["client"])] = record["accuracy"]
    return found


def held(cfg: ExperimentConfig, method: Method, saved: dict, partition: int, memory: ClientMemory | None,
         new: bool) -> tuple[dict[str, torch.Tensor], Masks | None, Masks | None] | None:
    """What the client holds when the final evaluation's message has arrived (``clients.app.receive``):
    full-size values, mask and unit masks; None if they need its own tensors and its state is missing.
    The mask and unit masks are the client's own where its state has them, else the server's record."""
    masks = units = None
    if not new and method.pruner is not None:
        masks = (memory.mask() if memory else None) or saved["masks"].get(partition)
        if method.structured:
            units = (memory.units() if memory else None) or saved["units"].get(partition)
    if new and not method.federated:  # it trains alone from the initial model (``local_round.onboard``)
        return initial_model(cfg, method.model).state_dict(), None, None
    if new or not keeps_own_tensors(cfg, method):
        return saved["global"], masks, units
    own = memory.model() if memory else None
    if own is None:
        return None
    if not method.federated:
        return own, masks, units
    # the server's values where the client shares, its own elsewhere
    sent = partial.intersect(masks, sharing(cfg, new_model(cfg, method.model)).shared(partition, cfg.rounds))
    return partial.merge(saved["global"], own, sent), masks, units


def replay(cfg: ExperimentConfig, method: Method, values: dict[str, torch.Tensor], masks: Masks | None,
           units: Masks | None, partition: int, new: bool) -> tuple[nn.Module, Masks | None, Masks | None, float]:
    """The client's final evaluation step run again (seeded as in the run, one thread as the
    ClientApp): onboarding or ``personal_at_evaluation``; the model, its masks and its accuracy."""
    model = personal_model(cfg, method.model, values, masks, None)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if new:
            model, masks, units = onboard(model, method, cfg, partition, cfg.rounds)
        else:
            model, masks, units = personal_at_evaluation(model, masks, units, method, cfg, partition, cfg.rounds)
        data = clients_data(cfg)[partition]
        return model.eval(), masks, units, accuracy(model, data.test_x, data.test_y)
    finally:
        torch.set_num_threads(previous)


def _same(first: Masks | None, second: Masks | None) -> bool:
    return second is None or (first is not None and first.keys() == second.keys()
                              and all(torch.equal(first[k], second[k]) for k in first))


def rebuild(cfg: ExperimentConfig, method: Method, saved: dict, partition: int, state: RecordDict | None,
            new: bool, reported: float | None) -> Personal:
    """Client ``partition``'s personal model of ``method`` from the saved models file, its saved
    state and, for values made at evaluation, a replay that must reproduce its reported accuracy
    (and its reported unit masks); where none of this gives its values, the server's values."""
    memory = None if state is None else ClientMemory(state, method.name)
    holds = held(cfg, method, saved, partition, memory, new)
    why = "its own tensors; its saved state was not found"
    if holds is not None:
        values, masks, units = holds
        own = ("the initial model" if new and not method.federated
               else "the final global values under the client's mask" if values is saved["global"]
               else "the client's own tensors from its saved state, the final global values where it shares")
        if not (new or method.personal.prune is not None or method.personal.finetune):
            model = personal_model(cfg, method.model, values, masks, units)
            return Personal(model, masks, bool(units), True, f"personal: {own}, as the client holds them")
        model, masks, units, score = replay(cfg, method, values, masks, units, partition, new)
        if reported is not None and abs(score - reported) < 1e-9 and _same(units, saved["units"].get(partition)):
            return Personal(model, masks, bool(units), True, f"personal: {own}, then the client's "
                            f"{'onboarding' if new else 'evaluation step'} replayed (seeded), reproducing the "
                            "accuracy it reported")
        why = "made at evaluation; a replay did not reproduce its reported accuracy"
    model = personal_model(cfg, method.model, saved["global"], saved["masks"].get(partition),
                           saved["units"].get(partition))
    return Personal(model, saved["masks"].get(partition), partition in saved["units"], False,
                    f"server values under the client's mask (its own values, {why}, are not in the run folder)")


def check_batch(cfg: ExperimentConfig, model: nn.Module, partition: int) -> torch.Tensor:
    """Up to ``CHECK_ROWS`` of the client's own test inputs (seeded cost inputs if it has none)."""
    test_x = clients_data(cfg)[partition].test_x[:CHECK_ROWS]
    return test_x if len(test_x) else cost_inputs(cfg, model, BATCH)


def export_one(cfg: ExperimentConfig, method: str, partition: int, personal: Personal, fmt: str,
               folder: Path, reported: float | None) -> dict:
    """Write one personal model and its JSON into ``folder``/METHOD; ``ConfigError`` if the
    file's logits differ from the model's by more than ``TOLERANCE``. ``test_accuracy``: the
    model's on the client's test part; ``reported_accuracy``: what the client reported in the run."""
    model = personal.model.eval()
    data = clients_data(cfg)[partition]
    batch = check_batch(cfg, model, partition)
    target = folder / method / f"client-{partition}{FORMATS[fmt]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    export(model, batch, fmt, target)
    difference = max_abs_difference(target, fmt, model, batch)
    if not difference <= TOLERANCE:
        raise ConfigError(f"{method} client {partition}: the {fmt} file's logits differ from PyTorch's by "
                          f"{difference:.3g} (tolerance {TOLERANCE:g}); nothing written")
    inputs, outputs = tensor_specs(model, batch)
    counted = prunable_names(new_model(cfg, METHODS[method].model))
    row = {
        "method": method, "client": partition, "format": fmt, "file": target.name,
        "inputs": [spec.to_dict() for spec in inputs], "outputs": [spec.to_dict() for spec in outputs],
        "parameters": parameter_count(model), "squeezed": personal.squeezed,
        "sparsity": mask_sparsity(personal.masks or {}, counted),
        "flops_per_example": flops_per_example(model, cost_inputs(cfg, model, BATCH), BATCH),
        "personal_values": personal.exact, "values": personal.values,
        "test_accuracy": accuracy(model, data.test_x, data.test_y), "reported_accuracy": reported,
        "max_abs_diff": difference, "tolerance": TOLERANCE, "checked_rows": len(batch),
    }
    target.with_name(target.name + ".json").write_text(json.dumps(row, indent=2) + "\n")
    return row


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _staging(out: Path) -> Path:
    """A temporary folder on ``out``'s file system; ``ConfigError`` naming --out if it cannot be written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a folder")
    base = _existing_ancestor(out.parent.absolute())
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"--out: cannot write {out}: {base} is not a writable folder")
    return Path(tempfile.mkdtemp(prefix=".fedprune-export-", dir=base))


def _publish(staged: Path, out: Path) -> None:
    """Move the staged files into ``out`` (the whole folder at once when ``out`` is new)."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, out)
        return
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        target = out / path.relative_to(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def export_rows(run_dir: Path, fmt: str, out: Path) -> list[dict]:
    """Export every method's personal models of the run in ``run_dir`` into ``out``; the rows of their JSONs."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    cfg = finished_run(run_dir)
    states = client_states(cfg, run_dir)
    new = set(new_partitions(cfg))
    reported = reported_accuracies(run_dir, cfg)
    staged = _staging(out)
    try:
        rows = []
        for method in cfg.methods:
            saved = torch.load(run_dir / "models" / f"{method}.pt")
            for partition in range(cfg.num_clients):
                score = reported.get((method, partition))
                personal = rebuild(cfg, METHODS[method], saved, partition, states.get(partition), partition in new,
                                   score)
                rows.append(export_one(cfg, method, partition, personal, fmt, staged, score))
        _publish(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return rows


def format_rows(rows: list[dict]) -> str:
    """Markdown table of ``export_rows`` and, once per method, which values its files hold."""
    def cells(row: dict) -> list[str]:
        return [row["method"], str(row["client"]), f"{row['method']}/{row['file']}", str(row["parameters"]),
                f"{row['sparsity']:.3f}", f"{row['flops_per_example'] / 1e3:.1f}", f"{row['max_abs_diff']:.2e}",
                "personal" if row["personal_values"] else "server"]
    lines = [markdown_table(COLUMNS, [cells(row) for row in rows])]
    notes: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        notes.setdefault((row["method"], row["values"]), []).append(row["client"])
    lines.append("")
    lines += [f"values of {method} (clients {', '.join(map(str, clients))}): {text}"
              for (method, text), clients in notes.items()]
    return "\n".join(lines)


def run_export(run_dir: Path, fmt: str, out: Path | None = None) -> str:
    """``fedprune export``: write the files (default ``RUN_DIR/export``), return the table."""
    target = out if out is not None else run_dir / "export"
    rows = export_rows(run_dir, fmt, target)
    return format_rows(rows) + f"\n\nwritten: {len(rows)} {fmt} models with their JSON into {target} " \
        f"(max abs diff of logits at most {TOLERANCE:g})"
