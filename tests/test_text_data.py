"""Text data: local tables, Amazon domains, one-line errors, tokenization cache, natural partitions."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fedprune.data import text as T
from fedprune.data.text import TextDataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SST2 = SHARED / "sst2"
AMAZON = SHARED / "amazon-domains"
needs_sst2 = pytest.mark.skipif(not SST2.is_dir(), reason="shared SST-2 data not present")
needs_amazon = pytest.mark.skipif(not AMAZON.is_dir(), reason="shared Amazon data not present")

ROWS = [("a fine film", 1), ('said "no", then left', 0), ("multi\nline, review", 1), ("meh", 0)]


def _independent_rows(path: Path) -> list[list[str]]:
    """Data rows of a quoted TSV read with the csv module, no fedprune code."""
    csv.field_size_limit(1 << 30)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    return [row for row in rows[1:] if row]


# ------------------------------------------------------------------------ shared files


@needs_sst2
def test_sst2_folder_splits_match_an_independent_read() -> None:
    dev = T.load_text_table(SST2, split="dev")
    assert dev.column_names == ["text", "label"]
    expected = _independent_rows(SST2 / "dev.tsv")
    assert len(dev) == len(expected) == 872
    assert dev["text"][:5] == [row[0] for row in expected[:5]]
    assert Counter(dev["label"]) == Counter(int(row[1]) for row in expected)
    assert set(dev["label"]) == {0, 1}
    train = T.load_text_table(SST2 / "train.tsv")
    assert len(train) == 67349 and set(train["label"]) == {0, 1}
    assert T.num_classes(train) == 2


@needs_amazon
def test_amazon_domains_rows_labels_and_domain_column() -> None:
    table = T.load_amazon_domains(AMAZON, split="train")
    assert table.column_names == ["text", "label", "domain"]
    domains = ["books", "dvd", "electronics", "kitchen"]
    assert T.amazon_domains(AMAZON) == domains
    counts = Counter(table["domain"])
    for domain in domains:
        expected = _independent_rows(AMAZON / domain / "train.tsv")
        assert counts[domain] == len(expected) == 1700  # dataset notes: 1,700 train per domain
    assert set(table["label"]) == {0, 1}
    books = table.filter(lambda row: row["domain"] == "books")
    first = _independent_rows(AMAZON / "books" / "train.tsv")[0]
    assert books[0]["text"] == first[0] and "\n" in books[0]["text"]  # quoted multi-line kept whole
    assert books[0]["label"] == int(first[1])
    test = T.load_amazon_domains(AMAZON, split="test", domains=["kitchen"])
    assert len(test) == 2000 and set(test["domain"]) == {"kitchen"}
    assert Counter(test["label"]) == {0: 1000, 1: 1000}


@needs_amazon
def test_amazon_unknown_domain_and_split_are_named() -> None:
    with pytest.raises(TextDataError, match=r"unknown domains \['music'\]; domains found: \['books'"):
        T.load_amazon_domains(AMAZON, domains=["books", "music"])
    with pytest.raises(TextDataError, match="unknown split 'valid'"):
        T.load_amazon_domains(AMAZON, split="valid")


# ------------------------------------------------------------------------ local formats


def _write(path: Path, kind: str, text_col: str = "review", label_col: str = "stars") -> Path:
    if kind in ("csv", "tsv"):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="," if kind == "csv" else "\t")
            writer.writerow(["id", text_col, label_col])
            writer.writerows([i, text, str(label)] for i, (text, label) in enumerate(ROWS))
    elif kind == "jsonl":
        path.write_text(
            "".join(json.dumps({"id": i, text_col: t, label_col: y}) + "\n" for i, (t, y) in enumerate(ROWS))
        )
    else:
        pq.write_table(
            pa.table({text_col: [t for t, _ in ROWS], label_col: [y for _, y in ROWS]}), path
        )
    return path


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "parquet"])
def test_local_file_with_custom_columns(tmp_path: Path, kind: str) -> None:
    path = _write(tmp_path / f"data.{kind}", kind)
    table = T.load_text_table(path, text_column="review", label_column="stars")
    assert table.column_names == ["text", "label"]
    assert table.features["label"].dtype == "int64"
    assert list(zip(table["text"], table["label"], strict=True)) == ROWS


def test_split_folder_and_default_text_column(tmp_path: Path) -> None:
    _write(tmp_path / "train.csv", "csv", text_col="text", label_col="label")
    _write(tmp_path / "validation.jsonl", "jsonl", text_col="sentence", label_col="label")
    assert len(T.load_text_table(tmp_path)) == len(ROWS)
    assert T.load_text_table(tmp_path, split="dev")["text"] == [t for t, _ in ROWS]
    with pytest.raises(TextDataError, match=r"no file for split 'test' .*files found: \['train.csv'"):
        T.load_text_table(tmp_path, split="test")


def test_hub_failure_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'someone/reviews'\non the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TextDataError) as info:
        T.load_text_table("someone/reviews", split="train")
    message = str(info.value)
    assert "cannot load 'someone/reviews' from the Hugging Face hub: ConnectionError" in message
    assert "\n" not in message


def test_hub_table_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = datasets.Dataset.from_dict({"sentence": ["x", "y"], "label": [1, 0], "idx": [0, 1]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: hub)
    table = T.load_text_table("glue", hub_config="sst2", split="validation")
    assert table["text"] == ["x", "y"] and table["label"] == [1, 0]


# ---------------------------------------------------------------------------- errors


def _error(path: Path, **kwargs: object) -> str:
    with pytest.raises(TextDataError) as info:
        T.load_text_table(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(str(path)), message
    return message


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert "no such file or folder" in _error(tmp_path / "absent.csv")
    assert "no such file or folder" in _error(tmp_path / "absent_dir" / "x")
    with pytest.raises(TextDataError, match="no such folder"):
        T.load_amazon_domains(tmp_path / "nowhere")


def test_empty_files(tmp_path: Path) -> None:
    for name in ("empty.csv", "empty.tsv", "empty.jsonl"):
        (tmp_path / name).write_text("")
        assert _error(tmp_path / name).endswith("empty file")
    (tmp_path / "header.tsv").write_text("sentence\tlabel\n")
    assert "empty file (no data rows)" in _error(tmp_path / "header.tsv")


def test_missing_columns_list_the_columns_found(tmp_path: Path) -> None:
    path = tmp_path / "nolabel.tsv"
    path.write_text("sentence\tscore\ngood\t1\n")
    message = _error(path)
    assert "label column 'label' not found; columns found: ['sentence', 'score']" in message
    path = tmp_path / "notext.csv"
    path.write_text("body,label\ngood,1\n")
    assert "no text column (tried sentence, text); columns found: ['body', 'label']" in _error(path)
    assert "text column 'review' not found" in _error(path, text_column="review")


@pytest.mark.parametrize(
    ("value", "problem"),
    [("positive", "row 2: label 'positive' is not an integer"),
     ("1.5", "row 2: label '1.5' is not an integer"),
     ("", "row 2: label '' is not an integer"),
     ("-1", "row 2: label -1 is negative")],
)
def test_bad_labels_name_row_and_value(tmp_path: Path, value: str, problem: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(f"text,label\ngood,1\nbad,{value}\n")
    assert problem in _error(path)


def test_bad_rows_and_types(tmp_path: Path) -> None:
    path = tmp_path / "ragged.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    assert "row 2 (line 3) has 3 fields, the header has 2" in _error(path)
    path = tmp_path / "float.jsonl"
    path.write_text('{"text": "a", "label": 1.0}\n{"text": "b", "label": true}\n')
    assert "row 2: label True is not an integer" in _error(path)
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": \n')
    assert "line 2 is not valid JSON" in _error(path)
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    assert "unsupported file type '.xlsx'" in _error(path)


# ---------------------------------------------------------------------- tokenization


WORDS = "a fine film said no then left multi line review meh good bad".split()


@pytest.fixture
def tokenizer(tmp_path: Path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", '"', *WORDS]
    vocab.write_text("\n".join(tokens) + "\n")
    # positional: the vocab file in transformers 4 (vocab_file) and 5 (vocab); transformers 5
    # silently ignores a vocab_file= keyword and keeps only the special tokens.
    built = BertTokenizerFast(str(vocab), do_lower_case=True)
    assert len(built) == len(tokens)
    return built


class CountingTokenizer:
    """Delegates to a tokenizer and counts how often it tokenizes."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def _table(rows=ROWS) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]})


