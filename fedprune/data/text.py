"""Text classification data: local tables and folders as ``datasets.Dataset`` with
``text`` (str) and ``label`` (int64) columns, a tokenization cache, and natural
(per-domain) partitions.

Sources ``load_text_table`` understands:

* a local file, chosen by suffix: ``.csv``, ``.tsv``, ``.jsonl`` / ``.ndjson`` / ``.json``
  (one JSON object a line, or one JSON list of objects), ``.parquet`` / ``.pq``;
  CSV and TSV are read with the ``csv`` module, so quoted fields may span lines;
* a local folder holding one file per split (GLUE style, e.g. ``sst2/train.tsv`` and
  ``sst2/dev.tsv``): see ``SPLIT_STEMS`` for the names tried;
* anything else that is not a local path is passed to ``datasets.load_dataset``
  (Hugging Face hub name).

Labels must be non-negative integers (``0..K-1``): Python ints, integral floats or
strings such as ``"0"`` / ``" 1 "``. Words such as ``"positive"`` are rejected, never
guessed. Every problem raises ``TextDataError`` (a ``ValueError``) with a one-line
message that starts with the file (or hub name) and names the problem; row numbers
count data rows from 1 (the header is not a row).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from flwr_datasets.partitioner import NaturalIdPartitioner

TEXT_COLUMNS = ("sentence", "text")  # tried in order when text_column is None
SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# split name -> file stems tried in a split folder, in order, each with every suffix.
SPLIT_STEMS = {
    "train": ("train",),
    "dev": ("dev", "validation"),
    "validation": ("dev", "validation"),
    "test": ("test-labeled", "test"),
}
AMAZON_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test-labeled.tsv"}
FEATURES = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
_INT = re.compile(r"^\s*[+-]?\d+\s*$")


class TextDataError(ValueError):
    """A text data source is missing, empty or malformed (one-line message)."""


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)  # repr escapes newlines: messages stay on one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- readers


@contextlib.contextmanager
def _large_csv_fields() -> Iterator[None]:
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, 1 << 30))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _read_delimited(path: Path, delimiter: str) -> tuple[list[str], list[dict[str, Any]]]:
    with _large_csv_fields(), open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise TextDataError(f"{path}: empty file")
            records: list[dict[str, Any]] = []
            for row in reader:
                if not row or (len(row) == 1 and row[0] == ""):
                    continue  # blank line
                if len(row) != len(header):
                    raise TextDataError(
                        f"{path}: row {len(records) + 1} (line {reader.line_num}) has {len(row)} "
                        f"fields, the header has {len(header)}"
                    )
                records.append(dict(zip(header, row, strict=True)))
        except csv.Error as err:
            raise TextDataError(f"{path}: cannot parse line {reader.line_num}: {err}") from err
    return header, records


def _read_jsonl(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    raw = path.read_text(encoding="utf-8-sig")
    if raw.lstrip().startswith("["):
        try:
            records = json.loads(raw)
        except json.JSONDecodeError as err:
            raise TextDataError(f"{path}: invalid JSON: {err}") from err
    else:
        records = []
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise TextDataError(f"{path}: line {number} is not valid JSON: {err}") from err
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise TextDataError(f"{path}: row {number} is not a JSON object: {_short(record)}")
    columns: list[str] = []
    for record in records:
        columns.extend(key for key in record if key not in columns)
    return columns, records


def _read_parquet(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise TextDataError(f"{path}: cannot read parquet: {err}".replace("\n", " ")) from err
    return list(table.column_names), table.to_pylist()


def _read_file(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise TextDataError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; "
            f"allowed: {', '.join(sorted(SUFFIXES))}"
        )
    if path.stat().st_size == 0:
        raise TextDataError(f"{path}: empty file")
    if kind == "csv":
        return _read_delimited(path, ",")
    if kind == "tsv":
        return _read_delimited(path, "\t")
    if kind == "jsonl":
        return _read_jsonl(path)
    return _read_parquet(path)


# -------------------------------------------------------------------------- validation


def _label(value: Any, source: str, row: int) -> int:
    if isinstance(value, bool) or value is None:
        number = None
    elif isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, (float, np.floating)) and float(value).is_integer():
        number = int(value)
    elif isinstance(value, str) and _INT.match(value):
        number = int(value)
    else:
        number = None
    if number is None:
        raise TextDataError(f"{source}: row {row}: label {_short(value)} is not an integer")
    if number < 0:
        raise TextDataError(f"{source}: row {row}: label {number} is negative; labels are 0..K-1")
    return number


def _pick_text_column(source: str, columns: Sequence[str], text_column: str | None) -> str:
    if text_column is not None:
        if text_column not in columns:
            raise TextDataError(
                f"{source}: text column {text_column!r} not found; columns found: {list(columns)}"
            )
        return text_column
    for candidate in TEXT_COLUMNS:
        if candidate in columns:
            return candidate
    raise TextDataError(
        f"{source}: no text column (tried {', '.join(TEXT_COLUMNS)}); columns found: {list(columns)}"
    )


def _to_table(
    source: str,
    columns: Sequence[str],
    records: Sequence[dict[str, Any]],
    text_column: str | None,
    label_column: str,
) -> datasets.Dataset:
    if not records:
        raise TextDataError(f"{source}: empty file (no data rows)")
    text_key = _pick_text_column(source, columns, text_column)
    if label_column not in columns:
        raise TextDataError(
            f"{source}: label column {label_column!r} not found; columns found: {list(columns)}"
        )
    texts: list[str] = []
    labels: list[int] = []
    for row, record in enumerate(records, start=1):
        text = record.get(text_key)
        if not isinstance(text, str):
            raise TextDataError(f"{source}: row {row}: text {_short(text)} is not a string")
        texts.append(text)
        labels.append(_label(record.get(label_column), source, row))
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=FEATURES)


# ----------------------------------------------------------------------------- loaders


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a hub name (``owner/name``): it
    starts like a path, has a data-file suffix, has more than one separator, or its first
    part exists here."""
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or Path(name).suffix.lower() in SUFFIXES
        or name.count("/") + name.count("\\") >= 2
        or (("/" in name or os.sep in name) and Path(name.replace("\\", "/").split("/")[0]).exists())
    )


