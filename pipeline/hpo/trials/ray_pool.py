"""Trials on a Ray cluster: one long-lived worker (a Ray actor) per slot, fed by the search process.

The search process starts a local Ray instance, or joins a running cluster (``--ray-address``). Each
slot's worker loads the frozen models, the data and the validation set once and then runs one trial
at a time (`pipeline.hpo.trials.trial_worker.TrialWorker`). A slot is one GPU (``--gpus-per-trial``: a fraction packs
several trials on one GPU) or, on a cluster without GPUs, an equal share of the CPU cores. Ray never
retries anything: a worker that dies fails its trial and is replaced; the search decides what next.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import AuthenticationError, RayError, RayTaskError

import pipeline
from pipeline import config as configs
from pipeline import quiet
from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.hpo.ax_study.early_stopping import StoppingRule
from pipeline.hpo.trials.pools import Finished, StepLog
from pipeline.hpo.trials.trial_worker import Trainer, TrialResult, TrialWorker, failure_reason

DEFAULT_PORTS = {"ray": 10001, "gcs": 6379}
CONNECT_TIMEOUT_S = 5.0
STALL_NOTICE_S = 60.0  # say so when no worker could start for this long


@dataclass(frozen=True)
class SlotSize:
    """The Ray resources of one slot's worker and its torch threads."""

    gpus: float
    cpus: float
    threads: int

    def __str__(self) -> str:
        gpus = f"{self.gpus:g} GPU + " if self.gpus else ""
        return f"{gpus}{self.cpus:g} CPU, {self.threads} torch thread{'s' * (self.threads > 1)}"


def slot_size(nodes: Sequence[Mapping[str, float]], parallel: int, gpus_per_trial: float | None) -> SlotSize:
    """Size a slot for ``parallel`` trials on nodes with these resources (Ray's "CPU"/"GPU" counts).

    Without ``gpus_per_trial`` a slot is one GPU when the cluster has GPUs, else CPU cores. A GPU slot
    gets the CPU share that goes with its GPU share on the leanest node; a CPU slot gets
    ``total cores / parallel`` (whole cores when there are enough). Asking for GPUs that no node has
    raises a `UserError`: Ray would leave such a worker waiting forever.
    """
    gpu_nodes = [node for node in nodes if node.get("GPU", 0) > 0]
    if gpus_per_trial is None:
        gpus_per_trial = 1.0 if gpu_nodes else 0.0
    if gpus_per_trial > 0:
        if not gpu_nodes:
            cores = sum(node.get("CPU", 0) for node in nodes)
            raise UserError(
                f"--gpus-per-trial {gpus_per_trial:g}: the Ray cluster has no GPUs ({cores:g} CPU cores "
                "in all); leave out --gpus-per-trial to run each trial on CPU cores"
            )
        fitting = [node for node in gpu_nodes if node["GPU"] >= gpus_per_trial]
        if not fitting:
            most = max(node["GPU"] for node in gpu_nodes)
            raise UserError(
                f"--gpus-per-trial {gpus_per_trial:g}: no node of the Ray cluster has that many GPUs "
                f"(the most on one node is {most:g}); ask for at most {most:g}"
            )
        cpus = min(node.get("CPU", 0) / node["GPU"] for node in fitting) * gpus_per_trial
        return SlotSize(gpus_per_trial, cpus, max(1, math.floor(cpus)))
    share = sum(node.get("CPU", 0) for node in nodes) / parallel
    cpus = min(math.floor(share) if share >= 1 else share, max(node.get("CPU", 0) for node in nodes))
    return SlotSize(0.0, cpus, max(1, math.floor(cpus)))


def slots_at_once(nodes: Sequence[Mapping[str, float]], size: SlotSize) -> float:
    """How many slots of ``size`` the nodes hold at the same time (each node fills whole slots); infinitely many
    when a slot asks for neither CPUs nor GPUs."""

    def fitting(node: Mapping[str, float]) -> float:
        by_cpu = math.floor(node.get("CPU", 0) / size.cpus + 1e-9) if size.cpus else math.inf
        by_gpu = math.floor(node.get("GPU", 0) / size.gpus + 1e-9) if size.gpus else math.inf
        return min(by_cpu, by_gpu)

    return sum(fitting(node) for node in nodes)


