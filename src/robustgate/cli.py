"""The command line: ``robustgate demo | train | evaluate | run | compose | certify | study |
report``."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from robustgate.config import (
    BOUND_BATCH,
    DEFAULT_KAPPAS,
    EVALUATION_ATTACK,
    SmoothingSettings,
    ThreatSettings,
)
from robustgate.data import SYNTHETIC_DATASETS
from robustgate.io import check_output_directory
from robustgate.registry import CERTIFICATE_METHODS, SELECTOR_KINDS

# the threat's norm by default, one for every command and config (``config.ThreatSettings``),
# and the radii ``certify`` summarizes by default, in that norm
NORM = ThreatSettings().norm
CERTIFIED_RADII = [0.0, 0.05, 0.1, 0.2, 0.3]


def _given_out(out: str | None) -> Path | None:
    """``--out`` checked before anything else is read (``None`` where the default, from the
    config's name, is checked once the config is read)."""
    return None if out is None else check_output_directory(out)


def _demo(args: argparse.Namespace) -> int:
    from robustgate.config import demo_config
    from robustgate.report import metrics_table
    from robustgate.report.tables import with_composition_forms

    check_output_directory(args.out)
    config = demo_config(dataset=args.dataset, seed=args.seed)
    started = time.perf_counter()
    result = _experiment(config, Path(args.out), args)
    if result is None:
        return 0
    threat = config.evaluation.threat
    # the test points last, where a reader looks for the result (the README's figures)
    for split in sorted(config.evaluation.splits, key=lambda split: split == "test"):
        print(f"\n{split} points ({config.data.name}, {threat.norm} eps={threat.eps:g}):")
        print(metrics_table(with_composition_forms(result.to_json()[split])))
    print(f"\nwrote {args.out}/report.md, report.html, metrics.json and decision_regions.png "
          f"in {time.perf_counter() - started:.0f} s")
    return 0


def _train(args: argparse.Namespace) -> int:
    from robustgate import distributed
    from robustgate.config import TrainRunConfig, load_config
    from robustgate.train.run import train_model, training_data

    given = _given_out(args.out)
    config = load_config(args.config, TrainRunConfig, args.set)
    out = given or check_output_directory(Path("runs") / config.name)
    device = distributed.rank_device(args.device)
    train, validation, num_classes, metadata = training_data(config.data, config.seed)
    process = distributed.start(device)
    try:
        best = train_model(config, train, validation, num_classes, out, seed=config.seed,
                           device=device, progress=not args.quiet and process.is_main,
                           metadata=metadata, process=process)
    finally:
        distributed.stop()
    if process.is_main:
        print(f"best checkpoint: {best}")
    return 0


def _split(args: argparse.Namespace, split: str | None = None) -> tuple[Any, Any]:
    """Inputs and labels of the data set the arguments name (``split`` or ``--split``), cut to
    ``--limit``."""
    from robustgate.data import load_dataset

    data = load_dataset(args.data, root=args.root, path=args.path, split=split or args.split,
                        download=args.download, validation_size=args.validation_size,
                        seed=args.seed, verify=not args.no_verify)
    limit = args.limit if split is None else None
    return data.x[:limit], data.y[:limit]


def _attack(args: argparse.Namespace, num_classes: int | None = None) -> Any:
    """The attack the options give; for records (``num_classes`` given), raised to the check
    ``--records-check`` names (``attacks.records_check``)."""
    from robustgate.attacks import build_attack, records_check
    from robustgate.config import AttackSettings

    settings = AttackSettings(name=args.attack, steps=args.steps, restarts=args.restarts,
                              relative_step=args.relative_step,
                              target_classes=args.target_classes)
    if num_classes is not None:
        return records_check(settings, args.records_check, num_classes, args.seed)
    return build_attack(settings, args.seed)


def _process_device(requested: str) -> tuple[Any, Any]:
    """This process's place under ``torchrun`` (its process group started) and its device
    (``distributed.rank_device``: the rank's own GPU where several processes share a machine)."""
    from robustgate import distributed

    device = distributed.rank_device(requested)
    return distributed.start(device), device


def _evaluate(args: argparse.Namespace) -> int:
    from robustgate.attacks import check_attack_applies
    from robustgate.evaluate import evaluate_model, robustness_metrics
    from robustgate.inputs import check_inputs
    from robustgate.io import atomic_write_json, record_settings
    from robustgate.models import load_checkpoint, predict_logits
    from robustgate.report import metrics_table
    from robustgate.threat import ThreatModel

    out = check_output_directory(args.out)
    process, device = _process_device(args.device)
    model, metadata = load_checkpoint(args.checkpoint, device, args.trust_code)
    x, y = _split(args)
    threat = ThreatModel(args.norm, args.eps[0])
    for eps in args.eps:
        ThreatModel(args.norm, eps).check_dimension(x)
    check_attack_applies(_attack(args), model.num_classes)  # as given, also where it is raised
    attack = _attack(args, model.num_classes)
    check_attack_applies(attack, model.num_classes)
    check_inputs(x, getattr(model, "input_shape", None))
    predict_logits(model, x)  # refuses a diverged model before anything is written
    settings = {"checkpoint": str(args.checkpoint), "data": args.data, "split": args.split,
                "samples": len(y), "attack": repr(attack), "norm": args.norm,
                "eps": sorted(set(args.eps))}
    record_settings(out / "evaluate.json", settings, "records")  # every rank refuses alike
    records = evaluate_model(model, x, y, threat, args.eps, attack, batch_size=args.batch_size,
                             progress=not args.quiet, description=args.attack,
                             path=out / "records.csv", rank=process.rank,
                             world_size=process.world_size)
    if not process.is_main:
        return 0
    summary = {f"eps={eps:g}": robustness_metrics(records.accurate, records.robust_at(eps))
               for eps in args.eps}
    atomic_write_json(out / "summary.json", {
        **settings, "metrics": summary, "checkpoint_metadata": metadata})
    print(metrics_table(summary))
    print(f"wrote {out}/records.csv and summary.json")
    return 0


def _experiment(config: Any, out: Path, args: argparse.Namespace) -> Any:
    """``run_experiment`` in this process, one of a torchrun run or the only one: the results
    on rank 0, ``None`` on the other ranks (which end once rank 0 dismisses them: they compute
    their shards of the per-sample work until then)."""
    from robustgate import distributed
    from robustgate.pipeline import run_experiment

    device = distributed.rank_device(args.device)
    process = distributed.start(device)
    try:
        result = run_experiment(config, out, device=device,
                                progress=not args.quiet and process.is_main, process=process)
    finally:
        distributed.stop()
    return result if process.is_main else None


def _run(args: argparse.Namespace) -> int:
    from robustgate.config import ExperimentConfig, load_config
    from robustgate.report import metrics_table

    given = _given_out(args.out)
    config = load_config(args.config, ExperimentConfig, args.set)
    out = given or check_output_directory(Path("runs") / config.name)
    result = _experiment(config, out, args)
    if result is None:
        return 0
    print(metrics_table(result.to_json()["test"]))
    print(f"wrote {out}/report.md, report.html and metrics.json in "
          f"{result.wall_time_s:.0f} s")
    return 0


def _compose(args: argparse.Namespace) -> int:
    from robustgate.evaluate.operating_points import robustness_given_up
    from robustgate.evaluate.results import OperatingPoint
    from robustgate.pipeline.compose_command import compose_from_checkpoints, compose_from_records
    from robustgate.report import metrics_table
    from robustgate.select import describe_route

    check_output_directory(args.out)
    parts = [*args.branch, args.core]
    kinds = {Path(part).suffix for part in parts}
    if (args.validation_branch is None) != (args.validation_core is None):
        raise ValueError("--validation-branch and --validation-core go together: give both "
                         "(the branch's and the core's records on validation data) or neither")
    if kinds == {".csv"}:
        if args.cascade:
            raise ValueError("--cascade deploys the selector on checkpoints; records already "
                             "hold the attack's decisions, which the cascade's equal")
        validation = (None if args.validation_branch is None
                      else (args.validation_branch, args.validation_core))
        summary = compose_from_records(args.branch, args.core, args.eps, args.out,
                                       kappa=args.kappa, max_accuracy_drop=args.max_accuracy_drop,
                                       validation=validation, kappas=args.kappas)
        print(metrics_table({f"composed (kappa {summary['kappa']:g})": summary["metrics"]}))
        point = (None if "operating_point" not in summary
                 else OperatingPoint.from_json(summary["operating_point"]))
        if point is not None and not point.chosen.meets_target:
            print(f"no kappa keeps the validation accuracy within {args.max_accuracy_drop} of "
                  f"the core's; chose the most accurate, kappa {point.kappa:g}")
        given_up = None if point is None else robustness_given_up(point.validation_curve,
                                                                  point.chosen)
        if point is not None and given_up is not None:
            print(f"warning: kappa {point.kappa:g} keeps the accuracy target only "
                  f"by giving up most of the robustness: "
                  f"{100 * point.chosen.robust_accuracy:.1f}% sound robust accuracy on "
                  f"the validation records, against {100 * given_up.robust_accuracy:.1f}% at "
                  f"kappa {given_up.kappa:g}")
        print(f"wrote {args.out}/records.csv and summary.json")
        return 0
    if kinds != {".safetensors"}:
        raise ValueError(f"compose takes records (.csv) or checkpoints (.safetensors), not a "
                         f"mix: {parts}")
    if args.data is None:
        raise ValueError("composing checkpoints needs --data (and --root or --path)")
    from robustgate.evaluate import AdaptiveAttack
    from robustgate.threat import ThreatModel

    x, y = _split(args)
    threat = ThreatModel(args.norm, args.eps)
    threat.check_dimension(x)
    calibration = (_split(args, "validation")[0]
                   if args.coverage is not None or args.cascade else None)
    process, device = _process_device(args.device)
    summary = compose_from_checkpoints(
        args.branch, args.core, x, y, threat, _attack(args), args.out, selector=args.selector,
        threshold=args.threshold, coverage=args.coverage,
        calibration=calibration, kappa=args.kappa, sanity=args.sanity,
        square_queries=args.square_queries, trust_code=args.trust_code,
        form="cascade" if args.cascade else None,
        adaptive=(AdaptiveAttack(steps=args.steps, relative_step=args.relative_step,
                                 restarts=args.restarts, target_classes=args.target_classes,
                                 seed=args.seed)
                  if args.adaptive or args.sanity else None),
        device=device, batch_size=args.batch_size, progress=not args.quiet and process.is_main,
        process=process)
    if summary is None:  # a rank other than 0 of a torchrun run
        return 0
    rows = {"composed": {key: summary[key] for key in ("natural_accuracy", "selection_rate")}}
    if "adaptive" in summary:
        rows["composed, adaptive attack"] = summary["adaptive"]
    print(metrics_table(rows))
    for position, cascade in enumerate(summary.get("cascade", [])):
        decided = ", ".join(f"{stage} {count}" for stage, count in cascade["decided"].items())
        print(f"branch {position}: cascade {describe_route(cascade['stages'])}, "
              f"inputs decided per stage: {decided}")
    sanity = summary.get("sanity")
    if sanity is not None:
        gradient, square = sanity["gradient"], sanity["square"]
        by_eps = ", ".join(f"{eps}: {100 * value:.1f}%"
                           for eps, value in sanity["robust_accuracy_by_eps"].items())
        print(f"sanity on {sanity['samples']} inputs: adaptive attack "
              f"{100 * gradient['robust_accuracy']:.1f}%, Square "
              f"{100 * square['robust_accuracy']:.1f}% ("
              + ("the gradient attack looks masked" if sanity["gradient_attack_masked"]
                 else "not below beyond sampling error") + f"); at larger eps {by_eps}")
    print(f"wrote {args.out}/predictions.csv and summary.json")
    return 0


def _certify(args: argparse.Namespace) -> int:
    from robustgate.config import parse_config
    from robustgate.pipeline.certify_command import certify_checkpoint
    from robustgate.report import metrics_table
    from robustgate.report.tables import CERTIFIED_COLUMNS, SMOOTHED_COLUMNS

    check_output_directory(args.out)
    smoothing = None
    randomized = not CERTIFICATE_METHODS[args.method].bound_propagation
    if randomized:
        if args.sigma is None:
            raise ValueError("--method smoothing needs --sigma (the smoothing noise)")
        smoothing = parse_config({"sigma": args.sigma, "n0": args.n0, "n": args.n,
                                  "alpha": args.alpha, "batch_size": args.noise_batch,
                                  "seed": args.seed}, SmoothingSettings, "certify")
    elif args.sigma is not None:
        raise ValueError(f"--sigma is for --method smoothing, not {args.method}")
    x, y = _split(args)
    process, device = _process_device(args.device)
    summary = certify_checkpoint(args.checkpoint, x, y, args.out, args.method, args.norm,
                                 args.radii, smoothing, data=args.data, device=device,
                                 batch_size=args.batch_size, progress=not args.quiet,
                                 process=process, trust_code=args.trust_code)
    if not process.is_main:
        return 0
    columns = SMOOTHED_COLUMNS if randomized else CERTIFIED_COLUMNS
    print(metrics_table(summary["metrics"], columns, first="radius"))
    if smoothing is not None:
        largest = summary["max_certifiable_l2_radius"]
        print(f"smoothing sigma {args.sigma:g}, n0 {args.n0}, n {args.n}, alpha {args.alpha:g}: "
              f"the largest certifiable L2 radius is {largest:.4g}")
        above = [radius for radius, row in summary["metrics"].items()
                 if row["above_max_certifiable"]]
        if above:
            print(f"radii above it, certified for no input at these settings: "
                  f"{', '.join(above)}")
        if args.norm == "linf":
            print("linf radii are certified through the covering L2 radius eps·sqrt(d)")
        if summary["sigma_train"] is None:
            print("the checkpoint does not record a training noise sigma_train")
        elif summary["sigma_differs_from_training"]:
            print(f"note: trained at sigma_train {summary['sigma_train']:g}, certified at sigma "
                  f"{args.sigma:g}")
    else:
        print(f"{args.method}: certified where the lower bound of every logit difference "
              "f_ŷ − f_j over the ball (with the domain) is positive")
    print(f"{len(y)} inputs in {summary['wall_time_s']:.0f} s "
          f"({summary['mean_seconds_per_sample']:.3g} s per input); wrote "
          f"{args.out}/certificates.csv and summary.json")
    return 0


def _study(args: argparse.Namespace) -> int:
    from robustgate.config import (
        NOISE_PROBLEMS,
        NoiseStudyConfig,
        load_config,
        parse_config,
        quick_noise_study,
    )
    from robustgate.study.noise import run_noise_study

    problems = args.problems or None
    unknown = sorted(set(problems or []) - set(NOISE_PROBLEMS))
    if unknown:
        raise ValueError(f"unknown problems {unknown}; choose from {list(NOISE_PROBLEMS)}")
    given = _given_out(args.out)
    if args.config is not None:
        config = load_config(args.config, NoiseStudyConfig)
    elif args.quick:
        config = quick_noise_study(problems)
    else:
        config = NoiseStudyConfig()
    if problems:
        config = parse_config({**config.model_dump(), "problems": problems}, NoiseStudyConfig)
    out = given or check_output_directory(Path("runs") / config.name)
    summary = run_noise_study(config, out, progress=not args.quiet)
    for problem, rows in summary["summaries"].items():
        for row in rows:
            print(f"{problem} {row['panel']}, sigma {row['sigma']:g}: {row['verdict']}; error "
                  f"{100 * row['error_at_zero']:.2f}% at sigma_train 0, "
                  f"{100 * row['error_at_sigma']:.2f}% at sigma_train = sigma, "
                  f"{100 * row['error_at_best']:.2f}% at the best sigma_train "
                  f"{row['best_sigma_train']:g}")
    print(f"wrote {out}/report.md, report.html and summary.json in "
          f"{summary['wall_time_s']:.0f} s")
    return 0


def _report(args: argparse.Namespace) -> int:
    from robustgate.report.run_report import write_reports

    markdown, html = write_reports(args.run_dir)
    print(f"wrote {markdown} and {html}")
    return 0


def _count_or_fraction(text: str) -> int | float:
    try:
        value: int | float = int(text)
    except ValueError:
        value = _number(text, "a count or a fraction in (0, 1)")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a count >= 0 or a fraction in (0, 1)")
    return value


def _number(text: str, expected: str) -> float:
    """``text`` as a finite float; anything else is refused with what was ``expected``."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {expected}")
    return value


def _float_type(expected: str, accept: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse type: a finite float that ``accept`` holds for, else an error that names the
    value and what was ``expected``."""
    def parse(text: str) -> float:
        value = _number(text, expected)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}")
        return value
    return parse


