"""The command line: ``robustgate demo | train | evaluate | run``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from robustgate.config import DemoConfig
from robustgate.data import SYNTHETIC_DATASETS


def _demo(args: argparse.Namespace) -> int:
    from robustgate.pipeline import SPLITS, run_demo
    from robustgate.report import metrics_table

    config = DemoConfig(dataset=args.dataset, seed=args.seed)
    started = time.perf_counter()
    metrics = run_demo(config, args.out, device=args.device, progress=not args.quiet)
    for split in SPLITS:
        print(f"\n{split} points ({config.dataset}, {config.norm} eps={config.eps:g}):")
        print(metrics_table(metrics[split]))
    print(f"\nwrote {args.out}/report.md, metrics.json and decision_regions.png "
          f"in {time.perf_counter() - started:.0f} s")
    return 0


def _train(args: argparse.Namespace) -> int:
    from robustgate.config import TrainRunConfig, load_config
    from robustgate.device import resolve_device
    from robustgate.train.run import train_model, training_data

    config = load_config(args.config, TrainRunConfig)
    out = Path(args.out or Path("runs") / config.name)
    train, validation, num_classes, metadata = training_data(config.data, config.seed)
    best = train_model(config, train, validation, num_classes, out, seed=config.seed,
                       device=resolve_device(args.device), progress=not args.quiet,
                       metadata=metadata)
    print(f"best checkpoint: {best}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from robustgate.config import AttackSettings
    from robustgate.data import load_dataset
    from robustgate.device import resolve_device
    from robustgate.evaluate import evaluate_model, robustness_metrics
    from robustgate.io import atomic_write_json
    from robustgate.models import load_checkpoint
    from robustgate.report import metrics_table
    from robustgate.threat import ThreatModel

    device = resolve_device(args.device)
    model, metadata = load_checkpoint(args.checkpoint, device)
    data = load_dataset(args.data, root=args.root, path=args.path, split=args.split,
                        download=args.download, validation_size=args.validation_size,
                        seed=args.seed)
    x, y = data.x, data.y
    if args.limit is not None:
        x, y = x[: args.limit], y[: args.limit]
    threat = ThreatModel(args.norm, args.eps[0])
    for eps in args.eps:
        ThreatModel(args.norm, eps).check_dimension(x)
    attack = AttackSettings(name=args.attack, steps=args.steps, restarts=args.restarts,
                            relative_step=args.relative_step).build(args.seed)
    out = Path(args.out)
    records = evaluate_model(model, x, y, threat, args.eps, attack, batch_size=args.batch_size,
                             progress=not args.quiet, description=args.attack,
                             partial=out / "records.partial.csv")
    records.to_csv(out / "records.csv")
    (out / "records.partial.csv").unlink(missing_ok=True)
    summary = {f"eps={eps:g}": robustness_metrics(records.accurate, records.robust_at(eps))
               for eps in args.eps}
    atomic_write_json(out / "summary.json", {
        "checkpoint": str(args.checkpoint), "data": args.data, "split": args.split,
        "samples": len(y), "attack": repr(attack), "norm": args.norm, "metrics": summary,
        "checkpoint_metadata": metadata,
    })
    print(metrics_table(summary))
    print(f"wrote {out}/records.csv and summary.json")
    return 0


def _run(args: argparse.Namespace) -> int:
    from robustgate.config import ExperimentConfig, load_config
    from robustgate.pipeline import run_experiment
    from robustgate.report import metrics_table

    config = load_config(args.config, ExperimentConfig)
    out = Path(args.out or Path("runs") / config.name)
    result = run_experiment(config, out, device=args.device, progress=not args.quiet)
    print(metrics_table(result["test"]))
    print(f"wrote {out}/report.md and metrics.json in {result['wall_time_s']:.0f} s")
    return 0


def _count_or_fraction(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:0…")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    from robustgate.attacks import ATTACKS
    from robustgate.data import DATASETS

    parser = argparse.ArgumentParser(
        prog="robustgate",
        description="Robust only where accurate: train, select by robustness, compose.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="standard, TRADES and ERA on a 2-D data set, composed; writes a report")
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed of data, weights and attacks")
    demo.add_argument("--dataset", default="threegauss", choices=sorted(SYNTHETIC_DATASETS))
    _common(demo)
    demo.set_defaults(handler=_demo)

    train = commands.add_parser("train", help="train one model from a YAML config")
    train.add_argument("config", help="YAML config (see configs/)")
    train.add_argument("--out", help="run directory (default: runs/<name>)")
    _common(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "evaluate", help="per-sample accuracy and robustness records of a checkpoint")
    evaluate.add_argument("checkpoint", help="a robustgate .safetensors checkpoint")
    evaluate.add_argument("--data", required=True, choices=DATASETS)
    evaluate.add_argument("--root", help="directory holding the data set's files")
    evaluate.add_argument("--path", help="the .npz file, for --data npz")
    evaluate.add_argument("--download", action="store_true", help="download missing files")
    evaluate.add_argument("--split", default="test", choices=["train", "validation", "test"])
    evaluate.add_argument("--validation-size", type=_count_or_fraction, default=0,
                          help="validation samples taken from the training data (count or "
                          "fraction), for --split train/validation")
    evaluate.add_argument("--attack", default="apgd-ce", choices=ATTACKS)
    evaluate.add_argument("--steps", type=int, default=100, help="attack iterations")
    evaluate.add_argument("--restarts", type=int, default=1)
    evaluate.add_argument("--relative-step", type=float, default=0.1, help="pgd only")
    evaluate.add_argument("--norm", default="linf", choices=["linf", "l2"])
    evaluate.add_argument("--eps", type=float, nargs="+", required=True, help="radii to check")
    evaluate.add_argument("--limit", type=int, help="only the first N samples")
    evaluate.add_argument("--batch-size", type=int, default=500)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", required=True, help="directory for records and summary")
    _common(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    run = commands.add_parser(
        "run", help="an experiment from a YAML config: train, evaluate, compose, report")
    run.add_argument("config", help="YAML config, e.g. configs/mnist-compose.yaml")
    run.add_argument("--out", help="run directory (default: runs/<name>)")
    _common(run)
    run.set_defaults(handler=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"robustgate: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
