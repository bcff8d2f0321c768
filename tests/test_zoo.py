"""Checkpoints of the public model zoos: RobustBench-format WideResNet and PreAct-ResNet-18 state
dicts (key names and shapes built here, as RobustBench's architectures name them) load into
robustgate's architectures with every key matched and every shape checked; one that does not fit
is refused naming the keys; the loaded model computes what the checkpoint's forward does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustgate.models import PreActResNet, load_state_dict_file


def _batch_norm(prefix: str, channels: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + 0.1 * torch.randn(channels),
            f"{prefix}.bias": 0.1 * torch.randn(channels),
            f"{prefix}.running_mean": 0.1 * torch.randn(channels),
            f"{prefix}.running_var": 1 + 0.1 * torch.rand(channels),
            f"{prefix}.num_batches_tracked": torch.tensor(7)}


def _conv(out: int, inputs: int, size: int) -> torch.Tensor:
    return torch.randn(out, inputs, size, size) * (2 / (inputs * size * size)) ** 0.5


def robustbench_wideresnet(depth: int, widen: int, classes: int = 10, sub_block1: bool = False,
                           normalized: bool = False) -> dict[str, torch.Tensor]:
    """A state dict with RobustBench's WideResNet keys and shapes (random values)."""
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    state = {"conv1.weight": _conv(16, 3, 3)}
    blocks = ["block1", "block2", "block3"] + (["sub_block1"] if sub_block1 else [])
    for name in blocks:
        stage = 0 if name == "sub_block1" else int(name[-1]) - 1
        for index in range((depth - 4) // 6):
            prefix = f"{name}.layer.{index}"
            inputs = widths[stage] if index == 0 else widths[stage + 1]
            out = widths[stage + 1]
            state |= _batch_norm(f"{prefix}.bn1", inputs) | _batch_norm(f"{prefix}.bn2", out)
            state[f"{prefix}.conv1.weight"] = _conv(out, inputs, 3)
            state[f"{prefix}.conv2.weight"] = _conv(out, out, 3)
            if inputs != out:
                state[f"{prefix}.convShortcut.weight"] = _conv(out, inputs, 1)
    state |= _batch_norm("bn1", widths[3])
    state["fc.weight"], state["fc.bias"] = torch.randn(classes, widths[3]) * 0.1, torch.zeros(
        classes)
    if normalized:
        state["mu"] = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
        state["sigma"] = torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1)
    return state


def robustbench_preact_resnet18(bn_before_fc: bool, classes: int = 10
                                ) -> dict[str, torch.Tensor]:
    """A state dict with RobustBench's PreActResNet(PreActBlock, [2, 2, 2, 2]) keys and shapes,
    normalized as Wong2020Fast (``mu``, ``sigma``)."""
    widths = [64, 64, 128, 256, 512]
    state = {"conv1.weight": _conv(64, 3, 3)}
    for layer in range(1, 5):
        for index in range(2):
            prefix = f"layer{layer}.{index}"
            inputs = widths[layer - 1] if index == 0 else widths[layer]
            out = widths[layer]
            state |= _batch_norm(f"{prefix}.bn1", inputs) | _batch_norm(f"{prefix}.bn2", out)
            state[f"{prefix}.conv1.weight"] = _conv(out, inputs, 3)
            state[f"{prefix}.conv2.weight"] = _conv(out, out, 3)
            if layer > 1 and index == 0:
                state[f"{prefix}.shortcut.0.weight"] = _conv(out, inputs, 1)
    if bn_before_fc:
        state |= _batch_norm("bn", 512)
    state["linear.weight"], state["linear.bias"] = torch.randn(classes, 512) * 0.1, torch.zeros(
        classes)
    state["mu"] = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    state["sigma"] = torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1)
    return state


def _bn(state: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-5)