def crowding_note(nodes: Sequence[Mapping[str, float]], parallel: int, size: SlotSize) -> str | None:
    """A line saying that fewer than ``parallel`` GPU slots fit at once, and how to pack more; None if all fit."""
    if not size.gpus:
        return None
    fit = slots_at_once(nodes, size)
    if fit >= parallel:
        return None
    gpus = sum(node.get("GPU", 0) for node in nodes)
    return (
        f"note: --parallel {parallel} with {size.gpus:g} GPU per trial: the cluster's {gpus:g} GPU(s) run "
        f"{fit} trial(s) at a time, the other workers wait; --gpus-per-trial {gpus / parallel:g} shares the "
        "GPUs between all of them (if the models fit in memory)"
    )


def check_reachable(address: str) -> None:
    """Fail fast on an address nobody answers at (Ray itself retries for minutes)."""
    if address == "auto":
        return
    kind = "ray" if address.startswith("ray://") else "gcs"
    host, _, port = address.removeprefix("ray://").partition(":")
    try:
        with socket.create_connection((host, int(port or DEFAULT_PORTS[kind])), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError) as error:
        raise UserError(
            f"--ray-address {address}: nothing answers there ({error}); use the address that "
            "`ray start --head` printed, 'auto' on a node of the cluster, or leave out "
            "--ray-address to start Ray on this machine"
        ) from None


def connect(address: str | None) -> bool:
    """Start a local Ray instance (``address`` None) or join a running cluster, shipping this
    `pipeline` package to its workers. Returns False when this process was already connected."""
    if ray.is_initialized():
        return False
    if address is None:
        # A local Ray turns on token authentication by default and logs a warning that it did; the protection
        # stays, the line goes.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
        return True
    check_reachable(address)
    try:
        ray.init(
            address=address,
            logging_level=logging.WARNING,
            runtime_env={"py_modules": [str(Path(pipeline.__file__).parent)]},
        )
    except (ConnectionError, ValueError) as error:
        if isinstance(error.__cause__, AuthenticationError):
            raise UserError(
                f"--ray-address {address}: the cluster refused this process's token; set RAY_AUTH_MODE"
                "=token and give the cluster's token (RAY_AUTH_TOKEN or ~/.ray/auth_token)"
            ) from None
        raise UserError(f"--ray-address {address}: {error}") from None
    return True


class TrialActor:
    """One slot's worker process (a Ray actor): loads everything once, then runs trials one at a time."""

    def __init__(self, base: dict[str, Any], trainer: Trainer, threads: int, tracking_uri: str | None) -> None:
        import torch

        quiet.quiet_libraries()
        if not ray.get_runtime_context().get_accelerator_ids().get("GPU"):
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU slot keeps off the GPUs its process inherited
        torch.set_num_threads(threads)
        self.tracking_uri = tracking_uri
        self.worker = TrialWorker.load(configs.from_dict(base), trainer)

    def where(self) -> dict[str, str]:
        """Host, pid, device and CUDA_VISIBLE_DEVICES of this worker (its answer also means "ready")."""
        return self.worker.where

    def run(
        self, index: int, config: ExperimentConfig, run_id: str | None, rule: StoppingRule | None = None
    ) -> TrialResult:
        """Run one trial, stopped where ``rule`` says; with a ``run_id`` (tracking server) its steps go straight to
        that MLflow run."""
        if run_id is None:
            return self.worker.run(index, config, rule=rule)
        from mlflow.tracking import MlflowClient

        from pipeline.tracking.runs import RunLog

        run = RunLog(MlflowClient(self.tracking_uri), run_id)
        try:
            return self.worker.run(index, config, on_step=run.log_step, rule=rule)
        finally:
            run.flush()


@dataclass
class _Slot:
    number: int
    actor: Any  # ray.actor.ActorHandle
    ready: Any  # the ObjectRef of its first `where` call, until the worker has loaded
    where: dict[str, str] | None = None
    trial: int | None = None


