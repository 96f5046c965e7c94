"""What buffering a trial's step metrics saves over HTTP: `RunLog.log_step` against one `log_metric` call per value.

    python tests/benchmarks/step_logging.py [--steps 200] [--unbuffered-steps 25]

Starts a real `mlflow server` on 127.0.0.1 (SQLite store in a temporary folder), logs ``--steps`` steps of four
metrics to a trial run with the buffered ``log_step`` (sent by ``finish``: one log_batch, then the run's end), then
``--unbuffered-steps`` steps to another trial run with one ``MlflowClient.log_metric`` call per value, and prints
the time per buffered step, the flush, the time per unbuffered call and what unbuffered logging would cost for the
same steps. It stops with an error if a buffered step did not arrive.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

from pipeline.tracking.runs import Tracker  # noqa: E402
from tests.mlflow_server import start_mlflow_server, stop_mlflow_server  # noqa: E402

NAMES = ("loss", "ce", "area", "smooth")


def measure(tracker: Tracker, steps: int, unbuffered_steps: int) -> None:
    run = tracker.start_trial(0, {})
    started = time.perf_counter()
    for step in range(steps):
        run.log_step(step, {name: 1.0 / (step + 1) for name in NAMES})
    buffered = time.perf_counter() - started
    run.finish()
    finished = time.perf_counter() - started - buffered

    plain = tracker.start_trial(1, {})
    started = time.perf_counter()
    for step in range(unbuffered_steps):
        for name in NAMES:
            tracker.client.log_metric(plain.run_id, name, 1.0, step=step)
    per_call = (time.perf_counter() - started) / (unbuffered_steps * len(NAMES))
    plain.finish()

    print(
        f"{steps} steps x {len(NAMES)} metrics over HTTP: "
        f"log_step {buffered / steps * 1e6:.0f} us/step, "
        f"finish (one log_batch + end) {finished * 1000:.0f} ms; unbuffered log_metric "
        f"{per_call * 1000:.1f} ms/call -> ~{per_call * steps * len(NAMES):.1f} s for the same"
    )
    for name in NAMES:
        arrived = len(tracker.client.get_metric_history(run.run_id, name))
        if arrived != steps:
            raise SystemExit(f"error: {arrived} of {steps} buffered steps of {name!r} arrived")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="buffered steps (default 200)")
    parser.add_argument("--unbuffered-steps", type=int, default=25, help="steps logged call by call (default 25)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        uri, server = start_mlflow_server(Path(folder))
        try:
            tracker = Tracker(uri, experiment="step-logging")
            tracker.start_search("step-logging", {"steps": args.steps})
            measure(tracker, args.steps, args.unbuffered_steps)
            tracker.end_search()
        finally:
            stop_mlflow_server(server)


if __name__ == "__main__":
    main()
