import pytest
import torch

from robustgate.data import SYNTHETIC_DATASETS, make_synthetic
from robustgate.losses import make_loss
from robustgate.models import MLP, load_checkpoint, predict_logits, save_checkpoint
from robustgate.train import TrainConfig, fit, learning_rate


def test_threegauss_has_the_reference_counts():
    x, y, num_classes = make_synthetic("threegauss", 1000, seed=0)
    assert num_classes == 3
    assert [int((y == label).sum()) for label in range(3)] == [485, 499, 16]
    small = x[y == 2]
    assert torch.allclose(small.mean(0), torch.tensor([0.55, 0.80]), atol=0.02)
    assert torch.allclose(small.std(0), torch.tensor([0.0167, 0.025]), atol=0.01)


@pytest.mark.parametrize("name", sorted(SYNTHETIC_DATASETS))
def test_synthetic_sets_are_seeded_typed_and_in_the_domain(name):
    x, y, num_classes = make_synthetic(name, 300, seed=3)
    again, _, _ = make_synthetic(name, 300, seed=3)
    test, _, _ = make_synthetic(name, 300, seed=3, split="test")
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (300, 2)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x, again) and not torch.equal(x, test)
    assert set(y.tolist()) == set(range(num_classes))


def test_unknown_data_set_and_bad_split_are_errors():
    with pytest.raises(ValueError, match="unknown synthetic data set 'moons'"):
        make_synthetic("moons")
    with pytest.raises(ValueError, match="split"):
        make_synthetic("twogauss", split="validation")


def test_learning_rate_drops_from_three_quarters_of_the_epochs():
    config = TrainConfig(epochs=20, lr=0.03)
    assert [learning_rate(config, e) for e in (0, 14, 15, 19)] == pytest.approx(
        [0.03, 0.03, 0.003, 0.003])


@pytest.mark.parametrize("arguments", [{"epochs": 0}, {"lr": -1.0}, {"momentum": 1.0},
                                       {"lr_drop_factor": 0.0}, {"optimizer": "lbfgs"}])
def test_invalid_training_settings_are_errors(arguments):
    with pytest.raises(ValueError, match=next(iter(arguments))):
        TrainConfig(**arguments)


def trained(seed: int, optimizer: str = "sgd") -> MLP:
    x, y, _ = make_synthetic("twogauss", 200, seed=0)
    torch.manual_seed(0)
    model = MLP(2, 2, (16, 16))
    lr = 0.01 if optimizer == "adam" else 0.03
    fit(model, make_loss("standard"), x, y,
        TrainConfig(optimizer=optimizer, epochs=3, batch_size=20, lr=lr, seed=seed),
        progress=False)
    return model


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_learns_and_is_reproducible(optimizer):
    x, y, _ = make_synthetic("twogauss", 200, seed=0, split="test")
    model = trained(seed=1, optimizer=optimizer)
    assert float((predict_logits(model, x).argmax(1) == y).float().mean()) > 0.95
    same, other = trained(seed=1, optimizer=optimizer), trained(seed=2, optimizer=optimizer)
    assert torch.equal(model.layers[0].weight, same.layers[0].weight)
    assert not torch.equal(model.layers[0].weight, other.layers[0].weight)


def test_training_rejects_labels_beyond_the_classes():
    x, _, _ = make_synthetic("twogauss", 20)
    with pytest.raises(ValueError, match="labels"):
        fit(MLP(2, 2), make_loss("standard"), x, torch.full((20,), 5), TrainConfig(),
            progress=False)


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = MLP(2, 3, (8,))
    save_checkpoint(tmp_path / "m.pt", model, "MLP", {"in_features": 2, "num_classes": 3,
                                                      "hidden": [8]}, {"loss": "standard"})
    loaded, metadata = load_checkpoint(tmp_path / "m.pt")
    x = torch.rand(5, 2)
    assert torch.equal(predict_logits(model, x), predict_logits(loaded, x))
    assert metadata == {"loss": "standard"}
    save_checkpoint(tmp_path / "wrong.pt", model, "MLP", {"in_features": 2, "num_classes": 3,
                                                          "hidden": [16]})
    with pytest.raises(ValueError, match="do not fit"):
        load_checkpoint(tmp_path / "wrong.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "cut.pt")