def _int_type(smallest: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``smallest``, else an error naming the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = smallest - 1
        if value < smallest:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {smallest}")
        return value
    return parse


RADIUS = _float_type("a radius: a finite number >= 0", lambda value: value >= 0)
POSITIVE = _float_type("a finite number > 0", lambda value: value > 0)
NON_NEGATIVE = _float_type("a finite number >= 0", lambda value: value >= 0)
KAPPA = _float_type("a kappa: a finite number >= 1", lambda value: value >= 1)
LEVEL = _float_type("a level in (0, 1)", lambda value: 0 < value < 1)
SHARE = _float_type("a fraction in (0, 1]", lambda value: 0 < value <= 1)
FINITE = _float_type("a finite number", lambda value: True)
COUNT = _int_type(1)
COUNT_OR_NONE = _int_type(0)


def _data_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    from robustgate.data import DATASETS

    parser.add_argument("--data", required=required, choices=DATASETS)
    parser.add_argument("--root", help="directory holding the data set's files")
    parser.add_argument("--path", help="the .npz file, for --data npz")
    parser.add_argument("--download", action="store_true", help="download missing files")
    parser.add_argument("--no-verify", action="store_true",
                        help="load data files that are not byte-identical to the canonical ones "
                        "(another compression, a re-export): checked by their structure only")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--validation-size", type=_count_or_fraction, default=0,
                        help="validation samples taken from the training data (count or "
                        "fraction), for --split train/validation and calibration")
    parser.add_argument("--limit", type=COUNT, help="only the first N samples")
    parser.add_argument("--seed", type=int, default=0)