def _split_file(folder: Path, split: str) -> Path:
    stems = SPLIT_STEMS.get(split, (split,))
    tried = [stem + suffix for stem in stems for suffix in SUFFIXES]
    for name in tried:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir())
    raise TextDataError(
        f"{folder}: no file for split {split!r} (tried {', '.join(tried)}); files found: {found}"
    )


def load_text_table(
    path: str | os.PathLike[str],
    text_column: str | None = None,
    label_column: str = "label",
    split: str = "train",
    hub_config: str | None = None,
) -> datasets.Dataset:
    """A table with columns ``text`` (str) and ``label`` (int64) from ``path``.

    ``path`` is a local file (by suffix), a local split folder (``split`` picks the file:
    ``train`` -> train.*, ``dev``/``validation`` -> dev.* or validation.*, ``test`` ->
    test-labeled.* or test.*) or, when it is not a local path, a Hugging Face hub dataset
    name loaded with ``datasets.load_dataset(path, hub_config, split=split)``.
    ``text_column`` None tries ``TEXT_COLUMNS`` in order. ``split`` is ignored for files.
    """
    name = os.fspath(path)
    local = Path(name).expanduser()
    if local.is_dir():
        local = _split_file(local, split)
    if local.is_file():
        columns, records = _read_file(local)
        return _to_table(str(local), columns, records, text_column, label_column)
    if looks_local(name):
        raise TextDataError(f"{name}: no such file or folder")
    return _load_hub(name, hub_config, split, text_column, label_column)


def _load_hub(
    name: str, config: str | None, split: str, text_column: str | None, label_column: str
) -> datasets.Dataset:
    source = f"{name}[{split}]" if config is None else f"{name}/{config}[{split}]"
    try:
        table = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # network, missing dataset, missing split, auth ...
        message = str(err).replace("\n", " ")
        raise TextDataError(
            f"{source}: cannot load {name!r} from the Hugging Face hub: {type(err).__name__}: {message}"
        ) from err
    if not isinstance(table, datasets.Dataset):
        raise TextDataError(f"{source}: hub dataset did not give a single split table")
    columns = list(table.column_names)
    text_key = _pick_text_column(source, columns, text_column)
    if label_column not in columns:
        raise TextDataError(
            f"{source}: label column {label_column!r} not found; columns found: {columns}"
        )
    records = [
        {text_key: text, label_column: label}
        for text, label in zip(table[text_key], table[label_column], strict=True)
    ]
    return _to_table(source, [text_key, label_column], records, text_key, label_column)