def test_tokenize_shapes_and_values(tokenizer) -> None:
    out = T.tokenize(_table(), tokenizer, max_length=6)
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    assert out["input_ids"].shape == out["attention_mask"].shape == (len(ROWS), 6)
    assert out["input_ids"].dtype == torch.long
    assert out["labels"].tolist() == [y for _, y in ROWS]
    word = {w: 7 + i for i, w in enumerate(WORDS)}  # ids from the vocab file written above
    # [CLS] a fine film [SEP] [PAD]
    assert out["input_ids"][0].tolist() == [2, word["a"], word["fine"], word["film"], 3, 0]
    # [CLS] said " no " [SEP]: cut to max_length, [SEP] kept
    assert out["input_ids"][1].tolist() == [2, word["said"], 6, word["no"], 6, 3]
    assert out["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0]
    assert out["attention_mask"][2].tolist() == [1] * 6  # truncated


def test_tokenize_cache_hits_without_retokenizing(tmp_path: Path, tokenizer) -> None:
    counting = CountingTokenizer(tokenizer)
    cache = tmp_path / "cache"
    first = T.tokenize(_table(), counting, max_length=8, cache_dir=cache)
    assert counting.calls == 1 and len(list(cache.glob("tokens-*.pt"))) == 1
    second = T.tokenize(_table(), counting, max_length=8, cache_dir=cache)  # a new, equal table
    assert counting.calls == 1
    for key in first:
        assert torch.equal(first[key], second[key])
    T.tokenize(_table(), counting, max_length=9, cache_dir=cache)  # other max_length: a miss
    T.tokenize(_table(ROWS[:3]), counting, max_length=8, cache_dir=cache)  # other content: a miss
    relabelled = _table([(t, 1 - y) for t, y in ROWS])
    T.tokenize(relabelled, counting, max_length=8, cache_dir=cache)  # other labels: a miss
    assert counting.calls == 4 and len(list(cache.glob("tokens-*.pt"))) == 4


def _corrupt(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(bytes(range(256)) * 7)
    else:  # a valid file whose tensors changed after the checksum was taken
        stored = torch.load(path, weights_only=True)
        stored["tokens"]["labels"][0] += 1
        torch.save(stored, path)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "tampered"])
