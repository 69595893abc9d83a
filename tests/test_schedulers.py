"""search/stopping.py and search/tuner/schedulers.py: each entry of SCHEDULERS (its settings and their
checks, its milestones, its wording, the Ray scheduler it builds), --scheduler on the command line, plans saved before
the registry, and a tiny real search under every scheduler on local Ray."""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pytest
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.result import DONE
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.schedulers.hyperband import HyperBandScheduler

from search import run
from search.plan import PLAN_FILE, load_plan, param_names, report_dir, save_plan, scheduler_of
from search.results.leaderboard import STUDY_DB, leaderboard, load_study, trial_status
from search.stopping import DEFAULT_SCHEDULER, SCHEDULERS, chosen_settings
from search.tuner.experiment import build_tuner, fit, trial_space
from search.tuner.remembering import RememberingASHA, RememberingHyperBand
from search.tuner.schedulers import RAY_SCHEDULERS, ray_scheduler
from search.tuner.searcher import STUDY_EXPORT_ENV, TruthfulOptunaSearch
from tests.helpers import tiny_search
from trainable import reported
from trainable.config import SEED_GROUP, ConfigError

ASHA, FIFO, HYPERBAND = SCHEDULERS["asha"], SCHEDULERS["fifo"], SCHEDULERS["hyperband"]


def test_each_scheduler_owns_its_settings_and_their_defaults():
    assert DEFAULT_SCHEDULER == "asha" and list(SCHEDULERS) == ["asha", "fifo", "hyperband"]
    assert [s.flag for s in ASHA.settings] == ["--grace-period", "--reduction-factor"]
    assert ASHA.resolve({}, 50) == {"grace_period": 4, "reduction_factor": 3}
    assert ASHA.resolve({}, 2) == {"grace_period": 2, "reduction_factor": 3}  # never beyond the budget
    assert ASHA.resolve({"grace_period": 1, "reduction_factor": None}, 8) == {"grace_period": 1, "reduction_factor": 3}
    assert FIFO.settings == () and FIFO.resolve({}, 8) == {}
    assert HYPERBAND.resolve({}, 8) == {"reduction_factor": 3}
    assert all(entry.description and entry.name == name for name, entry in SCHEDULERS.items())


@pytest.mark.parametrize("name, given, epochs, message", [
    ("asha", {"grace_period": 5}, 3, "--grace-period must be in [1, epochs=3], got 5"),
    ("asha", {"grace_period": 0}, 3, "--grace-period must be >= 1 for --scheduler asha, got 0"),
    ("asha", {"reduction_factor": 1}, 3, "--reduction-factor must be >= 2 for --scheduler asha, got 1"),
    ("hyperband", {"reduction_factor": 1}, 3, "--reduction-factor must be >= 2 for --scheduler hyperband, got 1"),
    ("fifo", {"grace_period": 2}, 3, "not of fifo (it has no settings)"),
    ("hyperband", {"grace_period": 2}, 3, "not of hyperband (its settings: --reduction-factor)"),
])
def test_bad_settings_are_one_line(name, given, epochs, message):
    with pytest.raises(ConfigError) as error:
        chosen_settings(name, given, epochs)
    assert message in str(error.value) and "\n" not in str(error.value)
    if "not of" in message:  # another scheduler's flag: the schedulers that have it are named
        assert str(error.value).startswith("--grace-period is a setting of --scheduler asha")


def test_a_saved_setting_the_scheduler_does_not_have_is_refused():
    with pytest.raises(ConfigError, match="--grace-period is not a setting of --scheduler fifo"):
        FIFO.check({"grace_period": 2}, 8)


