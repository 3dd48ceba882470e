"""What a client does in one round on its own data: train (under its mask, or squeezed),
prune on schedule, remember what to keep, and measure its model. Pure torch plus the
client's ``Context.state`` (``ClientMemory``); the ClientApp handlers in ``app.py`` wrap it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from flwr.app import RecordDict
from torch import nn

from fedprune.clients import budgets
from fedprune.clients.state import ClientMemory
from fedprune.config import ExperimentConfig
from fedprune.data.federation import clients_data
from fedprune.data.partition import ClientData
from fedprune.device.budget import DeviceProfile, fit_sparsity
from fedprune.device.profiles import client_profile
from fedprune.methods import Method
from fedprune.models.factory import sharing
from fedprune.pruning import CubicSchedule, apply_masks
from fedprune.pruning.masks import Masks
from fedprune.pruning.pruner import BackwardHook, PruneData, Pruner
from fedprune.pruning.squeeze import expand, squeeze
from fedprune.pruning.units import param_masks, post_prune, refit_step
from fedprune.seeds import derive_seed
from fedprune.training import accuracy, train_local


def training_generator(cfg: ExperimentConfig, *parts: object) -> torch.Generator:
    """A seeded generator for the data order; torch's global RNG, which dropout draws from,
    is seeded alike, so training does not depend on what the worker process ran before.
    (The CPU generator directly: ``torch.manual_seed`` also queues a seed for every
    accelerator backend, recording a stack trace each time, ~2 ms per call on a CPU-only
    machine; a CUDA generator is seeded only once CUDA is in use.)"""
    seed = derive_seed(cfg.seed, *parts)
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def keeps_own_tensors(cfg: ExperimentConfig, method: Method) -> bool:
    """Whether the client must remember its own tensors between rounds."""
    return not method.federated or cfg.personal_layers != "none" or cfg.personal_fraction > 0


def schedule_for(cfg: ExperimentConfig, final: float) -> CubicSchedule:
    """The cubic schedule of ``cfg`` towards this client's ``final`` sparsity."""
    return CubicSchedule(min(cfg.initial_sparsity, final), final, cfg.prune_start_round, cfg.prune_end_round,
                         cfg.prune_frequency)


def training_device(cfg: ExperimentConfig, after_backward: BackwardHook | None = None) -> torch.device:
    """Where local training runs: a GPU when the config gives clients one
    (``num_gpus_per_client`` > 0; Ray then makes the client's GPU the visible one) and torch
    sees it, else the CPU. Pruners that observe training (``after_backward``: movement,
    taylor) keep their scores on the CPU, so they train there."""
    if cfg.num_gpus_per_client > 0 and after_backward is None and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def train_epochs(model: nn.Module, cfg: ExperimentConfig, data: ClientData, masks: Masks | None, epochs: int,
           generator: torch.Generator, after_backward: BackwardHook | None = None) -> float:
    """Local epochs; with FedRep, head-only epochs first, then body-only epochs. On the
    ``training_device``; the model is back on the CPU afterwards."""
    shares = sharing(cfg, model)
    names = [name for name, _ in model.named_parameters() if name not in shares.frozen]
    device = training_device(cfg, after_backward)
    x, y = data.train_x.to(device), data.train_y.to(device)
    on_device = None if masks is None else {k: v.to(device) for k, v in masks.items()}
    model.to(device)

    def run(names: list[str], epochs: int) -> float:
        return train_local(model, x, y, epochs=epochs, trainable=names,
                           batch_size=cfg.batch_size, optimizer=cfg.optimizer, learning_rate=cfg.learning_rate,
                           momentum=cfg.momentum, masks=on_device, generator=generator, after_backward=after_backward)

    try:
        if cfg.fedrep_head_epochs == 0:
            return run(names, epochs)
        run([n for n in names if n in shares.personal], cfg.fedrep_head_epochs)
        return run([n for n in names if n not in shares.personal], epochs)
    finally:
        model.to("cpu")


def prune_step(pruner: Pruner, model: nn.Module, masks: Masks | None, units: Masks | None, data: PruneData,
                profile: DeviceProfile | None, inputs: torch.Tensor, last: int = 0
                ) -> tuple[Masks | None, Masks | None]:
    """The personal mask (and unit masks) after this round's pruning step; unchanged when none is due.

    ``last`` is the client's last pruning step: a client that missed pruning steps (partial
    participation) catches up to the target of the latest one (``Pruner.due_at``).
    A client with a device profile aims at the sparsity its budget allows; at its final
    pruning step the sparsity rises until the personal model fits (structured pruners:
    the squeezed model; unstructured ones: its sparse storage, byte budgets only).
    """
    due = pruner.due_at(data.step, last)
    target = None if due is None else due[1]
    # A client with no mask yet and a target of 0 stays dense: no all-true mask on the wire.
    if target is None or not (masks or target > 0):
        return masks, units

    def prune(sparsity: float) -> tuple[Masks, Masks | None]:
        if pruner.structured:
            chosen = pruner.prune(model, units, sparsity, data)
            return param_masks(model, chosen), chosen
        return pruner.prune(model, masks, sparsity, data), None

    final = pruner.schedule.final
    if profile is None or target < final or not budgets.can_fit(profile, pruner.structured, model, inputs):
        return prune(target)
    chosen: dict[float, tuple[Masks, Masks | None]] = {}

    def fits(sparsity: float) -> bool:
        chosen[sparsity] = prune(sparsity)
        return budgets.personal_fits(profile, model, *chosen[sparsity], inputs)

    sparsity, _ = fit_sparsity(target, fits)
    return chosen[sparsity]


