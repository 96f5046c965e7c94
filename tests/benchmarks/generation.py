"""Benchmark Ax trial generation for the P-TAME search space (no training).

Builds the study of ``search_spaces/ptame.yaml`` in a temporary directory, completes the Sobol
initialisation and then N BoTorch trials with a cheap synthetic two-objective function, and prints
for every generation the wall-clock and CPU seconds (``time.process_time``: this process, all
threads) of ``Study.next_trial`` and the node that generated the trial.

    python tests/benchmarks/generation.py [--botorch 10] [--seed 12345] [--profile out.prof]
                                          [--ax-defaults] [--threads N] [--botorch-kernel]

``--profile`` writes a cProfile of the last BoTorch generation (read it with ``python -m pstats``).
``--ax-defaults`` runs Ax's unmodified strategy and ``--threads 2`` overrides
`pipeline.hpo.ax_study.study.GENERATION_THREADS` (torch threads during generation; the project uses 1): both
together reproduce the original setup. ``--botorch-kernel`` lets BoTorch compile (once per machine and environment,
into ``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) and use its fused qLogEHVI C++ kernel, which
the project skips (`pipeline.hpo.ax_study.ax_seam.no_botorch_kernel_compile`).
It also prints the hypervolume of the observed points, a rough check of optimisation quality.
"""

from __future__ import annotations

import argparse
import cProfile
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pipeline.hpo.ax_study.study as study_module  # noqa: E402
from pipeline.hpo.ax_study import ax_seam
from pipeline.hpo.ax_study.space import SearchSpace, load_search_space
from pipeline.hpo.ax_study.study import Study


def synthetic(parameters: dict) -> dict[str, float]:
    """A smooth, conflicting stand-in for ROAD: MoRF best near λ1 = 0.3, LeRF grows with λ2 and λ_area."""
    lambda1, lambda2, area = parameters["lambda1"], parameters["lambda2"], parameters["lambda_area"]
    morf = (lambda1 - 0.3) ** 2 + 0.1 * lambda2 + 0.05 * (area - 1.0) ** 2
    lerf = 0.5 * lambda2 + 0.1 * area - 0.2 * (lambda1 - 0.5) ** 2
    return {"road_morf_auc": morf, "road_lerf_auc": lerf}


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float] = (1.0, -0.1)) -> float:
    """Area dominated by ``(morf, lerf)`` points (minimise MoRF, maximise LeRF) above ``reference``."""
    area, best_lerf = 0.0, reference[1]
    for morf, lerf in sorted(points):  # by increasing MoRF: each point adds the LeRF it gains
        if morf < reference[0] and lerf > best_lerf:
            area += (reference[0] - morf) * (lerf - best_lerf)
            best_lerf = lerf
    return area


def _ax_default_strategy(space: SearchSpace, seed: int):
    """What ``Client.configure_generation_strategy`` builds for the space, without the project's changes."""
    from ax.api.utils.generation_strategy_dispatch import choose_generation_strategy
    from ax.api.utils.structs import GenerationStrategyDispatchStruct

    struct = GenerationStrategyDispatchStruct(
        method=space.method,
        initialization_budget=space.initialization_trials,
        initialize_with_center=False,
        initialization_random_seed=seed,
    )
    return choose_generation_strategy(struct)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--botorch", type=int, default=10, help="BoTorch trials after the Sobol ones")
    parser.add_argument("--seed", type=int, default=None, help="default: the space's seed")
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "ptame.yaml")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the last BoTorch generation")
    parser.add_argument(
        "--ax-defaults",
        action="store_true",
        help="baseline: Ax's unmodified Sobol+MBM strategy (configure_generation_strategy)",
    )
    parser.add_argument("--threads", type=int, default=None, help="override study.GENERATION_THREADS")
    parser.add_argument(
        "--botorch-kernel", action="store_true", help="BoTorch's fused C++ kernel (compiled on first use)"
    )
    args = parser.parse_args()

    import torch
    from botorch.acquisition.multi_objective import logei

    if args.botorch_kernel:
        ax_seam.no_botorch_kernel_compile = lambda: None

    if args.threads:
        study_module.GENERATION_THREADS = args.threads

    if args.ax_defaults:
        SearchSpace.generation_strategy = _ax_default_strategy
    space = load_search_space(args.space)
    seed = space.seed if args.seed is None else args.seed
    total = space.initialization_trials + args.botorch
    strategy = "Ax defaults" if args.ax_defaults else "project"
    threads = f"{study_module.GENERATION_THREADS} (of {torch.get_num_threads()})"
    kernel = "BoTorch's fused C++" if args.botorch_kernel else "PyTorch (no compile)"
    print(f"strategy: {strategy}, torch threads while generating: {threads}, trials: {total}, seed: {seed}")
    print(f"qLogEHVI kernel: {kernel}")
    print(f"{'trial':>5}  {'generator':<9}  {'wall s':>7}  {'cpu s':>7}  parameters")
    timings: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as directory:
        study = Study.open(Path(directory), space, seed=seed)
        for number in range(total):
            profiler = cProfile.Profile() if args.profile and number == total - 1 else None
            wall, cpu = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            index, parameters = study.next_trial()
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.profile)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert space.contains(parameters), parameters
            study.complete(index, synthetic(parameters))
            generator = study.records()[index].generator
            timings.setdefault(generator, []).append((wall, cpu))
            shown = ", ".join(f"{name}={value:.4g}" for name, value in parameters.items())
            print(f"{index:>5}  {generator:<9}  {wall:>7.2f}  {cpu:>7.2f}  {shown}", flush=True)
        front = study.pareto()
        points = [(r.metrics["road_morf_auc"], r.metrics["road_lerf_auc"]) for r in study.records()]
    for generator, values in timings.items():
        walls, cpus = [w for w, _ in values], [c for _, c in values]
        print(
            f"{generator}: {len(values)} generations, wall mean {statistics.mean(walls):.2f} s "
            f"(max {max(walls):.2f}), cpu mean {statistics.mean(cpus):.2f} s (max {max(cpus):.2f})"
        )
    print(f"Pareto front: {len(front)} trials: {sorted(record.index for record in front)}")
    print(f"fused C++ kernel loaded: {logei._C is not None}")
    initial = hypervolume(points[: space.initialization_trials])
    print(f"hypervolume (MoRF <= 1, LeRF >= -0.1): after Sobol {initial:.4f}, after all {hypervolume(points):.4f}")


if __name__ == "__main__":
    main()