def amazon_domains(folder: str | os.PathLike[str]) -> list[str]:
    """The domain subfolders of an Amazon multi-domain folder, sorted."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise TextDataError(f"{root}: no such folder")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise TextDataError(f"{root}: no domain subfolders")
    return names


def load_amazon_domains(
    folder: str | os.PathLike[str], split: str = "train", domains: Sequence[str] | None = None
) -> datasets.Dataset:
    """Multi-domain Amazon reviews: columns ``text``, ``label``, ``domain`` (str).

    One row per review of each domain subfolder's file for ``split`` (``train`` ->
    train.tsv, ``dev`` -> dev.tsv, ``test`` -> test-labeled.tsv), domains in the given
    order (default: every subfolder, sorted), rows in file order.
    """
    if split not in AMAZON_FILES:
        raise TextDataError(f"{folder}: unknown split {split!r}; allowed: {', '.join(AMAZON_FILES)}")
    root = Path(folder).expanduser()
    available = amazon_domains(root)
    chosen = list(available if domains is None else domains)
    if not chosen:
        raise TextDataError(f"{root}: no domains chosen")
    unknown = [d for d in chosen if d not in available]
    if unknown:
        raise TextDataError(f"{root}: unknown domains {unknown}; domains found: {available}")
    parts = []
    for domain in chosen:
        path = root / domain / AMAZON_FILES[split]
        if not path.is_file():
            raise TextDataError(f"{path}: no such file")
        columns, records = _read_file(path)
        part = _to_table(str(path), columns, records, "sentence", "label")
        parts.append(part.add_column("domain", [domain] * len(part)))
    return datasets.concatenate_datasets(parts)


def num_classes(table: datasets.Dataset) -> int:
    """K for labels 0..K-1: the largest label plus one."""
    return int(max(table["label"])) + 1


# ------------------------------------------------------------------------ tokenization


def table_fingerprint(table: datasets.Dataset) -> str:
    """SHA-256 of the table's texts and labels (content, not the in-memory object)."""
    digest = hashlib.sha256()
    for text, label in zip(table["text"], table["label"], strict=True):
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00%d\x00" % label)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Name or path, class, vocabulary size and a hash of the vocabulary."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    vocab_hash = hashlib.sha256(json.dumps(sorted(vocab.items())).encode("utf-8")).hexdigest()
    name = getattr(tokenizer, "name_or_path", "")
    return f"{name}|{type(tokenizer).__name__}|{len(tokenizer)}|{vocab_hash}"


def cache_key(table: datasets.Dataset, tokenizer: Any, max_length: int) -> str:
    """Hash of (table content, tokenizer identity, max_length)."""
    parts = [table_fingerprint(table), tokenizer_fingerprint(tokenizer), f"max_length={max_length}"]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


#: what a cache file holds besides the tensors: this format's version and their checksum
CACHE_FORMAT = 1


