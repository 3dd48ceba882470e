"""Read run folders and extract the series the report plots.

A run folder (``fedprune run --out DIR``) holds ``config.json``, ``summary.json``
and ``rounds.jsonl``; see ``fedprune.server.records`` for the record phases.
Every extraction function takes the parsed records of one run and a method name,
so it can be tested on hand-made records.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedprune.server.records import STATUS_FILE, describe

MB = 1e6
MESSAGE_PHASES = ("train", "evaluate")


class RunError(ValueError):
    """A run folder that cannot be read; the message names the folder or file."""


@dataclass
class Run:
    """One run folder, parsed."""

    path: Path
    config: dict
    summary: list[dict]
    records: list[dict] = field(repr=False)
    label: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def methods(self) -> list[str]:
        """Methods in summary order."""
        return [row["method"] for row in self.summary]


def load_run(path: str | Path) -> Run:
    """Parse a run folder; raise ``RunError`` naming the folder if it is not one."""
    folder = Path(path)
    if not folder.is_dir():
        raise RunError(f"{folder}: no such run folder")
    if not (folder / "summary.json").is_file() and (folder / STATUS_FILE).is_file():
        raise RunError(describe(folder))
    for name in ("summary.json", "rounds.jsonl"):
        if not (folder / name).is_file():
            raise RunError(f"{folder}: not a run folder (no {name})")
    try:
        summary = json.loads((folder / "summary.json").read_text())["methods"]
        if not isinstance(summary, list) or not all(isinstance(r, dict) and "method" in r for r in summary):
            raise TypeError("'methods' is not a list of rows with a 'method'")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise RunError(f"{folder / 'summary.json'}: unreadable summary ({error})") from None
    config: dict = {}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunError(f"{folder / 'config.json'}: unreadable config ({error})") from None
    records = []
    with (folder / "rounds.jsonl").open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise RunError(f"{folder / 'rounds.jsonl'}: line {number} is not JSON ({error})") from None
            if not isinstance(record, dict) or "phase" not in record:
                raise RunError(f"{folder / 'rounds.jsonl'}: line {number} has no 'phase'")
            records.append(record)
    return Run(path=folder, config=config, summary=summary, records=records)


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Parse every folder (all before any output is written) and give each a line label:
    ``method`` alone for one run, ``method [folder name]`` for several (see ``Run.label``)."""
    runs = [load_run(p) for p in paths]
    names = [run.path.resolve().name or str(run.path) for run in runs]
    for index, (run, name) in enumerate(zip(runs, names, strict=True)):
        run.label = name if names.count(name) == 1 else f"{name}#{index + 1}"
    return runs


def series_label(method: str, run: Run, several: bool) -> str:
    """Legend text of one method of one run."""
    return f"{method} [{run.label}]" if several else method


def _of(records: Iterable[dict], method: str, phase: str) -> list[dict]:
    return [r for r in records if r.get("method") == method and r.get("phase") == phase]


def personal_accuracy_by_round(records: Iterable[dict], method: str,
                               weighted: bool = False) -> list[tuple[int, float]]:
    """``(round, mean personal accuracy)`` for each round where ``method`` evaluated clients.

    The mean is over the clients evaluated in that round: plain (each client counts
    once, as ``personal_accuracy_mean`` in summary.json), or weighted by each
    client's ``num_examples`` when ``weighted``.
    """
    by_round: dict[int, list[dict]] = {}
    for record in _of(records, method, "personal"):
        if record.get("accuracy") is not None:
            by_round.setdefault(int(record["round"]), []).append(record)
    result = []
    for rnd in sorted(by_round):
        rows = by_round[rnd]
        if weighted:
            total = sum(r["num_examples"] for r in rows)
            mean = sum(r["accuracy"] * r["num_examples"] for r in rows) / total if total else float("nan")
        else:
            mean = statistics.fmean(r["accuracy"] for r in rows)
        result.append((rnd, float(mean)))
    return result


