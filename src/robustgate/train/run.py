"""A training run in a directory: resumable, logged, with best-checkpoint selection.

The directory holds ``spec.json`` (what is trained), ``log.jsonl`` (one line per epoch, with
validation metrics where validated), ``state.pt`` (weights, optimizer and epoch, rewritten after
every epoch), ``epochs/epoch-K.safetensors`` for validated epochs, and at the end
``last.safetensors``, ``best.safetensors`` and ``summary.json``. Started again on the same
directory, a run continues from its last finished epoch and ends with the same weights as an
uninterrupted run (every epoch's randomness is seeded from the seed and the epoch).

Under torchrun every rank trains (``train.loop``) and validates its own slice of the validation
split, the metrics averaged over ranks; rank 0 alone writes the directory, the other ranks wait
for it at a barrier after every epoch and at the end. The directory must be one that every rank
reads (one machine, or a file system the machines share). A run resumes from ``state.pt`` with
any number of processes: the state holds the weights, the optimizer and the epochs done, none of
which depends on the number of ranks.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from robustgate.attacks import build_attack
from robustgate.certify import Smooth
from robustgate.config import DataSettings, SelectionSettings, TrainSpec, ValidationSettings
from robustgate.data import load_dataset
from robustgate.distributed import ALONE, Process, barrier, mean_over_ranks, shard
from robustgate.evaluate import (
    certified_metrics,
    certify_smoothed,
    evaluate_model,
    robustness_metrics,
)
from robustgate.io import atomic_write, atomic_write_json, atomic_write_text
from robustgate.losses import LOSSES, make_loss, training_attack
from robustgate.models import (
    build_model,
    is_import_path,
    load_checkpoint,
    load_state_dict_file,
    resolve_architecture,
    save_checkpoint,
)
from robustgate.threat import ThreatModel
from robustgate.train.augmentation import make_augmentation
from robustgate.train.loop import DivergedError, fit, make_optimizer

Data = tuple[torch.Tensor, torch.Tensor]


def initial_model(
    spec: TrainSpec, num_classes: int, device: torch.device,
    resolve: Callable[[str], Path] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model to train and its constructor arguments: built fresh (seeded by the caller), or
    with the weights of ``spec.model.init``; only the last linear layer trains when asked."""
    arguments = {"num_classes": num_classes, **spec.model.arguments}
    init = spec.model.init
    if init is None:
        model = build_model(spec.model.architecture, arguments).to(device)
    else:
        path = resolve(init) if init.startswith("@") and resolve else Path(init)
        try:
            model, _ = load_checkpoint(
                path, device, trust_code=is_import_path(spec.model.architecture))
        except ValueError:  # not a robustgate checkpoint: a plain state dict of this architecture
            model = load_state_dict_file(path, spec.model.architecture, arguments, device,
                                         spec.model.init_keys)
            if spec.model.init_keys == "robustbench":  # the normalization the weights expect
                arguments |= {name: getattr(model.normalize, name).flatten().tolist()
                              for name in ("mean", "std")}
        if type(model) is not resolve_architecture(spec.model.architecture):
            raise ValueError(
                f"{path} holds a {type(model).__name__}, the config asks for "
                f"{spec.model.architecture}"
            )
    if spec.model.last_layer_only:
        linear = [module for module in model.modules() if isinstance(module, nn.Linear)]
        if not linear:
            raise ValueError("last_layer_only needs a model that ends in a Linear layer")
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in linear[-1].parameters():
            parameter.requires_grad_(True)
    return model, arguments


def training_attack_of(spec: TrainSpec) -> dict[str, Any]:
    """The ``attack`` argument of an adversarial loss: the inner maximization of the spec (on the
    KL term for TRADES, on cross-entropy otherwise); nothing for the other losses."""
    if spec.loss.name not in LOSSES or not LOSSES[spec.loss.name].adversarial:
        return {}
    if spec.loss.attack.name != "pgd":
        raise ValueError(f"loss.attack.name: training attacks with pgd (the inner maximization "
                         f"of {spec.loss.name!r}), got {spec.loss.attack.name!r}; set name: "
                         "pgd or leave it out")
    objective = "kl" if spec.loss.name == "trades" else "ce"
    return {"attack": training_attack(objective, spec.loss.attack)}