def test_milestones_are_where_the_ray_scheduler_compares_trials():
    settings = {"grace_period": 1, "reduction_factor": 2}
    assert ASHA.milestones(settings, 50) == [1, 2, 4, 8, 16, 32]
    built = ray_scheduler("asha", settings, 50)
    assert isinstance(built, RememberingASHA) and built._time_attr == reported.ITERATION and built._max_t == 50
    assert sorted(milestone for milestone, _ in built._brackets[0]._rungs) == ASHA.milestones(settings, 50)
    assert FIFO.milestones({}, 50) == [] and type(ray_scheduler("fifo", {}, 50)) is FIFOScheduler
    for epochs, eta in ((3, 3), (8, 3), (9, 3), (16, 2), (50, 3)):
        built = ray_scheduler("hyperband", {"reduction_factor": eta}, epochs)
        assert isinstance(built, RememberingHyperBand) and isinstance(built, HyperBandScheduler)
        assert (built._time_attr, built._max_t_attr, built._eta) == (reported.ITERATION, epochs, eta)
        assert HYPERBAND.milestones({"reduction_factor": eta}, epochs) == ray_hyperband_milestones(built)
    assert HYPERBAND.milestones({"reduction_factor": 3}, 3) == [1]
    assert HYPERBAND.milestones({"reduction_factor": 3}, 2) == []  # bracket 1 would start at int(2 / 3) = 0
    # Built without metric and mode: the Tuner's TuneConfig gives them (Ray refuses a scheduler with its own).
    assert list(RAY_SCHEDULERS) == list(SCHEDULERS)  # every entry builds one
    for name, entry in SCHEDULERS.items():
        assert ray_scheduler(name, entry.resolve({}, 8), 8).set_search_properties(reported.METRIC, reported.MODE)


def ray_hyperband_milestones(scheduler: HyperBandScheduler) -> list[int]:
    """The milestones below max_t of every bracket Ray's HyperBand creates, by halving each one."""
    found = set()
    for s in range(scheduler._s_max_1):
        if scheduler._get_r0(s) == 0:
            continue
        bracket = scheduler._create_bracket(s)
        found.add(bracket._cumul_r)
        while bracket._halves:
            bracket.successive_halving(reported.METRIC, 1.0)  # no trials: only its milestone moves on
            found.add(bracket._cumul_r)
    return sorted(epoch for epoch in found if epoch < scheduler._max_t_attr)


def test_each_scheduler_words_a_trial_it_stopped():
    assert trial_status(2, 8, finished=True, scheduler=ASHA) == "stopped by ASHA at epoch 2"
    assert trial_status(2, 8, finished=True, scheduler=HYPERBAND) == "stopped by HyperBand at epoch 2"
    assert trial_status(2, 8, finished=True) == "stopped by ASHA at epoch 2"  # the default scheduler's
    assert trial_status(8, 8, finished=True, scheduler=FIFO) == "completed"
    assert ASHA.summary({"grace_period": 4, "reduction_factor": 3}) == "ASHA grace 4, reduction 3"
    assert HYPERBAND.summary({"reduction_factor": 3}) == "HyperBand reduction 3"
    assert FIFO.summary({}) == "FIFO: every trial runs all its epochs"
    assert ASHA.milestones_caption([1, 3]) == "ASHA's rungs at epoch 1, 3 (dotted)"
    assert FIFO.milestones_caption([]) == "FIFO stops no trial"


class FakeTrial:
    """What ASHA and HyperBand read of a trial: its id, status, config and last result."""

    def __init__(self, trial_id: str, status: str, last_result: dict, config: dict | None = None):
        self.trial_id, self.status, self.config = trial_id, status, config or {}
        self.run_metadata = SimpleNamespace(last_result=last_result)


