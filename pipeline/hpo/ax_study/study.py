"""The persistent Ax study of one search: ask/tell trials, atomic JSON snapshots, resume, the final choice
(`choice`) over the trials' records (`records`).

The whole state lives in ``<directory>/ax_experiment.json`` (Ax's own snapshot: experiment, data,
generation strategy, trial failure reasons) and is rewritten atomically after every change, so a
killed search resumes where it stopped. Nothing here knows about training, torch models or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.atomic import replace_atomically
from pipeline.errors import UserError
from pipeline.hpo.ax_study import ax_seam
from pipeline.hpo.ax_study.choice import Choice, choose, choose_trial, model_front
from pipeline.hpo.ax_study.records import TrialRecord, pareto_front, trade_off
from pipeline.hpo.ax_study.space import SearchSpace
from pipeline.hpo.ax_study.trial_state import TrialState

if TYPE_CHECKING:
    from ax.api import Client
    from ax.core.base_trial import BaseTrial
    from ax.core.experiment import Experiment

SNAPSHOT_NAME = "ax_experiment.json"
# Torch threads while Ax fits the GP and optimises the acquisition function. Its tensors are tiny (tens of
# trials), so intra-op parallelism gains nothing, and on a busy 2-core machine two threads that wait for
# each other made a BoTorch generation 2-4x slower in CPU time (tests/benchmarks/generation.py).
GENERATION_THREADS = 1
INTERRUPTED = "interrupted: the process stopped while this trial was running"
_EXTRA_METRICS = "extra_metrics"  # run-metadata key for metrics that Ax does not model
_CHECKPOINTS = "checkpoints"  # run-metadata key for the scores during training, by percentage
_GENERATOR_NAMES = {"Sobol": "Sobol", "MBM": "BoTorch", "Uniform": "uniform"}


class AwaitingData(Exception):
    """Ax wants results before it generates more points: its Sobol budget is spent on running trials
    and too few have completed. Wait for a running trial, then ask again."""


class Study:
    """An Ax ``Client`` for one search, saved to ``directory/ax_experiment.json`` after every change."""

    def __init__(self, client: Client, space: SearchSpace, path: Path) -> None:
        self._client = client
        self.space = space
        self.path = path
        self.read_only = False

    @classmethod
    def open(
        cls, directory: Path, space: SearchSpace, seed: int, thresholds: Mapping[str, float] | None = None
    ) -> Study:
        """Start a new search in ``directory`` or resume the one saved there.

        ``thresholds``: the objective thresholds (reference point) a new search is configured with; a
        resumed one must have been started with the same.

        On resume, trials that were running when the last process died are marked failed with
        the reason `INTERRUPTED`, so none is lost or run twice. ``seed`` seeds both the Sobol
        initialisation (new searches) and BoTorch's candidate generation (the snapshot does not
        store the client's seed, so it is passed again on every open).
        """
        from ax.api import Client

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / SNAPSHOT_NAME
        if not path.exists():
            client = Client(random_seed=seed)
            space.configure(client, seed=seed, thresholds=thresholds)
            study = cls(client, space, path)
            study._save()
            return study
        study = cls(_load_client(path, space, thresholds), space, path)
        ax_seam.set_random_seed(study._client, seed)
        running = [record.index for record in study.records() if record.status is TrialState.RUNNING]
        for index in running:
            study._client.mark_trial_failed(index, failed_reason=INTERRUPTED)
        if running:
            study._save()
        return study

    @classmethod
    def read(cls, directory: Path, space: SearchSpace) -> Study:
        """Load a saved search without changing it (safe while the search still runs); never saves."""
        path = Path(directory) / SNAPSHOT_NAME
        if not path.exists():
            raise UserError(f"{path} does not exist: no search was started in {directory}")
        study = cls(_load_client(path, space), space, path)
        study.read_only = True
        return study

    @property
    def client(self) -> Client:
        """The Ax client, for Ax analyses and plots."""
        return self._client

    def next_trial(self) -> tuple[int, dict[str, Any]]:
        """Generate one trial, mark it running and save; returns ``(index, parameters)``.

        The trials still running are Ax's pending points, so parallel trials get distinct points;
        raises `AwaitingData` when Ax needs some of them to complete first.
        """
        from ax.exceptions.core import DataRequiredError

        ax_seam.no_botorch_kernel_compile()
        with _torch_threads(GENERATION_THREADS):
            try:
                trials = self._client.get_next_trials(max_trials=1)
            except DataRequiredError as error:
                raise AwaitingData(str(error)) from None
        if not trials:
            raise RuntimeError("Ax generated no trial; finish or fail the running trials first")
        ((index, parameters),) = trials.items()
        self._save()
        return index, dict(parameters)

    def complete(
        self, index: int, metrics: Mapping[str, float], checkpoints: Mapping[int, Mapping[str, float]] | None = None
    ) -> bool:
        """Record a finished trial's metrics (and its ``checkpoints``' scores) and save; returns whether the trial
        was completed.

        Only the objectives go to Ax's model; the finite extras show up in `records` (`keep_in_metadata`). A trial
        whose objective is NaN or infinite (a diverged run) is marked failed instead.
        """
        split = self._split(index, metrics, checkpoints)
        if split is None:
            return False
        self._client.complete_trial(index, raw_data=split)
        self._save()
        return True

    def stop_early(
        self, index: int, metrics: Mapping[str, float], checkpoints: Mapping[int, Mapping[str, float]], reason: str
    ) -> bool:
        """Record a trial stopped at its last checkpoint: its scores there become its (partial) values in Ax, at
        that percentage as the progression, and the trial is EARLY_STOPPED with ``reason``; saves. Ax fits an
        early-stopped trial's last values like a completed trial's, so the model learns that its region is poor.
        Returns False when the trial was marked failed instead (a non-finite objective)."""
        split = self._split(index, metrics, checkpoints)
        if split is None:
            return False
        self._client.attach_data(index, raw_data=split, progression=max(checkpoints))
        # Client.mark_trial_early_stopped takes no reason; the trial's own method keeps one in the snapshot.
        ax_seam.experiment(self._client).trials[index].mark_early_stopped(reason=reason)
        self._save()
        return True

    def _split(
        self, index: int, metrics: Mapping[str, float], checkpoints: Mapping[int, Mapping[str, float]] | None
    ) -> dict[str, float] | None:
        """The objectives for Ax, the rest kept in the trial's run metadata (`keep_in_metadata`); None when a
        non-finite objective failed the trial."""
        objectives, reason = objective_values(self.space, index, metrics)
        if reason is not None:
            self.fail(index, reason)
            return None
        keep_in_metadata(ax_seam.experiment(self._client).trials[index], self.space, metrics, checkpoints)
        return objectives

    def fail(self, index: int, reason: str) -> None:
        """Mark a trial failed with a reason (kept in the snapshot) and save; the search goes on."""
        self._client.mark_trial_failed(index, failed_reason=reason)
        self._save()

    def records(self) -> list[TrialRecord]:
        """Every trial in index order, with its observed metrics."""
        return trial_records(ax_seam.experiment(self._client))

    @property
    def finished_count(self) -> int:
        """Completed and early-stopped trials: what ``--trials`` counts."""
        return sum(record.status.finished for record in self.records())

    def pareto(self) -> list[TrialRecord]:
        """The observed non-dominated completed trials under the space's objective directions."""
        return pareto_front(self.records(), self.space.objective_signs)

    def select(self, trial: int | None = None) -> Choice:
        """The final head's trial: the completed trial named (``--select``), else by the space's ``choice`` rule
        (`choose`), with its LeRF − MoRF as observed and as Ax's model predicts it."""
        records, signs = self.records(), self.space.objective_signs
        predicted, note = self.predicted_trade_offs(records)
        if trial is not None:
            record = choose_trial(records, signs, trial)
            return Choice(record, "selected", trade_off(record, signs), predicted.get(record.index), note)
        return choose(records, signs, self.space.choice, predicted, note)

    def predicted_trade_offs(self, records: Sequence[TrialRecord]) -> tuple[dict[int, float], str | None]:
        """Trial index -> LeRF − MoRF as Ax's model predicts it, for the completed ``records`` on the model-predicted
        Pareto front (`model_front`); empty, with the reason, when no model could be fit."""
        completed = [record for record in records if record.status is TrialState.COMPLETED]
        if len(completed) < 2:
            return {}, "no model prediction from fewer than 2 completed trials"
        try:
            with _torch_threads(GENERATION_THREADS):
                predictions = ax_seam.model_predictions(self._client, [record.parameters for record in completed])
        except Exception as error:  # a model that fails to fit
            return {}, f"no model prediction ({type(error).__name__}: {str(error).splitlines()[0][:160]})"
        return model_front(
            {record.index: prediction for record, prediction in zip(completed, predictions)}, self.space.objective_signs
        ), None

    @property
    def thresholds(self) -> dict[str, float]:
        """The objective thresholds (Ax's reference point) the search was configured with."""
        config = ax_seam.experiment(self._client).optimization_config
        return {threshold.metric_names[0]: threshold.bound for threshold in getattr(config, "objective_thresholds", [])}

    def _save(self) -> None:
        """Rewrite the snapshot atomically (`replace_atomically`)."""
        if self.read_only:
            raise RuntimeError("this study was opened with Study.read and cannot change")
        replace_atomically(self.path, lambda temporary: self._client.save_to_json_file(str(temporary)))