def _attack_options(parser: argparse.ArgumentParser) -> None:
    from robustgate.attacks import ATTACKS

    parser.add_argument("--attack", default="pgd", choices=ATTACKS,
                        help="pgd (default): the logit margin, then the targeted margin towards "
                        "--target-classes other classes")
    parser.add_argument("--steps", type=COUNT, default=EVALUATION_ATTACK.steps,
                        help=f"attack iterations (default {EVALUATION_ATTACK.steps})")
    parser.add_argument("--restarts", type=COUNT, default=EVALUATION_ATTACK.restarts)
    parser.add_argument("--relative-step", type=POSITIVE, default=EVALUATION_ATTACK.relative_step,
                        help="pgd only: step size as a fraction of eps (default "
                        f"{EVALUATION_ATTACK.relative_step:g})")
    parser.add_argument("--target-classes", type=COUNT_OR_NONE,
                        default=EVALUATION_ATTACK.target_classes,
                        help="pgd only: classes attacked with the targeted margin (default "
                        f"{EVALUATION_ATTACK.target_classes})")
    parser.add_argument("--norm", default=NORM, choices=["linf", "l2"],
                        help=f"the threat's norm (default {NORM}, as everywhere)")
    parser.add_argument("--batch-size", type=COUNT, default=500)


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.root=/data/mnist or "
                        "--set models.core.train.epochs=2 (dotted keys, YAML values; validated "
                        "like the file, and recorded in the run's config); repeatable")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:0…")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _trust_code(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-code", action="store_true",
                        help="load checkpoints whose architecture is an import path "
                        "(package.module:Name): importing it runs that code")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustgate",
        description="Robust only where accurate: train, select by robustness, compose.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="standard, TRADES and ERA on a 2-D data set, composed; writes a report "
        "(the experiment config robustgate/configs/demo.yaml)")
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed of data, weights and attacks")
    demo.add_argument("--dataset", default="threegauss", choices=sorted(SYNTHETIC_DATASETS))
    _common(demo)
    demo.set_defaults(handler=_demo)

    train = commands.add_parser("train", help="train one model from a YAML config")
    train.add_argument("config", help="YAML config (see configs/)")
    train.add_argument("--out", help="run directory (default: runs/<name>)")
    _overrides(train)
    _common(train)
    train.set_defaults(handler=_train)

    from robustgate.attacks import RECORDS_CHECKS

    evaluate = commands.add_parser(
        "evaluate", help="per-sample accuracy and robustness records of a checkpoint")
    evaluate.add_argument("checkpoint", help="a robustgate .safetensors checkpoint")
    _data_options(evaluate)
    _attack_options(evaluate)
    evaluate.add_argument("--eps", type=RADIUS, nargs="+", required=True, help="radii to check")
    evaluate.add_argument("--records-check", default="strong", choices=RECORDS_CHECKS,
                          help="strong (default): the attack raised to margin PGD with restarts "
                          "then APGD-CE and APGD-T, or to AutoAttack's standard version, as the "
                          "records a count leans on need; attack: as given (cheaper)")
    evaluate.add_argument("--out", required=True, help="directory for records and summary")
    _common(evaluate)
    _trust_code(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    run = commands.add_parser(
        "run", help="an experiment from a YAML config: train, evaluate, compose, report")
    run.add_argument("config", help="YAML config, e.g. configs/mnist-compose.yaml")
    run.add_argument("--out", help="run directory (default: runs/<name>)")
    _overrides(run)
    _common(run)
    run.set_defaults(handler=_run)

    compose = commands.add_parser(
        "compose", help="compose a branch (or a chain) with a core, from per-sample records "
        "(.csv, offline) or from checkpoints (.safetensors, on a data split)")
    compose.add_argument("--branch", action="append", required=True,
                         help="branch records or checkpoint; repeat for a chain")
    compose.add_argument("--core", required=True, help="core records or checkpoint")
    compose.add_argument("--eps", type=RADIUS, required=True, help="threat radius")
    compose.add_argument("--kappa", type=KAPPA, default=1.0,
                         help="the robustness selector checks the branch on B(x', kappa·eps) "
                         "(default 1); records must hold kappa·eps and (kappa+1)·eps, where a "
                         "selection is stable under attack")
    compose.add_argument("--max-accuracy-drop", type=NON_NEGATIVE,
                         help="records only: choose kappa on validation records, the most "
                         "robust whose natural accuracy is at most this below the core's")
    compose.add_argument("--validation-branch", help="branch records on validation data")
    compose.add_argument("--validation-core", help="core records on validation data")
    compose.add_argument("--kappas", type=KAPPA, nargs="+", default=list(DEFAULT_KAPPAS),
                         help="the kappas --max-accuracy-drop chooses from")
    compose.add_argument("--selector", default="robustness",
                         choices=[kind.name for kind in SELECTOR_KINDS.values()
                                  if kind.composes_checkpoints],
                         help="checkpoints only; confidence selectors need --threshold or "
                         "--coverage")
    compose.add_argument("--cascade", action="store_true",
                         help="checkpoints, robustness selector: bound stages (IBP, CROWN-IBP, "
                         "CROWN) that pay, chosen on the validation split, before the attack")
    compose.add_argument("--threshold", type=FINITE, help="confidence selector threshold")
    compose.add_argument("--coverage", type=SHARE,
                         help="calibrate the confidence threshold on the validation split")
    compose.add_argument("--adaptive", action="store_true",
                         help="attack the composed system end to end (checkpoints only), "
                         "with --steps, --restarts, --relative-step and --target-classes")
    compose.add_argument("--sanity", type=COUNT_OR_NONE, default=0, metavar="N",
                         help="checkpoints only: on the first N inputs, Square judged by the "
                         "deployed decision against the adaptive attack, and growing eps")
    compose.add_argument("--square-queries", type=COUNT, default=1000,
                         help="Square's queries for --sanity (default 1000)")
    _data_options(compose, required=False)
    _attack_options(compose)
    compose.add_argument("--out", required=True, help="directory for the results")
    _common(compose)
    _trust_code(compose)
    compose.set_defaults(handler=_compose)

    certify = commands.add_parser(
        "certify", help="per-sample certificates of a checkpoint (randomized smoothing or bound "
        "propagation) and certified metrics at the radii asked for; resumable")
    certify.add_argument("checkpoint", help="a robustgate .safetensors checkpoint")
    certify.add_argument("--method", default="smoothing", choices=CERTIFICATE_METHODS.names(),
                         help="; ".join(f"{m.name}: {m.description}"
                                        for m in CERTIFICATE_METHODS.values())
                         + " (bound propagation is deterministic)")
    certify.add_argument("--sigma", type=POSITIVE,
                         help="smoothing only: the noise (input units); the checkpoint's "
                         "training noise may differ, which the output says")
    smoothing = SmoothingSettings.model_fields  # one default per setting: the config's
    certify.add_argument("--n0", type=COUNT, default=smoothing["n0"].default,
                         help=f"selection draws (default {smoothing['n0'].default})")
    certify.add_argument("--n", type=COUNT, default=smoothing["n"].default,
                         help=f"estimation draws (default {smoothing['n'].default})")
    certify.add_argument("--alpha", type=LEVEL, default=smoothing["alpha"].default,
                         help="each certificate fails with probability at most alpha (default "
                         f"{smoothing['alpha'].default:g})")
    certify.add_argument("--noise-batch", type=COUNT, default=smoothing["batch_size"].default,
                         help="noisy inputs per forward pass (default "
                         f"{smoothing['batch_size'].default})")
    certify.add_argument("--batch-size", type=COUNT, default=BOUND_BATCH,
                         help=f"bound propagation: inputs per batch (default {BOUND_BATCH})")
    certify.add_argument("--norm", default=NORM, choices=["linf", "l2"],
                         help=f"norm of --radii (default {NORM}, as everywhere); smoothing "
                         "certifies linf radii through the L2 ball that covers them (eps·sqrt(d))")
    certify.add_argument("--radii", type=RADIUS, nargs="+", default=CERTIFIED_RADII,
                         help="radii to summarize (default "
                         f"{' '.join(f'{r:g}' for r in CERTIFIED_RADII)})")
    _data_options(certify)
    certify.add_argument("--out", required=True, help="directory for certificates and summary")
    _common(certify)
    _trust_code(certify)
    certify.set_defaults(handler=_certify)

    study = commands.add_parser(
        "study", help="studies run as experiments: `study noise` (does noise-augmented "
        "training help a smoothed classifier?)")
    study.add_argument("study", choices=["noise"])
    study.add_argument("problems", nargs="*",
                       help="disks, gaussians, mnist (default: all of the config)")
    study.add_argument("--quick", action="store_true",
                       help="a small grid: the synthetic problems in a few minutes")
    study.add_argument("--config", help="a YAML study config (robustgate.config."
                       "NoiseStudyConfig); written beside the results")
    study.add_argument("--out", help="run directory (default: runs/<name>)")
    study.add_argument("--quiet", action="store_true", help="no progress output")
    study.set_defaults(handler=_study)

    report = commands.add_parser(
        "report", help="write report.md and report.html (plots embedded) for a run directory")
    report.add_argument("run_dir", help="a directory written by `robustgate run`")
    report.set_defaults(handler=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status: 0 done, 2 a bad input (said in one line, before
    anything is written), 130 interrupted, 1 a system error such as a full disk (said in one
    line). Interrupted or failed, what was finished is kept, and the same command resumes."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has said what was wrong (or printed --help)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"robustgate: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustgate: interrupted; what was finished is kept, and the same command resumes "
              "from it", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk, a file system gone read-only, …
        where = f" ({error.filename})" if error.filename else ""
        print(f"robustgate: error: {error.strerror or error}{where}; what was finished is kept: "
              "fix that (free disk space) and the same command resumes from it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