def trained_accuracy_by_round(records: Iterable[dict], method: str) -> list[tuple[int, float]]:
    """``(round, mean trained accuracy)``: the plain mean over the clients that measured their
    model right after local training in that round (``train-metrics`` records)."""
    by_round: dict[int, list[float]] = {}
    for record in _of(records, method, "train-metrics"):
        if record.get("trained_accuracy") is not None:
            by_round.setdefault(int(record["round"]), []).append(float(record["trained_accuracy"]))
    return [(rnd, statistics.fmean(by_round[rnd])) for rnd in sorted(by_round)]


def diagnostics_by_round(records: Iterable[dict], method: str, key: str) -> list[tuple[int, float]]:
    """``(round, value)`` of diagnostic ``key`` (``mask_jaccard``, ``initial_magnitude_overlap``,
    ``sgd_steps_mean``) in the rounds that recorded it."""
    return [(int(r["round"]), float(r[key])) for r in _of(records, method, "diagnostics") if r.get(key) is not None]


def cumulative_mb_by_round(records: Iterable[dict], method: str) -> dict[int, float]:
    """MB (10^6 bytes, up plus down) of ``method``'s train and evaluate messages
    in rounds 1..r, for each round r that has messages."""
    per_round: dict[int, int] = {}
    for record in records:
        if record.get("method") == method and record.get("phase") in MESSAGE_PHASES:
            rnd = int(record["round"])
            per_round[rnd] = per_round.get(rnd, 0) + record.get("bytes_up", 0) + record.get("bytes_down", 0)
    total = 0
    result = {}
    for rnd in sorted(per_round):
        total += per_round[rnd]
        result[rnd] = total / MB
    return result


def accuracy_vs_mb(records: Sequence[dict], method: str, weighted: bool = False) -> list[tuple[float, float]]:
    """``(cumulative MB up to and including round r, mean personal accuracy at r)``
    for each evaluated round r (the evaluate messages of round r are counted)."""
    cumulative = cumulative_mb_by_round(records, method)
    points = []
    for rnd, acc in personal_accuracy_by_round(records, method, weighted):
        earlier = [r for r in cumulative if r <= rnd]
        points.append((cumulative[max(earlier)] if earlier else 0.0, acc))
    return points


def last_round_accuracies(records: Iterable[dict], method: str) -> tuple[int | None, dict[int, float]]:
    """The last round where ``method`` evaluated clients, and ``{client: accuracy}`` at it."""
    rows = [r for r in _of(records, method, "personal") if r.get("accuracy") is not None]
    if not rows:
        return None, {}
    last = max(int(r["round"]) for r in rows)
    return last, {int(r["client"]): float(r["accuracy"]) for r in rows if int(r["round"]) == last}


def last_sparsity(records: Iterable[dict], method: str) -> dict[int, float]:
    """Each client's last reported sparsity: from its latest ``train-metrics`` or
    ``personal`` record (a ``personal`` record counts after ``train-metrics`` of its round)."""
    order = {"train-metrics": 0, "personal": 1}
    rows = [r for r in records if r.get("method") == method and r.get("phase") in order
            and r.get("sparsity") is not None]
    rows.sort(key=lambda r: (int(r["round"]), order[r["phase"]]))  # stable: file order within ties
    return {int(r["client"]): float(r["sparsity"]) for r in rows}


def device_points(records: Sequence[dict], method: str) -> list[dict]:
    """Per client with a ``device`` record: ``client``, ``sparsity`` (last reported),
    ``speedup`` (dense latency / personal latency) and ``flop_limit`` (dense / personal FLOPs).

    The speedup is recomputed from ``dense_latency_ms`` and ``latency_ms`` when both are
    recorded, else the recorded ``speedup`` is used. Clients without a sparsity are skipped.
    """
    sparsity = last_sparsity(records, method)
    points = []
    for record in _of(records, method, "device"):
        client = int(record["client"])
        if client not in sparsity:
            continue
        dense, personal = record.get("dense_latency_ms"), record.get("latency_ms")
        speedup = dense / personal if dense and personal else record.get("speedup")
        if speedup is None:
            continue
        points.append({"client": client, "sparsity": sparsity[client], "speedup": float(speedup),
                       "flop_limit": record.get("flop_limit")})
    return sorted(points, key=lambda p: p["client"])