def _load_client(path: Path, space: SearchSpace, thresholds: Mapping[str, float] | None = None) -> Client:
    """The Ax client saved at ``path``, checked against the search space (and thresholds) of this run."""
    from ax.api import Client

    try:
        client = Client.load_from_json_file(str(path))
    except (ValueError, KeyError) as error:
        raise UserError(f"{path} is not a readable Ax snapshot ({error}); move it away or pass a new --name") from None
    _check_same_space(client, space, path, thresholds)
    return client


def objective_values(
    space: SearchSpace, index: int, metrics: Mapping[str, float]
) -> tuple[dict[str, float], str | None]:
    """Trial ``index``'s objectives as floats, and the reason to fail it when one is NaN or infinite (a diverged
    run), else None. Raises ValueError when an objective is missing."""
    values = {name: float(metrics[name]) for name in space.objective_names if name in metrics}
    missing = [name for name in space.objective_names if name not in values]
    if missing:
        raise ValueError(f"trial {index}: the metrics {sorted(metrics)} lack the objectives {missing}")
    bad = [name for name in space.objective_names if not math.isfinite(values[name])]
    if bad:
        return values, "non-finite objective: " + ", ".join(f"{name} = {values[name]}" for name in bad)
    return values, None


def keep_in_metadata(
    trial: BaseTrial,
    space: SearchSpace,
    metrics: Mapping[str, float],
    checkpoints: Mapping[int, Mapping[str, float]] | None,
) -> None:
    """Keep a trial's finite extra metrics and its checkpoint scores in its run metadata (read by `trial_records`):
    only the objectives go to Ax's model, each extra metric would be one more GP output to fit."""
    extras = {
        name: float(value)
        for name, value in metrics.items()
        if name not in space.objectives and math.isfinite(float(value))
    }
    stored = {str(percentage): dict(scores) for percentage, scores in (checkpoints or {}).items()}
    trial.update_run_metadata({_EXTRA_METRICS: extras, _CHECKPOINTS: stored})


