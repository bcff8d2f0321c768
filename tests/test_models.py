"""Architectures, the Normalize layer and checkpoints (safetensors and plain state dicts)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from robustgate.models import (
    ARCHITECTURES,
    Normalize,
    build_model,
    load_checkpoint,
    load_state_dict_file,
    predict_logits,
    save_checkpoint,
)

# Small instances of every architecture, as (name, constructor arguments).
SMALL = {
    "MLP": {"in_features": 2, "num_classes": 3, "hidden": [8, 8]},
    "SmallCNN": {"channels": [4, 8], "hidden": 16},
    "StridedCNN": {"channels": [4, 8], "hidden": 16},
    "ResNet20": {"depth": 20, "width": 4},
    "ResNet18": {"depth": 18, "width": 4, "num_classes": 7},
    "WideResNet": {"depth": 28, "widen_factor": 1, "num_classes": 5},
}


def _architecture(key: str) -> str:
    return "ResNet" if key.startswith("ResNet") else key


def _small(key: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(_architecture(key), SMALL[key])
    # Non-trivial batch-norm statistics, so that the round trip covers the buffers too.
    with torch.no_grad():
        model.train()(torch.rand(4, *model.input_shape))
    return model.eval()


def test_registry_names():
    assert set(ARCHITECTURES) == {"MLP", "SmallCNN", "StridedCNN", "ResNet", "WideResNet",
                                  "PreActResNet"}


@pytest.mark.parametrize(
    ("key", "input_shape", "num_classes"),
    [("MLP", (2,), 3), ("SmallCNN", (1, 28, 28), 10), ("StridedCNN", (1, 28, 28), 10),
     ("ResNet20", (3, 32, 32), 10),
     ("ResNet18", (3, 32, 32), 7), ("WideResNet", (3, 32, 32), 5)],
)
def test_output_shapes_and_declared_attributes(key, input_shape, num_classes):
    model = _small(key)
    assert model.input_shape == input_shape and model.num_classes == num_classes
    assert model(torch.rand(3, *input_shape)).shape == (3, num_classes)


def test_depths_and_widths_follow_the_papers():
    def count(model, kind):
        return sum(isinstance(module, kind) for module in model.modules())

    # weight layers: convolutions (not the 1x1 shortcuts) plus the final linear layer
    for depth, width in ((20, 16), (32, 16), (18, 64)):
        model = build_model("ResNet", {"depth": depth, "width": width // 4})
        shortcuts = sum(1 for name, _ in model.named_modules() if name.endswith("shortcut.0"))
        assert count(model, torch.nn.Conv2d) - shortcuts + 1 == depth
    # a WRN's depth counts its convolutions, the three projection shortcuts included
    wide = build_model("WideResNet", {"depth": 28, "widen_factor": 2})
    assert count(wide, torch.nn.Conv2d) == 28
    assert wide.head[-1].in_features == 64 * 2
    assert build_model("ResNet", {"depth": 18, "width": 2}).head[-1].in_features == 16


@pytest.mark.parametrize(
    ("architecture", "arguments", "match"),
    [("ResNet", {"depth": 21}, "depth=21"), ("WideResNet", {"depth": 27}, "depth=27"),
     ("SmallCNN", {"input_size": 12}, "input_size=12"),
     ("SmallCNN", {"in_channels": 3, "mean": [0.1, 0.2], "std": [0.3, 0.3]}, "3 channels"),
     ("ResNet", {"colour": 1}, "colour")],
)
def test_bad_arguments_are_named(architecture, arguments, match):
    with pytest.raises(ValueError, match=match):
        build_model(architecture, arguments)


def test_normalize_math():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    x = torch.rand(4, 3, 5, 6)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    layer = Normalize(mean, std)
    assert layer.mean.shape == (1, 3, 1, 1)
    assert torch.allclose(layer(x), expected)
    features = torch.rand(4, 3)
    assert torch.allclose(layer(features), (features - torch.tensor(mean)) / torch.tensor(std))
    assert torch.allclose(Normalize(0.5, 0.25)(x), (x - 0.5) / 0.25)
    assert Normalize([0.5], [0.25], channels=3).mean.flatten().tolist() == [0.5] * 3
    with pytest.raises(ValueError, match="positive"):
        Normalize((0.1,), (0.0,))
    with pytest.raises(ValueError, match="equal length"):
        Normalize((0.1, 0.2), (0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="shape"):
        layer(torch.rand(4, 1, 5, 6))


@pytest.mark.parametrize("key", list(SMALL))
def test_checkpoint_round_trip(tmp_path, key):
    model = _small(key)
    metadata = {"dataset": "cifar10", "classes": ["a", "b"], "metrics": {"accuracy": 0.5}}
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, _architecture(key), SMALL[key], metadata)
    loaded, loaded_metadata = load_checkpoint(path)
    x = torch.rand(3, *model.input_shape)
    assert torch.equal(predict_logits(model, x), predict_logits(loaded, x))
    assert loaded_metadata == metadata and not loaded.training
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_plain_state_dicts_load_with_the_architecture_named(tmp_path):
    model = _small("SmallCNN")
    x = torch.rand(3, 1, 28, 28)
    expected = predict_logits(model, x)
    weights = model.state_dict()
    files = {
        "plain.pt": weights,
        "wrapped.pth": {"state_dict": weights, "epoch": 3},
        "model_key.pt": {"model": weights},
        "parallel.pt": {f"module.{name}": value for name, value in weights.items()},
    }
    for name, content in files.items():
        torch.save(content, tmp_path / name)
    save_file(dict(weights), tmp_path / "bare.safetensors")
    for name in [*files, "bare.safetensors"]:
        loaded = load_state_dict_file(tmp_path / name, "SmallCNN", SMALL["SmallCNN"])
        assert torch.equal(predict_logits(loaded, x), expected), name


def test_weights_of_another_architecture_are_refused(tmp_path):
    cnn = _small("SmallCNN")
    torch.save(cnn.state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(ValueError, match=r"cnn\.pt: weights do not fit ResNet\(.*missing: "):
        load_state_dict_file(tmp_path / "cnn.pt", "ResNet", SMALL["ResNet20"])
    save_checkpoint(tmp_path / "lie.safetensors", cnn, "WideResNet", SMALL["WideResNet"])
    with pytest.raises(ValueError, match="do not fit WideResNet.*unexpected: layers"):
        load_checkpoint(tmp_path / "lie.safetensors")
    wrong = r"wrong shapes: layers\.12\.weight \(16, 128\) instead of \(32, 128\)"
    with pytest.raises(ValueError, match=wrong):
        load_state_dict_file(tmp_path / "cnn.pt", "SmallCNN", {"channels": [4, 8], "hidden": 32})


def test_corrupt_files_and_unknown_architectures_are_refused(tmp_path):
    model = _small("MLP")
    path = tmp_path / "mlp.safetensors"
    save_checkpoint(path, model, "MLP", SMALL["MLP"])
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="cut.safetensors is not a readable robustgate"):
        load_checkpoint(tmp_path / "cut.safetensors")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "plain.pt").read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.pt is not a readable PyTorch state dict"):
        load_state_dict_file(tmp_path / "cut.pt", "MLP", SMALL["MLP"])
    with pytest.raises(ValueError, match="not a readable robustgate"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save(model, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="pickled.pt is not a readable PyTorch state dict"):
        load_state_dict_file(tmp_path / "pickled.pt", "MLP", SMALL["MLP"])
    save_file(dict(model.state_dict()), tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="no robustgate header"):
        load_checkpoint(tmp_path / "bare.safetensors")
    header = {"format_version": 1, "architecture": "VGG", "arguments": {}, "metadata": {}}
    save_file(dict(model.state_dict()), tmp_path / "vgg.safetensors",
              metadata={"robustgate": json.dumps(header)})
    with pytest.raises(ValueError, match="vgg.safetensors: unknown architecture 'VGG'"):
        load_checkpoint(tmp_path / "vgg.safetensors")
    with pytest.raises(ValueError, match="unknown architecture 'VGG'"):
        load_state_dict_file(tmp_path / "plain.pt", "VGG", {})
    with pytest.raises(ValueError, match="unknown architecture 'VGG'"):
        save_checkpoint(tmp_path / "new.safetensors", model, "VGG", {})
    with pytest.raises(ValueError, match="JSON-serializable"):
        save_checkpoint(tmp_path / "new.safetensors", model, "MLP", SMALL["MLP"],
                        {"tensor": torch.zeros(1)})
    assert not (tmp_path / "new.safetensors").exists()
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_checkpoint(tmp_path / "missing.safetensors")