def _same_spec(stored: dict[str, Any], spec: TrainSpec, seed: int) -> bool:
    """Whether a stored ``spec.json`` (perhaps written by an earlier release, without settings
    added since) describes the same training as ``spec``."""
    try:
        again = type(spec).model_validate(stored.get("spec"))
    except ValidationError:
        return False
    return stored.get("seed") == seed and json.loads(again.model_dump_json(
        exclude={"smoothing", "bounds"})) == json.loads(spec.model_dump_json(
            exclude={"smoothing", "bounds"}))


def select_epoch(history: list[dict[str, Any]], rule: SelectionSettings) -> int | None:
    """The validated epoch chosen by ``rule`` (``None`` when no epoch was validated); an epoch
    with a non-finite validation metric is never chosen."""
    validated = [entry for entry in history if "validation" in entry
                 and all(math.isfinite(value) for value in entry["validation"].values())]
    if not validated:
        return None
    if rule.within is not None:
        best = max(entry["validation"][rule.within] for entry in validated)
        validated = [e for e in validated if e["validation"][rule.within] >= best - rule.tolerance]
    sign = 1 if rule.goal == "max" else -1
    chosen = max(validated, key=lambda e: (sign * e["validation"][rule.metric], e["epoch"]))
    return int(chosen["epoch"])


def train_model(
    spec: TrainSpec,
    train: Data,
    validation: Data | None,
    num_classes: int,
    out: str | Path,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
    resolve: Callable[[str], Path] | None = None,
    process: Process = ALONE,
) -> Path:
    """Train (or resume training) one model into ``out``; returns the best checkpoint's path.
    ``process`` is this rank of a torchrun run (the module docstring); every rank of the run
    calls this with the same arguments."""
    out = Path(out)
    best_path = out / "best.safetensors"
    # what is trained: how the model is deployed and certified afterwards is not part of it
    spec_json = json.loads(spec.model_dump_json(exclude={"smoothing", "bounds"}))
    if (out / "spec.json").exists():
        stored = json.loads((out / "spec.json").read_text())
        if stored != {"spec": spec_json, "seed": seed} and not _same_spec(stored, spec, seed):
            raise ValueError(f"{out} holds another training run (spec.json differs); choose "
                             "another output directory")
        if best_path.exists():
            return best_path
    device = torch.device(device)
    # the model, loss and optimizer first: a bad architecture, argument or loss parameter is
    # refused before the run directory is claimed
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model, arguments = initial_model(spec, num_classes, device, resolve)
    threat = spec.loss.threat.build()
    loss = make_loss(spec.loss.name, threat, **training_attack_of(spec), **spec.loss.params)
    config = spec.train.build(seed)
    augment = None if spec.augmentation is None else make_augmentation(
        spec.augmentation, train[0].shape[1:])
    optimizer = make_optimizer(model, config)
    if process.is_main and not (out / "spec.json").exists():
        atomic_write_json(out / "spec.json", {"spec": spec_json, "seed": seed})
    history: list[dict[str, Any]] = []
    state_path = out / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = json.loads(state["history"])
    checkpoint_metadata = {**(metadata or {}), "loss": spec_json["loss"],
                           "train": spec_json["train"], "seed": seed,
                           "augmentation": spec_json["augmentation"],
                           "sigma_train": spec.loss.params.get("sigma_train")}

    def save(path: Path, epoch: int, extra: dict[str, Any] | None = None) -> None:
        save_checkpoint(path, model, spec.model.architecture, arguments,
                        {**checkpoint_metadata, "epoch": epoch, **(extra or {})})

    def on_epoch_end(epoch: int, entry: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        validated = spec.validation is not None and (
            epoch % spec.validation.every == 0 or epoch == config.epochs
        )
        if validated and validation is not None:
            entry["validation"] = validate(model, validation, spec, threat, seed, progress,
                                           process)
            if process.is_main:
                save(out / "epochs" / f"epoch-{epoch}.safetensors", epoch,
                     {"validation": entry["validation"]})
        history.append(entry)
        if process.is_main:
            atomic_write_text(out / "log.jsonl", "".join(json.dumps(e, allow_nan=False) + "\n"
                                                         for e in history))
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "history": json.dumps(history)}
            atomic_write(state_path, lambda temporary: torch.save(state, temporary))
        barrier(process)

    try:
        fit(model, loss, *train, config, progress=progress, description=out.name,
            optimizer=optimizer, start_epoch=len(history), on_epoch_end=on_epoch_end,
            augment=augment, process=process)
    except DivergedError as error:
        kept = (f"{state_path} keeps epoch {len(history)}, the last good one" if history
                else "no epoch finished")
        raise DivergedError(f"{out}: {error}; {kept}") from None
    if process.is_main:
        finish(out, spec, history, config.epochs, lambda path: save(path, config.epochs))
    barrier(process)
    return best_path