def test_corrupt_cache_file_is_rebuilt_with_a_warning(tmp_path: Path, tokenizer, capsys, how: str) -> None:
    counting = CountingTokenizer(tokenizer)
    cache = tmp_path / "cache"
    expected = T.tokenize(_table(), tokenizer, max_length=8)  # no cache involved
    T.tokenize(_table(), counting, max_length=8, cache_dir=cache)
    (path,) = cache.glob("tokens-*.pt")
    _corrupt(path, how)
    capsys.readouterr()
    rebuilt = T.tokenize(_table(), counting, max_length=8, cache_dir=cache)
    assert counting.calls == 2  # tokenized again, not read from the bad file
    for key in expected:
        assert torch.equal(rebuilt[key], expected[key])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "rebuilding" in lines[0]
    again = T.tokenize(_table(), counting, max_length=8, cache_dir=cache)  # the rewritten file is good
    assert counting.calls == 2 and torch.equal(again["input_ids"], expected["input_ids"])
    assert capsys.readouterr().err == ""
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no temporary files left


def test_cache_write_is_atomic(tmp_path: Path, tokenizer, monkeypatch) -> None:
    """A write that dies half-way leaves the previous file (here: none) and no temporary file."""
    cache = tmp_path / "cache"

    def dies(obj, out) -> None:
        out.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(T.torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        T.tokenize(_table(), tokenizer, max_length=8, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_token_cache_follows_fedprune_cache(tmp_path: Path, monkeypatch) -> None:
    from fedprune.data.federation import token_cache

    monkeypatch.setenv("FEDPRUNE_CACHE", str(tmp_path))
    assert token_cache() == tmp_path / "tokens"


def test_cache_key_depends_on_tokenizer_vocab(tmp_path: Path, tokenizer) -> None:
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab2.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *reversed(WORDS)]) + "\n")
    other = BertTokenizerFast(str(vocab))
    assert len(other) == len(tokenizer) - 2
    assert T.cache_key(_table(), tokenizer, 8) == T.cache_key(_table(), tokenizer, 8)
    assert T.cache_key(_table(), tokenizer, 8) != T.cache_key(_table(), other, 8)


