"""What ASHA buys: the same sampled configurations trained under ASHA and under FIFO (every
trial to the end), on the synthetic data.

The configurations are drawn once from the space with a seeded Optuna sampler and given to
both runs as fixed points, so the two runs differ in their scheduler only.

    python -m bench.asha_vs_fifo [--space loss_weights] [--trials 8] [--epochs 8] [--grace-period 4]

The defaults are make run's: its trials, the quick preset's epochs, and ASHA's own settings
(search.stopping's settings, built as a search builds them: search.tuner.schedulers.ray_scheduler).

Target: ASHA reaches >= 98% of FIFO's best cv_lwlrap with <= 70% of its trained epochs. (Under
make run's grace of 4 of 8 epochs every trial trains half the budget, so 50% is the floor; with
--grace-period 1 the share falls to about 40%.)
"""

from __future__ import annotations

import argparse
import tempfile
import time

import optuna
import ray
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from bench.common import cores, header, synthetic_data, verdict
from datatools.builtin import QUICK_PRESET, QUICK_TRAINING
from search.plan import DefineByRun
from search.results.leaderboard import trial_results
from search.stopping import SCHEDULERS
from search.tuner.schedulers import ray_scheduler
from spaces import SPACES
from trainable.reported import ITERATION, METRIC, MODE, SCORE
from trainable.tune import train_sed

QUALITY_TARGET, EPOCHS_TARGET = 0.98, 0.70


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.asha_vs_fifo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="loss_weights", choices=list(SPACES), help="(default: loss_weights)")
    parser.add_argument("--trials", type=int, default=8, help="sampled configurations (default: 8)")
    parser.add_argument("--epochs", type=int, default=QUICK_TRAINING["train.epochs"],
                        help="epoch budget = ASHA's max_t (default: %(default)s)")
    for setting in SCHEDULERS["asha"].settings:  # --grace-period, --reduction-factor
        parser.add_argument(setting.flag, type=setting.type, help=setting.help)
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (default: 0)")
    return parser.parse_args(argv)


def sampled_points(space: str, trials: int, epochs: int, seed: int) -> list[dict]:
    """`trials` configurations of `space` (dotted config keys) from a seeded Optuna sampler."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    define = DefineByRun((space,), epochs)
    return [define(study.ask()) for _ in range(trials)]


def run(points: list[dict], fixed: dict, scheduler, storage: str, name: str) -> tuple[float, int, float]:
    """(best cv_lwlrap, epochs trained over all trials, wall seconds) of one scheduler's run."""
    started = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(train_sed, {"cpu": 1}),
        param_space={**points[0], **fixed},  # the points replace the searched keys' values
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler, num_samples=len(points),
                                    search_alg=BasicVariantGenerator(points_to_evaluate=points)),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    results = tuner.fit()
    assert not results.errors, results.errors
    # Without errors every trial reported: each has its config and metrics.
    reports = [(result.config or {}, result.metrics or {}) for result in trial_results(results)]
    ran = sorted(sorted((key, config[key]) for key in points[0]) for config, _ in reports)
    assert ran == sorted(sorted(point.items()) for point in points), "the run did not train exactly the points"
    best = max(metrics[SCORE] for _, metrics in reports)
    epochs = sum(int(metrics[ITERATION]) for _, metrics in reports)
    return best, epochs, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fixed = {**QUICK_PRESET, **QUICK_TRAINING, "train.epochs": args.epochs, "train.t_max": args.epochs,
             "data_dir": str(synthetic_data())}
    points = sampled_points(args.space, args.trials, args.epochs, args.seed)
    asha = SCHEDULERS["asha"]
    settings = asha.resolve({s.name: getattr(args, s.name) for s in asha.settings}, args.epochs)
    header(f"ASHA vs FIFO: {args.trials} configurations of {args.space} (seed {args.seed}), {args.epochs} epochs;"
           f" {asha.summary(settings)}")
    ray.init(num_cpus=cores(), include_dashboard=False, configure_logging=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="rfcx-bench-asha-") as storage:
        fifo_best, fifo_epochs, fifo_wall = run(points, fixed, ray_scheduler("fifo", {}, args.epochs), storage,
                                                "fifo")
        asha_best, asha_epochs, asha_wall = run(points, fixed, ray_scheduler("asha", settings, args.epochs), storage,
                                                "asha")
    ray.shutdown()
    quality, share = asha_best / fifo_best, asha_epochs / fifo_epochs
    print(f"FIFO: best cv_lwlrap {fifo_best:.4f} with {fifo_epochs} epochs ({fifo_wall:.0f} s)")
    print(f"ASHA: best cv_lwlrap {asha_best:.4f} with {asha_epochs} epochs ({asha_wall:.0f} s)")
    print(f"ASHA reaches {quality:.1%} of FIFO's best (target >= {QUALITY_TARGET:.0%}:"
          f" {verdict(quality, QUALITY_TARGET)}) with {share:.1%} of its epochs (target <= {EPOCHS_TARGET:.0%}:"
          f" {verdict(share, EPOCHS_TARGET, False)})")


if __name__ == "__main__":
    main()