def make_pruner(method: Method, cfg: ExperimentConfig, model: nn.Module, profile: DeviceProfile | None,
                 inputs: torch.Tensor) -> Pruner | None:
    """The method's pruner for this client: towards ``final_sparsity``, or the budget's first guess."""
    if method.pruner is None:
        return None
    final = cfg.final_sparsity if profile is None else budgets.first_guess(profile, model, inputs)
    return method.pruner(schedule_for(cfg, final), cfg.pruner_options)


def warmup_epochs(cfg: ExperimentConfig, pruner: Pruner | None, masks: Masks | None, units: Masks | None,
                  last: int, server_round: int) -> int:
    """``prune_warmup_epochs`` in the still-dense client's last dense round, else 0: the round
    whose pruning step gives it its first mask (a step is due with a target above 0; ``last``: its
    last pruning step), or with ``prune_before_training`` the round before that step."""
    if pruner is None or masks or units:
        return 0
    due = pruner.due_at(server_round + 1 if cfg.prune_before_training else server_round, last)
    return cfg.prune_warmup_epochs if due is not None and due[1] > 0 else 0


def prune_on_schedule(pruner: Pruner, model: nn.Module, masks: Masks | None, units: Masks | None,
                      memory: ClientMemory, data: PruneData, profile: DeviceProfile | None,
                      inputs: torch.Tensor, last: int) -> tuple[Masks | None, Masks | None]:
    """This round's pruning step (``prune_step``), the refit of refitting pruners, and the
    step taken remembered. The caller masks the model to the result."""
    before = units
    masks, units = prune_step(pruner, model, masks, units, data, profile, inputs, last)
    if units is not None and units is not before and pruner.refits:
        refit_step(model, units, data.x)
    due = pruner.due_at(data.step, last)
    if due is not None:
        memory.save_pruned_step(due[0])
    return masks, units


@dataclass(frozen=True)
class LocalRound:
    """What a client's round of local training left: its loss, its optimizer steps, its
    personal mask (and unit masks) and whether its personal model fits its device budget
    (-1: no budget)."""

    loss: float
    steps: int
    masks: Masks | None
    units: Masks | None
    budget_met: float


def train_and_prune(model: nn.Module, masks: Masks | None, method: Method, cfg: ExperimentConfig,
                     memory: ClientMemory, partition: int, server_round: int) -> LocalRound:
    """Train ``model`` in place on the client's data, prune on schedule (after training, or before it with
    ``prune_before_training``), remember what to keep."""
    data = clients_data(cfg)[partition]
    generator = training_generator(cfg, method.stream, partition, server_round)
    profile = client_profile(cfg, partition)
    inputs = data.train_x[:budgets.BATCH]
    pruner = make_pruner(method, cfg, model, profile, inputs)
    hook = pruner.observe(model, memory.pruner_state()) if pruner is not None else None
    units = memory.units() if method.structured else None
    last = memory.pruned_step()
    prune_data = PruneData(data.train_x, data.train_y, partition, server_round, cfg.seed)

    def prune(pruner: Pruner, masks: Masks | None, units: Masks | None) -> tuple[Masks | None, Masks | None]:
        return prune_on_schedule(pruner, model, masks, units, memory, prune_data, profile, inputs, last)

    if pruner is not None and cfg.prune_before_training:  # on the model as received
        masks, units = prune(pruner, masks, units)
        if masks is not None:  # training masks gradients and steps, not the first forward pass
            apply_masks(model, masks)
    epochs = cfg.local_epochs + warmup_epochs(cfg, pruner, masks, units, last, server_round)
    if units:  # train the squeezed personal model, write it back into full-size coordinates
        small = squeeze(model, units)
        loss = train_epochs(small, cfg, data, None, epochs, generator)
        model.load_state_dict(expand(small, model, units))
    else:
        loss = train_epochs(model, cfg, data, masks, epochs, generator, after_backward=hook)
    if pruner is not None:
        if not cfg.prune_before_training:  # on the model it has just trained
            masks, units = prune(pruner, masks, units)
        memory.save_pruner_state(pruner.state())
    if units is not None:
        memory.save_units(units)
    if masks is not None:
        apply_masks(model, masks)
        memory.save_mask(masks)
    if keeps_own_tensors(cfg, method):
        memory.save_model(model.state_dict())
    met = -1.0 if profile is None else float(budgets.personal_fits(profile, model, masks, units, inputs))
    steps = math.ceil(len(data.train_y) / cfg.batch_size) * (epochs + cfg.fedrep_head_epochs)
    return LocalRound(loss, steps, masks, units, met)


