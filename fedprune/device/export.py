"""A model as a standalone file for an edge runtime: ONNX (run by onnxruntime) or TorchScript.

The exporters are torch's own. ONNX: the TorchScript-based ``torch.onnx.export(...,
dynamo=False)``, which needs no ``onnxscript``, works offline and writes the same bytes
for the same model; TorchScript: ``torch.jit.trace``. Both trace one forward pass, so the
file computes exactly the operations of the model as it stands (a squeezed model's smaller
layers, a masked model's zeros).

Inputs: a features model takes ``features`` (float32, ``(batch, *input shape)``); a text
model (``TextClassifier``, packed ``(batch, 2, tokens)`` input) is exported behind
``TokenInputs``, so that the file takes ``input_ids`` and ``attention_mask`` (int64,
``(batch, tokens)``) as a Hugging Face model does. The output is ``logits`` (float32,
``(batch, classes)``). The batch axis is dynamic, and so is the token axis of text models.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedprune.device.cost import Latency, time_call
from fedprune.models.text import TextClassifier, pack_tokens

#: format name -> file suffix
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
#: ONNX opset written (onnxruntime 1.2x runs it; the newest opset the TorchScript-based exporter knows)
OPSET = 18
FEATURES, INPUT_IDS, ATTENTION_MASK, LOGITS = "features", "input_ids", "attention_mask", "logits"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an exported file: its name, dtype and shape (a str names a dynamic axis)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


class TokenInputs(nn.Module):
    """A ``TextClassifier`` that takes ``input_ids`` and ``attention_mask`` as two tensors."""

    def __init__(self, model: TextClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(pack_tokens(input_ids, attention_mask))


def is_text(model: nn.Module) -> bool:
    """True for a text model (packed token input)."""
    return isinstance(model, TextClassifier)


def file_inputs(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The file's inputs for ``batch`` as the model takes it: ``(features,)``, or
    ``(input_ids, attention_mask)`` from a packed text batch."""
    if is_text(model):
        return batch[:, 0].contiguous(), batch[:, 1].contiguous()
    return (batch,)


def _names(model: nn.Module) -> list[str]:
    return [INPUT_IDS, ATTENTION_MASK] if is_text(model) else [FEATURES]


def _axes(model: nn.Module) -> dict[str, dict[int, str]]:
    dynamic = {0: "batch", 1: "tokens"} if is_text(model) else {0: "batch"}
    return {**{name: dict(dynamic) for name in _names(model)}, LOGITS: {0: "batch"}}


def tensor_specs(model: nn.Module, batch: torch.Tensor) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The file's input and output specs for an example ``batch`` (dynamic axes named)."""
    axes = _axes(model)
    with torch.no_grad():
        logits = model.eval()(batch)

    def spec(name: str, tensor: torch.Tensor) -> TensorSpec:
        shape = tuple(axes[name].get(i, size) for i, size in enumerate(tensor.shape))
        return TensorSpec(name, str(tensor.dtype).removeprefix("torch."), shape)

    inputs = [spec(name, t) for name, t in zip(_names(model), file_inputs(model, batch), strict=True)]
    return inputs, [spec(LOGITS, logits)]


def _traceable(model: nn.Module) -> nn.Module:
    return (TokenInputs(model) if isinstance(model, TextClassifier) else model).eval()


@contextmanager
def _quiet() -> Iterator[None]:
    """Tracing warns about every Python-level shape check it freezes and about the exporter's
    deprecation; the exported file is checked against the model instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@torch.no_grad()
def export_onnx(model: nn.Module, batch: torch.Tensor, target: Path | io.BytesIO) -> None:
    """Write ``model`` as ONNX to ``target`` (a path or an in-memory buffer), traced on ``batch``."""
    names = _names(model)
    with _quiet():
        torch.onnx.export(_traceable(model), file_inputs(model, batch), target,  # type: ignore[arg-type]
                          input_names=names, output_names=[LOGITS], dynamic_axes=_axes(model),
                          opset_version=OPSET, dynamo=False)


@torch.no_grad()
def export_torchscript(model: nn.Module, batch: torch.Tensor, target: Path) -> None:
    """Write ``model`` as a TorchScript file (``torch.jit.load``-able) to ``target``, traced on ``batch``."""
    with _quiet():
        traced = torch.jit.trace(_traceable(model), file_inputs(model, batch), check_trace=False)
        torch.jit.save(traced, str(target))


def export(model: nn.Module, batch: torch.Tensor, fmt: str, target: Path) -> None:
    """Write ``model`` in format ``fmt`` (a key of ``FORMATS``) to ``target``."""
    if fmt == "onnx":
        export_onnx(model, batch, target)
    elif fmt == "torchscript":
        export_torchscript(model, batch, target)
    else:
        raise ValueError(f"format {fmt!r}; allowed: {', '.join(FORMATS)}")


def session_options(threads: int = 1) -> Any:
    """onnxruntime session options for timing on the CPU: ``threads`` intra-op threads, one
    inter-op thread, sequential execution, denormals as zero (like ``measure_latency``), errors
    only in the log, every graph optimization (onnxruntime's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    options.log_severity_level = 3  # errors only
    return options


def onnx_session(source: Path | bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session on ``source`` (a file or the model's bytes) with ``session_options``."""
    import onnxruntime

    model = str(source) if isinstance(source, Path) else source
    return onnxruntime.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])


def _feeds(model: nn.Module, batch: torch.Tensor) -> dict[str, Any]:
    return {name: t.numpy() for name, t in zip(_names(model), file_inputs(model, batch), strict=True)}


@torch.no_grad()
def run_file(path: Path, fmt: str, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The logits of the exported file at ``path`` on ``batch`` (onnxruntime for ONNX,
    ``torch.jit.load`` for TorchScript); ``model`` is the model it was exported from (for
    the input names)."""
    if fmt == "onnx":
        return torch.from_numpy(onnx_session(path).run([LOGITS], _feeds(model, batch))[0])
    loaded = torch.jit.load(str(path))
    return loaded(*file_inputs(model, batch))


@torch.no_grad()
def max_abs_difference(path: Path, fmt: str, model: nn.Module, batch: torch.Tensor) -> float:
    """Largest absolute difference between the file's logits and ``model``'s on ``batch``."""
    expected = model.eval()(batch)
    return float((run_file(path, fmt, model, batch) - expected).abs().max())


def onnx_latency(model: nn.Module, batch: torch.Tensor, threads: int = 1, min_run_time: float = 0.3) -> Latency:
    """Latency of ``model`` exported to ONNX (in memory) and run by onnxruntime on ``batch``.

    The same repeat policy as ``measure_latency`` (``time_call``: warm-up, then the median of
    ``torch.utils.benchmark``'s ``blocked_autorange``), the timed call being the session's
    ``run``; onnxruntime uses ``threads`` intra-op threads (``onnx_session``).
    """
    buffer = io.BytesIO()
    export_onnx(model, batch, buffer)
    session = onnx_session(buffer.getvalue(), threads)
    feeds = _feeds(model, batch)
    return time_call(lambda: session.run([LOGITS], feeds), threads, min_run_time)
