"""State dicts of the public model zoos, their keys mapped onto robustgate's architectures; the
loader (``checkpoint.load_state_dict_file(..., key_format="robustbench")``) then matches every
key and checks every shape, and refuses a state dict that does not fit, naming the keys.

RobustBench (``robustbench/model_zoo/architectures/wide_resnet.py``), WideResNet-28-10 and the
other depths and widths, onto :class:`~robustgate.models.WideResNet`::

    conv1.weight                               stem.weight
    block{b}.layer.{i}.{bn1,conv1,bn2,conv2}.*  stages.{b-1}.{i}.{bn1,conv1,bn2,conv2}.*
    block{b}.layer.{i}.convShortcut.weight     stages.{b-1}.{i}.shortcut.weight
    bn1.*                                      head.0.*
    fc.weight, fc.bias                         head.4.weight, head.4.bias
    sub_block1.*                               dropped (built by some models, never used)

RobustBench's PreAct-ResNet-18 (``architectures/resnet.py``, ``PreActResNet``) onto
:class:`~robustgate.models.PreActResNet`::

    conv1.weight                               stem.weight
    layer{l}.{i}.{bn1,conv1,bn2,conv2}.*       stages.{l-1}.{i}.{bn1,conv1,bn2,conv2}.*
    layer{l}.{i}.shortcut.0.weight             stages.{l-1}.{i}.shortcut.weight
    bn.*                                       head.0.*  (``final_norm=True``: bn_before_fc)
    linear.weight, linear.bias                 head.4.*, or head.2.* without ``bn``

Its ``PreActBlock`` takes the shortcut of the block's input (``preactivated_shortcut=False``:
Wong2020Fast, Andriushchenko2020Understanding, no final BN, ``final_norm=False``), its
``PreActBlockV2`` of the pre-activated input (the default; Rice2020OverfittingNetL2,
Kireev2021Effectiveness, with the final BN). The keys are the same: name the block in the
arguments.

Normalization as the checkpoint's model expects: a model that normalizes holds ``mu`` and
``sigma`` buffers, which become ``normalize.mean`` and ``normalize.std``; a model without them
takes its inputs as they are, ``Normalize(0, 1)`` (RobustBench's standard WideResNet-28-10).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

KEY_FORMATS = ("robustgate", "robustbench")
"""The key formats ``checkpoint.load_state_dict_file`` reads: its own, and RobustBench's."""

_WIDERESNET = [
    (r"^conv1\.", "stem."),
    (r"^block(\d)\.layer\.(\d+)\.convShortcut\.",
     lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.shortcut."),
    (r"^block(\d)\.layer\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}."),
    (r"^bn1\.", "head.0."),
    (r"^fc\.", "head.4."),
]
_PREACT_RESNET = [
    (r"^conv1\.", "stem."),
    (r"^layer(\d)\.(\d+)\.shortcut\.0\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.shortcut."),
    (r"^layer(\d)\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}."),
    (r"^bn\.", "head.0."),
]
_NORMALIZATION = [(r"^mu$", "normalize.mean"), (r"^sigma$", "normalize.std")]


def robustbench_state_dict(architecture: str, state_dict: Mapping[str, Any]
                           ) -> tuple[dict[str, Any], dict[str, str]]:
    """``state_dict`` (RobustBench's keys) with robustgate's keys for ``architecture``
    (``WideResNet`` or ``PreActResNet``; module docstring), the normalization included, and the
    file's key of every renamed one (for messages). A key the mapping does not know is kept as
    it is, for the loader to name."""
    if architecture == "WideResNet":
        rules = _WIDERESNET
        state_dict = {key: value for key, value in state_dict.items()
                      if not key.startswith("sub_block1.")}
    elif architecture == "PreActResNet":
        head = "head.4." if "bn.weight" in state_dict else "head.2."
        rules = [*_PREACT_RESNET, (r"^linear\.", head)]
    else:
        raise ValueError(f"RobustBench keys map onto WideResNet and PreActResNet, not "
                         f"{architecture}")
    names = {key: _renamed(key, [*rules, *_NORMALIZATION]) for key in state_dict}
    renamed = {names[key]: value for key, value in state_dict.items()}
    stem = renamed.get("stem.weight")
    if "normalize.mean" not in renamed and isinstance(stem, torch.Tensor):
        channels = stem.shape[1]
        renamed["normalize.mean"] = torch.zeros(1, channels, 1, 1)
        renamed["normalize.std"] = torch.ones(1, channels, 1, 1)
    return renamed, {new: old for old, new in names.items() if new != old}


def _renamed(key: str, rules: list[tuple[str, Any]]) -> str:
    for pattern, replacement in rules:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    return key
