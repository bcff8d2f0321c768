"""Checkpoints: the weights in a safetensors file whose header says how to rebuild the model.

The header's metadata holds one entry, ``"robustgate"``: a JSON object with the
``format_version``, the ``architecture``, its constructor ``arguments`` and the caller's
free-form ``metadata`` (data set, classes, normalization, training recipe, metrics, ...). Plain
PyTorch state dicts saved elsewhere load with ``load_state_dict_file`` once the architecture is
named.

An architecture is a name in ``ARCHITECTURES`` or an import path ``"package.module:Name"`` of an
``nn.Module`` subclass in the user's own code (:func:`resolve_architecture`). Importing runs that
code: a config or a caller naming the path has chosen to; a checkpoint naming one is loaded only
with ``trust_code=True`` (``--trust-code`` on the command line), as ``trust_remote_code`` is
elsewhere.
"""

from __future__ import annotations

import importlib
import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from robustgate.device import resolve_device
from robustgate.io import atomic_write
from robustgate.models.cnn import SmallCNN, StridedCNN
from robustgate.models.mlp import MLP
from robustgate.models.preact_resnet import PreActResNet
from robustgate.models.resnet import ResNet
from robustgate.models.wideresnet import WideResNet
from robustgate.models.zoo import KEY_FORMATS, robustbench_state_dict

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "MLP": MLP,
    "SmallCNN": SmallCNN,
    "StridedCNN": StridedCNN,
    "ResNet": ResNet,
    "WideResNet": WideResNet,
    "PreActResNet": PreActResNet,
}
HEADER_KEY = "robustgate"
FORMAT_VERSION = 1
DATA_PARALLEL_PREFIX = "module."


def is_import_path(architecture: str) -> bool:
    """Whether ``architecture`` names a class in the user's code (``"package.module:Name"``)."""
    return ":" in architecture