def test_no_scheduler_stops_a_trial_of_a_seed_group_and_asha_compares_with_the_recipe_point_alone():
    asha = ray_scheduler("asha", {"grace_period": 1, "reduction_factor": 2}, 4)
    asha.set_search_properties(reported.METRIC, reported.MODE)
    # The recipe point (its own seed group), a repeat of it, and two proposals, all new.
    recipe, repeat = FakeTrial("r", Trial.RUNNING, {}, {SEED_GROUP: "r"}), FakeTrial("r1", Trial.RUNNING, {},
                                                                                      {SEED_GROUP: "r"})
    good, bad = FakeTrial("g", Trial.RUNNING, {}), FakeTrial("b", Trial.RUNNING, {})
    for trial in (recipe, repeat, good, bad):
        asha.on_trial_add(None, trial)

    def at_rung(trial, score):
        return asha.on_trial_result(None, trial, {reported.ITERATION: 1, reported.METRIC: score})

    assert at_rung(good, 0.9) == at_rung(recipe, 0.1) == at_rung(repeat, 0.05) == TrialScheduler.CONTINUE
    [(milestone, recorded)] = [(m, r) for m, r in asha._brackets[0]._rungs if m == 1]
    assert sorted(recorded) == ["g", "r"]  # the repeat is the same configuration again: not counted
    assert at_rung(bad, 0.2) == TrialScheduler.STOP  # below the better half of g and the recipe point
    assert at_rung(FakeTrial("r2", Trial.RUNNING, {}, {SEED_GROUP: "r"}), 0.0) == TrialScheduler.CONTINUE

    hyperband = ray_scheduler("hyperband", {"reduction_factor": 3}, 3)
    hyperband.set_search_properties(reported.METRIC, reported.MODE)
    pending = FakeTrial("r1", Trial.PENDING, {}, {SEED_GROUP: "r"})
    hyperband.on_trial_add(None, pending)
    assert pending not in hyperband._trial_info  # outside the brackets, which pause and halve
    assert hyperband.on_trial_result(None, pending, {reported.ITERATION: 1, reported.METRIC: 0.0}) == "CONTINUE"
    assert hyperband.choose_trial_to_run(SimpleNamespace(get_trials=lambda: [pending])) is pending
    hyperband.on_trial_complete(None, pending, {})  # nothing to clean up


def test_hyperband_forgets_restored_finished_trials_and_marks_the_paused_ones_it_stops_done():
    hyperband = ray_scheduler("hyperband", {"reduction_factor": 3}, 3)
    hyperband.set_search_properties(reported.METRIC, reported.MODE)
    finished = FakeTrial("a", Trial.TERMINATED, {reported.ITERATION: 3, reported.METRIC: 0.5})
    hyperband.on_trial_add(None, finished)  # restored with the experiment: its bracket must not wait for it
    bracket, _ = hyperband._trial_info[finished]
    assert finished not in bracket.current_trials()
    paused = FakeTrial("b", Trial.PAUSED, {})
    hyperband.on_trial_add(None, paused)  # new: it stays
    assert paused in hyperband._trial_info[paused][0].current_trials()
    paused.run_metadata.last_result = {reported.ITERATION: 3, reported.METRIC: 0.4}
    hyperband.on_trial_remove(None, paused)  # HyperBand stops it while paused: Ray records no result
    assert paused.run_metadata.last_result[DONE] is True


def test_optuna_is_told_of_a_trial_stopped_while_paused_with_its_last_result():
    searcher = TruthfulOptunaSearch(space=lambda trial: {"x": trial.suggest_float("x", 0, 1)},
                                    metric=reported.METRIC, mode=reported.MODE, max_iterations=3)
    for trial_id, epochs in (("halved", 1), ("kept", 3)):
        searcher.suggest(trial_id)
        for epoch in range(1, epochs + 1):
            searcher.on_trial_result(trial_id, {reported.METRIC: 0.1 * epoch, reported.SCORE: 0.2 * epoch,
                                                reported.ITERATION: epoch})
        searcher.on_trial_complete(trial_id)  # as Ray's stop_trial does for a paused trial
    halved, kept = searcher.study.trials
    assert halved.state == optuna.trial.TrialState.PRUNED and halved.intermediate_values == pytest.approx({1: 0.1})
    assert kept.state == optuna.trial.TrialState.COMPLETE and kept.value == pytest.approx(0.6)  # its score