def tokens_checksum(tokens: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(tokens):
        tensor = tokens[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _read_cache(path: Path) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The tensors of cache file ``path`` and ``""``, or None and why the file is unusable."""
    try:
        stored = torch.load(path, weights_only=True)
    except Exception as err:  # torch raises EOFError, UnpicklingError, RuntimeError ... on bad files
        return None, f"unreadable ({type(err).__name__})"
    if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT or "sha256" not in stored:
        return None, "not a checksummed cache file"
    tokens = stored.get("tokens")
    if not isinstance(tokens, dict) or set(tokens) != {"input_ids", "attention_mask", "labels"} or not all(
            isinstance(t, torch.Tensor) for t in tokens.values()):
        return None, "missing tensors"
    if tokens_checksum(tokens) != stored["sha256"]:
        return None, "checksum mismatch"
    return tokens, ""


def _write_cache(path: Path, tokens: dict[str, torch.Tensor]) -> None:
    """Write ``tokens`` with their checksum atomically: a temporary file, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save({"format": CACHE_FORMAT, "sha256": tokens_checksum(tokens), "tokens": tokens}, out)
        os.replace(partial, path)  # atomic: concurrent clients never read half a file
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def tokenize(
    table: datasets.Dataset,
    tokenizer: Any,
    max_length: int,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 1024,
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``labels`` (int64) for ``table``.

    Texts are truncated and padded to ``max_length`` (shape ``[rows, max_length]``).
    With ``cache_dir`` the tensors are stored as ``tokens-<key>.pt`` keyed by
    ``cache_key``, with a checksum of their content, and a later call with the same table
    content, tokenizer and ``max_length`` loads them instead of tokenizing again. A cache
    file that is truncated, empty, garbage or fails its checksum is rebuilt, with a
    one-line warning on stderr naming the file.
    """
    if max_length < 1:
        raise TextDataError(f"max_length: must be at least 1, got {max_length}")
    if len(table) == 0:
        raise TextDataError("tokenize: empty table")
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"tokens-{cache_key(table, tokenizer, max_length)[:32]}.pt"
        if path.is_file():
            cached, problem = _read_cache(path)
            if cached is not None:
                return cached
            print(f"fedprune: warning: token cache {path} is corrupt ({problem}); rebuilding it",
                  file=sys.stderr)
    texts = table["text"]
    ids, masks = [], []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size],
            truncation=True,
            padding="max_length",
            max_length=max_length,
            return_tensors="pt",
        )
        ids.append(encoded["input_ids"].long())
        masks.append(encoded["attention_mask"].long())
    result = {
        "input_ids": torch.cat(ids),
        "attention_mask": torch.cat(masks),
        "labels": torch.tensor(table["label"], dtype=torch.long),
    }
    if path is not None:
        _write_cache(path, result)
    return result


# -------------------------------------------------------------------------- partitions


class GroupPartitioner(NaturalIdPartitioner):
    """One partition per value of ``column``, or ``clients_per_group`` per value.

    With ``clients_per_group`` k > 1 the assigned dataset gets a derived column
    ``<column>_client`` = ``"<value>#<j>"``: each group's rows are shuffled (seeded) and
    cut into k near-equal parts. Partition ids follow the sorted ids, so group-major:
    with domains books, dvd and k=2, partitions 0, 1 are books and 2, 3 are dvd.
    """

    def __init__(self, column: str = "domain", clients_per_group: int = 1, seed: int = 0):
        if clients_per_group < 1:
            raise TextDataError(f"clients_per_group: must be at least 1, got {clients_per_group}")
        self.column = column
        self.clients_per_group = clients_per_group
        self.seed = seed
        super().__init__(partition_by=column if clients_per_group == 1 else f"{column}_client")

    @property
    def dataset(self) -> datasets.Dataset:
        return NaturalIdPartitioner.dataset.fget(self)

    @dataset.setter
    def dataset(self, value: datasets.Dataset) -> None:
        if isinstance(value, datasets.Dataset):
            value = self._with_client_ids(value)
        NaturalIdPartitioner.dataset.fset(self, value)

    def _with_client_ids(self, table: datasets.Dataset) -> datasets.Dataset:
        if self.column not in table.column_names:
            raise TextDataError(
                f"partition_by: column {self.column!r} not found; columns found: {table.column_names}"
            )
        k = self.clients_per_group
        if k == 1:
            return table
        groups = np.asarray(table[self.column], dtype=object)
        width = len(str(k - 1))
        ids = np.empty(len(groups), dtype=object)
        rng = np.random.default_rng(self.seed)
        for group in sorted(set(groups.tolist())):
            rows = np.flatnonzero(groups == group)
            if len(rows) < k:
                raise TextDataError(
                    f"clients_per_group: {self.column} {group!r} has {len(rows)} rows, fewer than {k}"
                )
            for part, chunk in enumerate(np.array_split(rng.permutation(rows), k)):
                ids[chunk] = f"{group}#{part:0{width}d}"
        return table.add_column(f"{self.column}_client", ids.tolist())


def natural_partitioner(column: str = "domain", clients_per_group: int = 1, seed: int = 0) -> GroupPartitioner:
    """A Flower Datasets ``NaturalIdPartitioner`` over ``column`` (see ``GroupPartitioner``)."""
    return GroupPartitioner(column=column, clients_per_group=clients_per_group, seed=seed)