# ------------------------------------------------------------------------ partitions


def _domains_table() -> datasets.Dataset:
    domains = ["b"] * 5 + ["a"] * 7 + ["c"] * 4
    return datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(16)], "label": [i % 2 for i in range(16)], "domain": domains}
    )


def test_natural_partitioner_one_partition_per_domain() -> None:
    table = _domains_table()
    partitioner = T.natural_partitioner("domain")
    partitioner.dataset = table
    assert partitioner.num_partitions == 3
    assert partitioner.partition_id_to_natural_id == {0: "a", 1: "b", 2: "c"}
    for pid, domain in partitioner.partition_id_to_natural_id.items():
        part = partitioner.load_partition(pid)
        assert set(part["domain"]) == {domain}
        assert sorted(part["text"]) == sorted(t for t, d in zip(table["text"], table["domain"]) if d == domain)


def test_natural_partitioner_k_clients_per_domain_seeded() -> None:
    table = _domains_table()
    partitioner = T.natural_partitioner("domain", clients_per_group=2, seed=3)
    partitioner.dataset = table
    assert partitioner.num_partitions == 6
    names = partitioner.partition_id_to_natural_id
    assert names == {0: "a#0", 1: "a#1", 2: "b#0", 3: "b#1", 4: "c#0", 5: "c#1"}
    parts = [partitioner.load_partition(pid) for pid in range(6)]
    assert [len(p) for p in parts] == [4, 3, 3, 2, 2, 2]
    for pid, part in enumerate(parts):
        assert set(part["domain"]) == {names[pid][0]}
    all_texts = [t for part in parts for t in part["text"]]
    assert sorted(all_texts) == sorted(table["text"])  # disjoint and complete
    again = T.natural_partitioner("domain", clients_per_group=2, seed=3)
    again.dataset = table
    assert again.load_partition(0)["text"] == parts[0]["text"]
    other = T.natural_partitioner("domain", clients_per_group=2, seed=4)
    other.dataset = table
    assert [other.load_partition(p)["text"] for p in range(6)] != [p["text"] for p in parts]


def test_natural_partitioner_errors() -> None:
    with pytest.raises(TextDataError, match="clients_per_group: must be at least 1"):
        T.natural_partitioner(clients_per_group=0)
    partitioner = T.natural_partitioner("site")
    with pytest.raises(TextDataError, match=r"column 'site' not found; columns found: \['text', 'label', 'domain'\]"):
        partitioner.dataset = _domains_table()
    partitioner = T.natural_partitioner("domain", clients_per_group=5)
    with pytest.raises(TextDataError, match="domain 'c' has 4 rows, fewer than 5"):
        partitioner.dataset = _domains_table()