def wideresnet_forward(state: dict[str, torch.Tensor], x: torch.Tensor, depth: int
                       ) -> torch.Tensor:
    """The forward of a RobustBench WideResNet state dict, written out here: pre-activated
    blocks whose 1x1 shortcut (where the shape changes) reads the pre-activated input, then BN,
    ReLU, 8x8 average pooling and the linear layer."""
    if "mu" in state:
        x = (x - state["mu"]) / state["sigma"]
    out = F.conv2d(x, state["conv1.weight"], padding=1)
    for block in (1, 2, 3):
        for index in range((depth - 4) // 6):
            prefix = f"block{block}.layer.{index}"
            stride = 2 if block > 1 and index == 0 else 1
            activated = F.relu(_bn(state, f"{prefix}.bn1", out))
            shortcut = out
            if f"{prefix}.convShortcut.weight" in state:
                shortcut = F.conv2d(activated, state[f"{prefix}.convShortcut.weight"],
                                    stride=stride)
            inner = F.conv2d(activated, state[f"{prefix}.conv1.weight"], stride=stride,
                             padding=1)
            inner = F.relu(_bn(state, f"{prefix}.bn2", inner))
            out = F.conv2d(inner, state[f"{prefix}.conv2.weight"], padding=1) + shortcut
    out = F.avg_pool2d(F.relu(_bn(state, "bn1", out)), 8).flatten(1)
    return F.linear(out, state["fc.weight"], state["fc.bias"])


def test_a_robustbench_wideresnet_28_10_state_dict_loads_with_every_key_and_shape(tmp_path):
    torch.manual_seed(0)
    state = robustbench_wideresnet(28, 10, sub_block1=True)
    path = tmp_path / "Carmon2019Unlabeled.pt"
    torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}}, path)
    model = load_state_dict_file(path, "WideResNet", {"depth": 28, "widen_factor": 10}, "cpu",
                                 key_format="robustbench")
    loaded = model.state_dict()
    assert len(loaded) == len([key for key in state if not key.startswith("sub_block1.")]) + 2
    assert torch.equal(loaded["stages.2.0.shortcut.weight"],
                       state["block3.layer.0.convShortcut.weight"])
    assert torch.equal(loaded["head.4.weight"], state["fc.weight"])
    # no mu/sigma in the checkpoint: its model takes the inputs as they are
    assert torch.equal(loaded["normalize.mean"], torch.zeros(1, 3, 1, 1))
    assert torch.equal(loaded["normalize.std"], torch.ones(1, 3, 1, 1))


@pytest.mark.parametrize("normalized", [False, True])
def test_a_loaded_robustbench_wideresnet_computes_the_checkpoints_forward(tmp_path, normalized):
    torch.manual_seed(1)
    state = robustbench_wideresnet(10, 2, normalized=normalized)
    path = tmp_path / "wrn.pt"
    torch.save(state, path)
    model = load_state_dict_file(path, "WideResNet", {"depth": 10, "widen_factor": 2}, "cpu",
                                 key_format="robustbench")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), wideresnet_forward(state, x, 10), atol=1e-4)


@pytest.mark.parametrize("bn_before_fc", [False, True])
def test_a_robustbench_preact_resnet18_state_dict_loads_with_its_normalization(tmp_path,
                                                                               bn_before_fc):
    torch.manual_seed(2)
    state = robustbench_preact_resnet18(bn_before_fc)
    path = tmp_path / "preact.pt"
    torch.save(state, path)
    arguments = {"final_norm": bn_before_fc, "preactivated_shortcut": bn_before_fc}
    model = load_state_dict_file(path, "PreActResNet", arguments, "cpu",
                                 key_format="robustbench")
    assert isinstance(model, PreActResNet)
    loaded = model.state_dict()
    assert len(loaded) == len(state)
    assert torch.equal(loaded["normalize.std"], state["sigma"])
    assert torch.equal(loaded["stages.3.0.shortcut.weight"], state["layer4.0.shortcut.0.weight"])
    assert torch.equal(loaded["head.4.weight" if bn_before_fc else "head.2.weight"],
                       state["linear.weight"])


def test_a_state_dict_that_does_not_fit_is_refused_naming_the_keys(tmp_path):
    torch.manual_seed(3)
    state = robustbench_wideresnet(10, 2)
    state["fc.weight"] = torch.zeros(10, 64)  # the wrong width
    del state["block2.layer.0.bn2.running_var"]
    state["block4.layer.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as refused:
        load_state_dict_file(path, "WideResNet", {"depth": 10, "widen_factor": 2}, "cpu",
                             key_format="robustbench")
    message = str(refused.value)
    assert "missing: stages.1.0.bn2.running_var" in message
    assert "unexpected: stages.3.0.conv1.weight (the file's block4.layer.0.conv1.weight)" in message
    assert "head.4.weight (the file's fc.weight) (10, 64) instead of (10, 128)" in message
    with pytest.raises(ValueError, match="onto WideResNet and PreActResNet"):
        load_state_dict_file(path, "ResNet", {}, "cpu", key_format="robustbench")
    with pytest.raises(ValueError, match="key_format"):
        load_state_dict_file(path, "WideResNet", {}, "cpu", key_format="timm")