def finish(out: Path, spec: TrainSpec, history: list[dict[str, Any]], epochs: int,
           save_last: Callable[[Path], None]) -> None:
    """Write ``last.safetensors``, ``summary.json`` and, last, ``best.safetensors`` (the epoch
    the validation rule chooses, else the last)."""
    best_path = out / "best.safetensors"
    save_last(out / "last.safetensors")
    chosen = None if spec.validation is None else select_epoch(history, spec.validation.select)
    if chosen is None:
        shutil.copyfile(out / "last.safetensors", out / "best.tmp")
    else:
        shutil.copyfile(out / "epochs" / f"epoch-{chosen}.safetensors", out / "best.tmp")
    atomic_write_json(out / "summary.json", {
        "best_epoch": chosen or epochs,
        "validation": next((e.get("validation") for e in history if e["epoch"] == chosen), None),
        "epochs": epochs,
    })
    (out / "best.tmp").replace(best_path)


def validate(
    model: nn.Module, validation: Data, spec: TrainSpec, threat: ThreatModel, seed: int,
    progress: bool, process: Process = ALONE,
) -> dict[str, float]:
    """Natural and robust metrics on (up to ``limit`` samples of) the validation split: by the
    validation attack, or certified metrics of the smoothed model where ``smoothing`` is set.
    Under torchrun each rank measures its slice (``distributed.shard``) and the metrics, all
    fractions of the samples, are averaged over ranks weighted by the slices' sizes."""
    settings = spec.validation
    assert settings is not None
    x, y = validation
    if settings.limit is not None:
        x, y = x[: settings.limit], y[: settings.limit]
    if len(y) < process.world_size:
        raise ValueError(f"{len(y)} validation samples cannot be shared by "
                         f"{process.world_size} processes; give more (validation.limit, "
                         "data.validation_size)")
    part = shard(len(y), process)
    metrics = _validation_metrics(model, x[part.start:part.stop], y[part.start:part.stop],
                                  settings, threat, seed, progress)
    return mean_over_ranks(metrics, len(part), process)


def _validation_metrics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: ValidationSettings,
    threat: ThreatModel, seed: int, progress: bool,
) -> dict[str, float]:
    eps = threat.eps if settings.eps is None else settings.eps
    threat = ThreatModel(settings.norm or threat.norm, eps, threat.low, threat.high)
    if settings.smoothing is not None:
        smoothing = settings.smoothing
        smooth = Smooth.from_settings(model, smoothing)
        certificates = certify_smoothed(smooth, x, y, smoothing.n0, smoothing.n, smoothing.alpha,
                                        smoothing.seed, progress=progress, description="validate")
        records = certificates.records(threat, [eps], x[0].numel())
        return certified_metrics(records, eps)
    records = evaluate_model(model, x, y, threat, [eps], build_attack(settings.attack, seed),
                             progress=progress, description="validate")
    return robustness_metrics(records.accurate, records.robust_at(eps))


def training_data(
    settings: DataSettings, seed: int
) -> tuple[Data, Data | None, int, dict[str, Any]]:
    """The training split (cut to ``limit_train``), the validation split (``None`` without a
    ``validation_size``), the number of classes, and the data's checkpoint metadata."""
    arguments = settings.model_dump(exclude={"limit_train"})
    train = load_dataset(split="train", seed=seed, **arguments)
    validation = None
    if settings.validation_size:
        held_out = load_dataset(split="validation", seed=seed, **arguments)
        validation = (held_out.x, held_out.y)
    limit = settings.limit_train
    metadata = {"dataset": settings.name, "num_classes": train.num_classes,
                "input_shape": list(train.input_shape)}
    return (train.x[:limit], train.y[:limit]), validation, train.num_classes, metadata