def accuracies(model: nn.Module, data: ClientData, prefix: str = "") -> dict[str, float]:
    """Accuracy on the test part, and on the validation part when the client has one."""
    found = {f"{prefix}accuracy": accuracy(model, data.test_x, data.test_y)}
    if len(data.val_y):
        found[f"{prefix}val-accuracy"] = accuracy(model, data.val_x, data.val_y)
    return found


def finetuning(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with the fine-tuning learning rate (``finetune_learning_rate``; 0: ``learning_rate``)."""
    return dataclasses.replace(cfg, learning_rate=cfg.finetune_learning_rate or cfg.learning_rate)


def personal_at_evaluation(model: nn.Module, masks: Masks | None, units: Masks | None, method: Method,
                           cfg: ExperimentConfig, partition: int, server_round: int
                           ) -> tuple[nn.Module, Masks | None, Masks | None]:
    """The personal model the method evaluates: squeezed for structured pruners, pruned after
    training and refit (``personal.prune``), fine-tuned (``personal.finetune``)."""
    data = clients_data(cfg)[partition]
    if method.personal.prune is not None:
        full = model
        pruner = method.personal.prune(schedule_for(cfg, cfg.final_sparsity), cfg.pruner_options)
        prune_data = PruneData(data.train_x, data.train_y, partition, server_round, cfg.seed)
        model, units = post_prune(full, pruner, cfg.final_sparsity, prune_data)
        masks = param_masks(full, units)
    elif units:
        model = squeeze(model, units)  # the personal model a device would run
    if method.personal.finetune:
        generator = training_generator(cfg, "finetune", partition, server_round)
        train_epochs(model, finetuning(cfg), data, None if units else masks, cfg.finetune_epochs, generator)
    return model, masks, units


def onboard(model: nn.Module, method: Method, cfg: ExperimentConfig, partition: int, server_round: int
            ) -> tuple[nn.Module, Masks | None, Masks | None]:
    """The personal model of a new client, which never trained, from the final model ``model``.

    - A method that does not federate: the client trains alone from the initial model for
      the run's ``rounds`` rounds, pruning on schedule, as its clients did.
    - Otherwise the method's pruner prunes the final model to ``final_sparsity`` on the
      client's training data (a pruner that learns from training, such as movement or
      taylor, first sees ``finetune_epochs`` of it; a refitting pruner, ``mi-refit``, then
      refits as at its clients' pruning steps), the pruned model is fine-tuned for
      ``finetune_epochs``, then the method's own evaluation step follows (``fedavg-ft``
      fine-tunes, ``mi-post`` prunes and refits). ``fedavg`` evaluates the final model as is.
    """
    data = clients_data(cfg)[partition]
    if not method.federated:
        memory = ClientMemory(RecordDict(), method.name)
        masks: Masks | None = None
        for step in range(1, cfg.rounds + 1):
            masks = train_and_prune(model, masks, method, cfg, memory, partition, step).masks
        units = memory.units() if method.structured else None
        return personal_at_evaluation(model, masks, units, method, cfg, partition, server_round)
    masks, units = None, None
    if method.pruner is not None:
        pruner = method.pruner(schedule_for(cfg, cfg.final_sparsity), cfg.pruner_options)
        hook = pruner.observe(model, None)
        if hook is not None:
            train_epochs(model, finetuning(cfg), data, None, cfg.finetune_epochs,
                         training_generator(cfg, "onboard-scores", partition), after_backward=hook)
        chosen = pruner.prune(model, None, cfg.final_sparsity,
                              PruneData(data.train_x, data.train_y, partition, server_round, cfg.seed))
        if pruner.structured and pruner.refits:  # the method's own step, as its clients take it
            refit_step(model, chosen, data.train_x)
        masks, units = (param_masks(model, chosen), chosen) if pruner.structured else (chosen, None)
        apply_masks(model, masks)
        tuned = squeeze(model, units) if units else model
        train_epochs(tuned, finetuning(cfg), data, None if units else masks, cfg.finetune_epochs,
                     training_generator(cfg, "onboard", partition))
        if units:
            model.load_state_dict(expand(tuned, model, units))
    return personal_at_evaluation(model, masks, units, method, cfg, partition, server_round)