def arguments(cached_dir, tmp_path, name: str, scheduler_flags: list[str]) -> list[str]:
    """tiny_search's flags (4 trials x 3 epochs on the tiniest data) with these scheduler flags."""
    command = tiny_search(cached_dir, tmp_path, name)[2:]
    at = command.index("--grace-period")
    return [*command[:at], *command[at + 2:], *scheduler_flags]


def test_the_command_line_chooses_the_scheduler_and_refuses_another_ones_flags(capsys, cached_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        run.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0 and all(f"{name}: {' '.join(entry.description.split())}" in text
                                         for name, entry in SCHEDULERS.items())
    plan = run.make_plan(run.parse_args(arguments(cached_dir, tmp_path, "hb", ["--scheduler", "hyperband"])))
    assert (plan.scheduler, plan.scheduler_settings) == ("hyperband", {"reduction_factor": 3})
    assert trial_space(plan)["train.checkpoint_epochs"] == [1]  # its milestone, where a trial may pause
    plan = run.make_plan(run.parse_args(arguments(cached_dir, tmp_path, "default", [])))
    assert (plan.scheduler, plan.scheduler_settings) == ("asha", {"grace_period": 3, "reduction_factor": 3})

    for flags, message in ((["--scheduler", "fifo", "--grace-period", "2"], "--grace-period is a setting of"
                            " --scheduler asha"),
                           (["--scheduler", "fifo", "--reduction-factor", "2"], "--reduction-factor is a setting of"
                            " --scheduler asha, hyperband"),
                           (["--scheduler", "hyperband", "--reduction-factor", "1"],
                            "--reduction-factor must be >= 2")):
        assert run.main(arguments(cached_dir, tmp_path, "bad", flags)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    with pytest.raises(SystemExit) as exit_:
        run.parse_args(["--scheduler", "nope"])
    assert exit_.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_resume_keeps_the_saved_scheduler_and_refuses_another(capsys, cached_dir, tmp_path):
    save_plan(run.make_plan(run.parse_args(arguments(cached_dir, tmp_path, "hb", ["--scheduler", "hyperband"]))))
    resume = ["--resume", "--name", "hb", "--storage", str(tmp_path)]
    assert run.make_plan(run.parse_args(resume)).scheduler == "hyperband"
    for flags in (["--scheduler", "asha"], ["--reduction-factor", "2"]):
        assert run.main([*resume, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: --resume continues hb with its own settings; drop {flags[0]}"
                       f" (see {tmp_path}/hb/{PLAN_FILE})")
    # The same name started again with another scheduler: the difference is named.
    assert run.main(arguments(cached_dir, tmp_path, "hb", ["--scheduler", "fifo"])) == 2
    assert "exists with other settings (scheduler: 'hyperband' there, 'fifo' here)" in capsys.readouterr().err


def test_a_plan_saved_before_the_registry_resumes_as_asha_with_its_settings(cached_dir, tmp_path):
    plan = run.make_plan(run.parse_args(arguments(cached_dir, tmp_path, "old", ["--grace-period", "2"])))
    save_plan(plan)
    path = report_dir(plan) / PLAN_FILE
    saved = json.loads(path.read_text())
    old = {key: value for key, value in saved.items() if key not in ("scheduler", "scheduler_settings")}
    path.write_text(json.dumps({**old, "grace_period": 2, "reduction_factor": 3}))  # as the old code wrote it
    assert load_plan(str(tmp_path), "old") == plan
    resumed = run.make_plan(run.parse_args(["--resume", "--name", "old", "--storage", str(tmp_path)]))
    assert (resumed.scheduler, resumed.scheduler_settings) == ("asha", {"grace_period": 2, "reduction_factor": 3})


# Per scheduler: its flags, the trials and epochs of its tiny search (the fewest that show it
# at work), and whether it must stop a trial. HyperBand with eta 2 over 2 epochs: its first
# bracket (2 trials) runs to the end (the first trial there waits paused for the second), its
# second (2 places) halves at epoch 1, keeping 1: of trials 3 and 4 one is stopped there.
REAL_SEARCHES = {
    "asha": (["--grace-period", "1", "--reduction-factor", "2"], 3, 2, False),
    "fifo": ([], 2, 2, False),
    "hyperband": (["--reduction-factor", "2"], 4, 2, True),
}


def test_every_scheduler_has_a_real_search():
    assert set(REAL_SEARCHES) == set(SCHEDULERS)


@pytest.mark.ray
@pytest.mark.parametrize("name", list(REAL_SEARCHES))
def test_a_tiny_real_search_under_each_scheduler(name, local_ray, cached_dir, tmp_path, monkeypatch):
    flags, trials, epochs, must_stop = REAL_SEARCHES[name]
    argv = arguments(cached_dir, tmp_path, name, ["--scheduler", name, *flags])
    argv[argv.index("--num-samples") + 1], argv[argv.index("--epochs") + 1] = str(trials), str(epochs)
    plan = run.make_plan(run.parse_args(argv))
    monkeypatch.setenv(STUDY_EXPORT_ENV, str(report_dir(plan) / STUDY_DB))  # as search.tuner.session does
    save_plan(plan)
    results = fit(build_tuner(plan))
    assert len(results) == trials and not results.errors
    scheduler = scheduler_of(plan)
    rows = leaderboard(results, epochs, param_names(plan.spaces, epochs), scheduler=scheduler)
    stopped = [row for row in rows if row.status != "completed"]
    assert all(row.status == scheduler.stopped(row.epochs) for row in stopped), [row.status for row in rows]
    assert {row.epochs for row in stopped} <= set(scheduler.milestones(plan.scheduler_settings, epochs))
    if name == "fifo":
        assert not stopped and all(row.epochs == epochs for row in rows)
    if must_stop:
        assert stopped
    # Optuna is told the truth: a stopped trial is PRUNED, a completed one COMPLETE with its score.
    states = sorted(trial.state for trial in load_study(report_dir(plan)).trials)
    assert states == sorted([optuna.trial.TrialState.COMPLETE] * (trials - len(stopped))
                            + [optuna.trial.TrialState.PRUNED] * len(stopped))



HYPERBAND_QUALITIES = [0.8, 0.9, 0.5, 0.1, 0.7]  # eta 3 over 3 epochs: brackets of 2 (no halving) and 3


@pytest.mark.ray
def test_a_resumed_hyperband_search_does_not_wait_for_the_trials_that_finished_before(local_ray, tmp_path):
    """Interrupted inside its second bracket and resumed: the restored finished trials leave their
    brackets, so the unfinished ones are not paused forever waiting for them, and every trial ends.
    (Ray's own HyperBandScheduler in its place never ends: killed after 150 s, 2026-12-07.)"""
    from tests.test_asha_resume import CtrlCAfter, epochs_run, known_scores

    def tuner(name: str, callbacks: tuple = ()) -> tune.Tuner:
        return tune.Tuner(known_scores, param_space={"quality": tune.grid_search(HYPERBAND_QUALITIES)},
                          tune_config=tune.TuneConfig(metric=reported.METRIC, mode=reported.MODE,
                                                      scheduler=ray_scheduler("hyperband", {"reduction_factor": 3}, 3),
                                                      max_concurrent_trials=1, reuse_actors=True),
                          run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0,
                                                    callbacks=list(callbacks)))

    before = epochs_run(tuner("cut", (CtrlCAfter(3),)).fit())
    assert sorted(before.values()).count(3) >= 2  # the first bracket's two trials ran to the end
    restored = tune.Tuner.restore(str(tmp_path / "cut"), known_scores, resume_unfinished=True)
    # as restore_tuner does
    restored._local_tuner._tune_config.scheduler = ray_scheduler("hyperband", {"reduction_factor": 3}, 3)
    results = restored.fit()
    assert len(results) == len(HYPERBAND_QUALITIES) and not results.errors
    assert all(result.metrics.get(DONE) for result in results), epochs_run(results)