def resolve_architecture(architecture: str) -> type[nn.Module]:
    """The class an architecture names: ``ARCHITECTURES[architecture]``, or the ``nn.Module``
    subclass ``Name`` imported from ``package.module`` for ``"package.module:Name"`` (which runs
    the module's code). Raises a ``ValueError`` saying what failed."""
    if not is_import_path(architecture):
        _check_architecture(architecture)
        return ARCHITECTURES[architecture]
    module_name, _, name = architecture.partition(":")
    if not module_name or not name or ":" in name:
        raise ValueError(f"architecture {architecture!r}: an import path is "
                         f"'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any error of the user's module is reported
        raise ValueError(f"architecture {architecture!r}: importing {module_name!r} failed: "
                         f"{type(error).__name__}: {error}") from None
    found = getattr(module, name, None)
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ValueError(f"architecture {architecture!r}: {module_name!r} has no nn.Module "
                         f"subclass named {name!r}")
    return found


def build_model(architecture: str, arguments: Mapping[str, Any]) -> nn.Module:
    """A freshly initialized ``architecture(**arguments)`` (:func:`resolve_architecture`)."""
    cls = resolve_architecture(architecture)
    try:
        return cls(**arguments)
    except TypeError as error:
        raise ValueError(f"bad arguments for {architecture}: {error}") from None


def save_checkpoint(
    path: str | Path, model: nn.Module, architecture: str, arguments: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model``'s weights to the safetensors file ``path`` (atomically), with the
    architecture, its constructor arguments and ``metadata`` (all JSON-serializable) in the
    header."""
    resolve_architecture(architecture)
    header = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "arguments": dict(arguments),
        "metadata": dict(metadata or {}),
    }
    try:
        text = json.dumps(header)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"checkpoint arguments and metadata must be JSON-serializable: {error}"
        ) from None
    tensors = {
        name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()
    }
    atomic_write(
        path, lambda temporary: save_file(tensors, str(temporary), metadata={HEADER_KEY: text})
    )


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu", trust_code: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint written by ``save_checkpoint``; returns it on
    ``device`` in eval mode, and the free-form metadata it was saved with. A device that is not
    available here (``"cuda"`` without CUDA) is refused before the file is read. A checkpoint
    whose architecture is an import path is refused unless ``trust_code`` (importing runs the
    code it names)."""
    path = Path(path)
    device = resolve_device(device)
    tensors, text = _read_safetensors(path, "robustgate checkpoint")
    if text is None:
        raise ValueError(
            f"{path} has no robustgate header (weights only?); load it with "
            f"load_state_dict_file(path, architecture, arguments)"
        )
    try:
        header = json.loads(text)
        version = header["format_version"]
        architecture, arguments = header["architecture"], header["arguments"]
        metadata = header["metadata"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} has a malformed robustgate header: {error!r}") from None
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {version!r}; this robustgate reads "
            f"version {FORMAT_VERSION}"
        )
    if isinstance(architecture, str) and is_import_path(architecture) and not trust_code:
        raise ValueError(
            f"{path} names the architecture {architecture!r} from outside robustgate; loading "
            f"it imports and runs that code: pass trust_code=True (--trust-code) if you trust it"
        )
    return _rebuild(path, architecture, arguments, tensors, device), metadata


def load_state_dict_file(
    path: str | Path, architecture: str, arguments: Mapping[str, Any],
    device: torch.device | str = "cpu", key_format: str = "robustgate",
) -> nn.Module:
    """Build ``architecture(**arguments)`` and load weights saved elsewhere into it; returns it
    on ``device`` (refused where it is not available here) in eval mode.

    ``path`` is a ``.safetensors`` file (any header is ignored), or a ``torch.save`` file of a
    state dict or of a dict holding one under ``"state_dict"`` or ``"model"``. A leading
    ``"module."`` (from ``DataParallel``) is stripped from the weight names. ``key_format``
    ``"robustbench"`` maps RobustBench's key names first (``models.zoo``).
    """
    if key_format not in KEY_FORMATS:
        raise ValueError(f"key_format must be one of {KEY_FORMATS}, got {key_format!r}")
    path = Path(path)
    device = resolve_device(device)
    if path.suffix == ".safetensors":
        state_dict, _ = _read_safetensors(path, "safetensors weights file")
    else:
        state_dict = _read_torch_state_dict(path)
    file_names: dict[str, str] = {}
    if key_format == "robustbench":
        state_dict, file_names = robustbench_state_dict(architecture, {
            name.removeprefix(DATA_PARALLEL_PREFIX): value for name, value in state_dict.items()})
    return _rebuild(path, architecture, arguments, state_dict, device, file_names)


def _check_architecture(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose from {sorted(ARCHITECTURES)}"
        )


def _read_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors of a safetensors file and its robustgate header text (``None`` if absent)."""
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            text = (handle.metadata() or {}).get(HEADER_KEY)
            names = handle.keys()  # a safe_open handle is not iterable
            tensors = {name: handle.get_tensor(name) for name in names}
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable {what} (safetensors): {error}") from None
    return tensors, text


def _read_torch_state_dict(path: Path) -> dict[str, Any]:
    """The state dict in a ``torch.save`` file: the saved dict itself, or the dict under its
    ``"state_dict"`` or ``"model"`` key."""
    if not path.is_file():
        raise FileNotFoundError(f"no state dict file at {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ValueError(
            f"{path} is not a readable PyTorch state dict (torch.load, weights_only=True): "
            f"{error or type(error).__name__}"
        ) from None
    if isinstance(loaded, dict):
        nested = [
            loaded[key] for key in ("state_dict", "model") if isinstance(loaded.get(key), dict)
        ]
        loaded = nested[0] if nested else loaded
    if not isinstance(loaded, dict):
        raise ValueError(
            f"{path} holds a {type(loaded).__name__}, not a state dict (save "
            f"model.state_dict(), not the model)"
        )
    return loaded


def _rebuild(
    path: Path, architecture: str, arguments: Mapping[str, Any], state_dict: Mapping[str, Any],
    device: torch.device | str, file_names: Mapping[str, str] | None = None,
) -> nn.Module:
    """``architecture(**arguments)`` with the weights of ``state_dict`` (read from ``path``),
    on ``device``, in eval mode; a ``ValueError`` naming ``path`` if they do not fit, and the
    keys that do not (with their names in the file, ``file_names``, where they were mapped)."""
    file_names = file_names or {}

    def named(name: str) -> str:
        return f"{name} (the file's {file_names[name]})" if name in file_names else name
    try:
        model = build_model(architecture, arguments)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    weights = {name.removeprefix(DATA_PARALLEL_PREFIX): value for name, value in state_dict.items()}
    expected = model.state_dict()
    # BatchNorm fills in a missing batch counter itself (state dicts of old PyTorch lack it).
    missing = [
        name for name in expected
        if name not in weights and not name.endswith("num_batches_tracked")
    ]
    unexpected = [named(name) for name in weights if name not in expected]
    not_tensors = [named(name) for name in weights if not isinstance(weights[name], torch.Tensor)]
    wrong_shape = [
        f"{named(name)} {tuple(weights[name].shape)} instead of {tuple(value.shape)}"
        for name, value in expected.items()
        if isinstance(weights.get(name), torch.Tensor) and weights[name].shape != value.shape
    ]
    problems = [
        f"{label}: {_some(names)}"
        for label, names in (("missing", missing), ("unexpected", unexpected),
                             ("not tensors", not_tensors), ("wrong shapes", wrong_shape))
        if names
    ]
    if problems:
        described = ", ".join(f"{key}={value!r}" for key, value in arguments.items())
        raise ValueError(
            f"{path}: weights do not fit {architecture}({described}): {'; '.join(problems)}"
        )
    model.load_state_dict(weights)
    return model.to(device).eval()


def _some(names: list[str], shown: int = 4) -> str:
    """The first ``shown`` of ``names``, and how many more there are."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