class RayPool:
    """``parallel`` Ray workers; `submit` hands a trial to a free one, `wait` collects what finished."""

    def __init__(
        self,
        base: dict[str, Any],
        trainer: Trainer,
        parallel: int,
        gpus_per_trial: float | None,
        address: str | None,
        tracking_uri: str | None,
    ) -> None:
        """``tracking_uri``: a tracking server the workers log steps to directly; None keeps them off MLflow."""
        self._owns_connection = connect(address)
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        try:
            self.size = slot_size(nodes, parallel, gpus_per_trial)
        except UserError:
            self._disconnect()
            raise
        self._actor_class = ray.remote(TrialActor).options(
            num_cpus=self.size.cpus, num_gpus=self.size.gpus, max_restarts=0, max_task_retries=0
        )
        self._arguments = (base, trainer, self.size.threads, tracking_uri)
        self.direct_logging = tracking_uri is not None
        self.slots = [self._start(number) for number in range(parallel)]
        self._running: dict[Any, _Slot] = {}
        print(
            f"Ray: {parallel} workers of {self.size} each, on {len(nodes)} node{'s' * (len(nodes) > 1)}; "
            "each loads the models and data once",
            flush=True,
        )
        if note := crowding_note(nodes, parallel, self.size):
            print(note, flush=True)

    def _start(self, number: int) -> _Slot:
        actor: Any = self._actor_class.remote(*self._arguments)  # ray.actor.ActorHandle (its methods' .remote)
        return _Slot(number, actor, actor.where.remote())

    def free_slots(self) -> int:
        return sum(slot.where is not None and slot.trial is None for slot in self.slots)

    def submit(
        self, index: int, config: ExperimentConfig, steps: StepLog | None, rule: StoppingRule | None = None
    ) -> dict[str, str]:
        slot = next(slot for slot in self.slots if slot.where is not None and slot.trial is None)
        assert slot.where is not None  # (chosen for it)
        reference = slot.actor.run.remote(index, config, steps.run_id if self.direct_logging and steps else None, rule)
        slot.trial = index
        self._running[reference] = slot
        return {"slot": str(slot.number), **slot.where}

    def wait(self) -> list[Finished]:
        loading = {slot.ready: slot for slot in self.slots if slot.ready is not None}
        if not self._running and not loading:
            raise RuntimeError("nothing to wait for: no trial is running and every worker is ready")
        done, _ = ray.wait([*self._running, *loading], num_returns=1, timeout=STALL_NOTICE_S)
        if not done and not self._running:
            free = ray.available_resources()
            print(
                f"waiting for Ray resources: {len(loading)} workers of {self.size} each have not started; "
                f"the cluster has {free.get('GPU', 0):g} GPU and {free.get('CPU', 0):g} CPU free",
                flush=True,
            )
        finished = []
        for reference in done:
            if reference in loading:
                self._check_loaded(loading[reference])
            else:
                finished.append(self._collect(reference))
        return finished

    def _check_loaded(self, slot: _Slot) -> None:
        try:
            slot.where = ray.get(slot.ready)
        except RayError as error:
            last = [line for line in str(error).splitlines() if line.strip()][-1].strip()
            raise UserError(f"a Ray worker could not load the models and data: {last}") from None
        slot.ready = None

    def _collect(self, reference: Any) -> Finished:
        slot = self._running.pop(reference)
        index, slot.trial = slot.trial, None
        assert index is not None  # submit set it
        try:
            return Finished(index, result=ray.get(reference))
        except RayTaskError as error:  # the trial raised: the worker is fine
            return Finished(index, failure=failure_reason(error.cause or error))
        except RayError as error:  # the worker died (killed, out of memory, node lost): replace it
            self.slots[slot.number] = self._start(slot.number)
            where = slot.where or {}
            return Finished(
                index,
                failure=f"worker {slot.number} (pid {where.get('pid')} on {where.get('host')}) "
                f"died: {_death_summary(error)}",
            )

    def close(self) -> None:
        """Stop the workers (a trial still running is abandoned) and leave Ray if we joined it."""
        for slot in self.slots:
            ray.kill(slot.actor)
        self._running.clear()
        self._disconnect()

    def _disconnect(self) -> None:
        if self._owns_connection:
            ray.shutdown()


def _death_summary(error: RayError) -> str:
    """Ray's long death notice cut to the exit type and first sentence of its detail."""
    text = str(error)
    found = re.search(r"Worker exit type: (\S+) Worker exit detail: (.*?\.)(?:\s|$)", text)
    if found:
        return f"{found.group(1)}, {found.group(2)}"
    return text.strip().splitlines()[0]
