"""The one per-sample table: its strict reader, the refusal to compose tables of other inputs, the
resumable runner, and per-input seeding (a row does not depend on its batch, chunk or order)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustgate.attacks import PGD, check_robustness
from robustgate.certify import Smooth
from robustgate.evaluate import (
    BoundCertificates,
    Certificates,
    Records,
    Selection,
    certify_smoothed,
    certify_with_bounds,
    compose_records,
    evaluate_model,
)
from robustgate.models import MLP
from robustgate.runner import run_per_sample, shard_indices
from robustgate.threat import ThreatModel
from tests.conftest import interrupt_at_call

THREAT = ThreatModel("linf", 0.1)


def problem(n: int = 30) -> tuple[MLP, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = MLP(2, 3, (16,)).eval()
    x = torch.rand(n, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[::4] = (y[::4] + 1) % 3
    return model, x, y


def random_pgd() -> PGD:
    return PGD(steps=5, restarts=3, relative_step=0.3, early_exit=True, seed=7)


def test_records_tables_write_the_columns_robustgate_always_wrote(tmp_path):
    Records([0, 1], [0, 0], {0.1: [True, False], 0.05: [True, True]}).to_csv(tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines() == [
        "index,label,prediction,accurate,robust@0.05,robust@0.1", "0,0,0,1,1,1", "1,1,0,0,1,0"]
    Certificates([1], [-1], [0.0], [0.25], [0.012345]).to_csv(tmp_path / "c.csv")
    assert (tmp_path / "c.csv").read_text().splitlines() == [
        "index,label,prediction,radius,p_lower,seconds", "0,1,-1,0,0.25,0.01235"]
    BoundCertificates([2], [2], {0.1: [0.5], 0.2: [-1.0]}, [0.5]).to_csv(tmp_path / "b.csv")
    assert (tmp_path / "b.csv").read_text().splitlines() == [
        "index,label,prediction,certified@0.1,certified@0.2,margin@0.1,margin@0.2,seconds",
        "0,2,2,1,0,0.5,-1,0.5"]
    assert BoundCertificates.read_csv(tmp_path / "b.csv").margins[0.2].tolist() == [-1.0]


HEADER = "index,label,prediction,accurate,robust@0.1"


@pytest.mark.parametrize("text, message", [
    (f"{HEADER}\n1,0,0,1,1\n0,1,1,1,0\n", "row 1, column index: 1, expected 0"),
    (f"{HEADER}\n0,0,0,1,1\n0,1,1,1,0\n", "row 2, column index: 0, expected 1"),
    ("label,prediction,accurate,robust@0.1\n0,0,1,1\n", r"lacks the column\(s\) \['index'\]"),
    (f"{HEADER},extra\n0,0,0,1,1,2\n", r"unknown column\(s\) \['extra'\]"),
    (f"{HEADER}\n0,zero,0,1,1\n", "row 1, column label: 'zero' is not an integer"),
    (f"{HEADER}\n0,0,0,1,yes\n", "row 1, column robust@0.1: 'yes' is not 0 or 1"),
    (f"{HEADER}\n0,0,0,0,1\n", "row 1, column accurate: disagrees"),
    (f"{HEADER}\n0,0,0,1\n", "row 1: 4 cells"),
    (f"{HEADER}\n", "holds no rows"),
])
def test_a_bad_records_table_is_refused_naming_file_row_and_column(tmp_path, text, message):
    path = tmp_path / "records.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        Records.read_csv(path)
    assert str(path) in str(error.value)


def test_non_finite_and_binary_certificates_are_refused(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("index,label,prediction,radius,p_lower,seconds\n0,1,1,nan,0.9,0.1\n")
    with pytest.raises(ValueError, match=r"row 1, column radius: 'nan' is not finite"):
        Certificates.read_csv(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    with pytest.raises(ValueError, match="not a text file"):
        Certificates.read_csv(path)
    path.write_text("index,label,prediction,certified@0.1,margin@0.1,seconds\n0,1,1,1,-2,0.1\n")
    with pytest.raises(ValueError, match="certified@0.1: disagrees with the margin"):
        BoundCertificates.read_csv(path)


def test_composing_records_of_other_inputs_is_refused():
    branch = Records([0, 1, 1], [0, 1, 1], {0.1: [True, True, False], 0.2: [True, False, False]},
                     index=[0, 1, 2])
    core = Records([0, 1, 1], [0, 1, 0], {0.1: [True, False, True]}, index=[0, 2, 1])
    selection = Selection.robustness(branch, 0.1)
    with pytest.raises(ValueError, match="index column of table 2 differs.*row 2"):
        compose_records(branch, core, selection)
    assert len(compose_records(branch, Records(core.labels, core.predictions, core.robust),
                               selection)) == 3


def test_pgd_answers_an_input_alike_in_any_batch_and_order():
    model, x, y = problem()
    threat = ThreatModel("linf", 0.15)
    indices = torch.arange(len(x)) + 100
    whole = random_pgd()(model, x, y, threat, indices)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))
    shuffled = random_pgd()(model, x[order], y[order], threat, indices[order])
    assert torch.equal(shuffled, whole[order])
    pieces = torch.cat([random_pgd()(model, x[i : i + 7], y[i : i + 7], threat, indices[i : i + 7])
                        for i in range(0, len(x), 7)])
    assert torch.equal(pieces, whole)
    _, robust = check_robustness(model, x[order], threat, random_pgd(), batch_size=4,
                                 indices=indices[order])
    assert torch.equal(robust, check_robustness(model, x, threat, random_pgd(),
                                                indices=indices)[1][order])


def test_every_per_sample_computation_gives_the_same_rows_in_any_chunking(tmp_path):
    model, x, y = problem()
    radii = [0.05, 0.1, 0.2]
    evaluations = [evaluate_model(model, x, y, THREAT, radii, random_pgd(), batch_size=size,
                                  progress=False) for size in (1, 7, 30)]
    for other in evaluations[1:]:
        assert np.array_equal(other.predictions, evaluations[0].predictions)
        assert all(np.array_equal(other.robust_at(r), evaluations[0].robust_at(r)) for r in radii)
    smooth = Smooth(model, 3, 0.1)
    certificates = [certify_smoothed(smooth, x, y, 10, 50, 0.01, seed=2, chunk=size,
                                     progress=False) for size in (4, 30)]
    assert np.array_equal(certificates[0].radii, certificates[1].radii)
    bounds = [certify_with_bounds(model, x, y, THREAT, radii, "crown", batch_size=size,
                                  progress=False) for size in (5, 30)]
    assert all(np.allclose(bounds[0].margins[r], bounds[1].margins[r], rtol=0, atol=1e-6)
               for r in radii)


def test_an_interrupted_evaluation_resumes_to_the_uninterrupted_file(tmp_path, monkeypatch):
    from robustgate.evaluate import records as records_module

    model, x, y = problem()
    whole = tmp_path / "whole.csv"
    evaluate_model(model, x, y, THREAT, [0.1], random_pgd(), batch_size=8, progress=False,
                   path=whole)
    path = tmp_path / "records.csv"
    interrupt_at_call(monkeypatch, records_module, "_bisect_radii", 3)
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(model, x, y, THREAT, [0.1], random_pgd(), batch_size=8, progress=False,
                       path=path)
    assert len(Records.read_csv(tmp_path / "records.partial.csv")) == 16
    monkeypatch.undo()
    evaluate_model(model, x, y, THREAT, [0.1], random_pgd(), batch_size=5, progress=False,
                   path=path)
    assert path.read_bytes() == whole.read_bytes()
    assert not (tmp_path / "records.partial.csv").exists()
    with pytest.raises(ValueError, match="holds records of other data"):
        evaluate_model(model, x, (y + 1) % 3, THREAT, [0.1], random_pgd(), progress=False,
                       path=path)


def test_shards_of_any_world_size_resume_into_one_table(tmp_path):
    """Rows left by a run of two processes (each its own shard file, partly done) are picked up
    by one process, which computes only the rest."""
    model, x, y = problem()
    expected = evaluate_model(model, x, y, THREAT, [0.1], random_pgd(), progress=False)
    path = tmp_path / "records.csv"
    for rank in range(2):
        part = shard_indices(len(x), 4, rank, 2)[:5]
        Records(expected.labels[part], expected.predictions[part],
                {0.1: expected.robust_at(0.1)[part]}, np.arange(len(x))[part]
                ).to_csv(path.with_suffix(f".shard-{rank}-of-2.partial.csv"))
    computed = []

    def compute(indices):
        computed.append(indices)
        return evaluate_model(model, x, y, THREAT, [0.1], random_pgd(), progress=False
                              ).table().rows(indices)

    from robustgate.evaluate.records import RECORDS
    table = run_per_sample(RECORDS, compute, len(x), 4, [0.1], path, progress=False)
    done = np.concatenate([shard_indices(len(x), 4, rank, 2)[:5] for rank in range(2)])
    assert np.array_equal(np.concatenate(computed), np.setdiff1d(np.arange(len(x)), done))
    assert np.array_equal(Records.from_table(table).robust_at(0.1), expected.robust_at(0.1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.csv"]