def trial_records(experiment: Experiment) -> list[TrialRecord]:
    """Every trial of an Ax experiment in index order, with its observed metrics and the extras kept beside them."""
    metrics: dict[int, dict[str, float]] = {}
    for row in experiment.lookup_data().df.itertuples(index=False):
        metrics.setdefault(int(row.trial_index), {})[str(row.metric_name)] = float(row.mean)
    from ax.core.trial import Trial

    records = []
    for _, trial in sorted(experiment.trials.items()):
        assert isinstance(trial, Trial) and trial.arm is not None  # the Client's trials: one arm each
        records.append(
            TrialRecord(
                index=trial.index,
                status=TrialState.of_ax(trial.status),
                parameters=dict(trial.arm.parameters),
                metrics={**trial.run_metadata.get(_EXTRA_METRICS, {}), **metrics.get(trial.index, {})},
                reason=trial.status_reason,
                generator=_generator_name(trial.generator_run),
                checkpoints={
                    int(percentage): scores for percentage, scores in trial.run_metadata.get(_CHECKPOINTS, {}).items()
                },
            )
        )
    return records


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, then restore the previous number."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _generator_name(generator_run: Any) -> str:
    node = ax_seam.generation_node_name(generator_run)
    if node is None:
        return "manual"
    return _GENERATOR_NAMES.get(node, node or "manual")


def _check_same_space(
    client: Client, space: SearchSpace, path: Path, thresholds: Mapping[str, float] | None = None
) -> None:
    """Raise a `UserError` when the saved search used other parameters, constraints or objectives, or
    (when ``thresholds`` is given) other objective thresholds."""
    from ax.api import Client

    expected = Client()
    space.configure(expected, thresholds=thresholds)
    saved, wanted = ax_seam.experiment(client), ax_seam.experiment(expected)
    differences = []
    for name in dict.fromkeys([*saved.search_space.parameters, *wanted.search_space.parameters]):
        before, after = saved.search_space.parameters.get(name), wanted.search_space.parameters.get(name)
        if before != after:
            differences.append(f"saved {before!r}, now {after!r}")
    if saved.search_space.parameter_constraints != wanted.search_space.parameter_constraints:
        differences.append(
            f"saved constraints {saved.search_space.parameter_constraints}, "
            f"now {wanted.search_space.parameter_constraints}"
        )
    assert wanted.optimization_config is not None  # space.configure set the objectives
    saved_objective = saved.optimization_config.objective if saved.optimization_config is not None else None
    if saved_objective != wanted.optimization_config.objective:
        differences.append(f"saved objectives {saved_objective!r}, now {wanted.optimization_config.objective!r}")
    saved_thresholds, wanted_thresholds = (
        getattr(c.optimization_config, "objective_thresholds", []) for c in (saved, wanted)
    )
    if thresholds is not None and saved_thresholds != wanted_thresholds:
        differences.append(f"saved objective thresholds {saved_thresholds!r}, now {wanted_thresholds!r}")
    if differences:
        raise UserError(
            f"{path} holds a search with a different search space ({'; '.join(differences)}); resume it with "
            "the search space it was started with, or pass a new --name to start a fresh search"
        )


def objective_thresholds(references: Mapping[str, Mapping[str, float]], signs: Mapping[str, float]) -> dict[str, float]:
    """The reference point: per objective, the worst value any reference map scored (``signs``: +1 maximise).

    A trial adds hypervolume only where it beats every trivial map on every objective."""
    return {
        name: (min if sign > 0 else max)(scores[name] for scores in references.values())
        for name, sign in signs.items()
        if all(name in scores for scores in references.values())
    }
