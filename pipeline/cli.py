"""Shared command-line plumbing: the common arguments, and user errors as one line on stderr with exit code 2.
Light to import (no torch, Ax or MLflow), so a command checks its arguments before it loads anything heavy."""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pipeline import quiet
from pipeline.config import DEVICE_HELP, Imputer
from pipeline.errors import UserError

if TYPE_CHECKING:
    from pipeline.models.coverage import ClassCoverage
    from pipeline.tracking.runs import RunLog


class RenamedOption(argparse.Action):
    """Stores the value like ``store``; the option's last name is its old one, which keeps working for one release
    and prints a one-line notice naming the new one."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if option_string == self.option_strings[-1]:
            print(
                f"note: {option_string} is renamed {self.option_strings[0]}; the old name goes in the next release",
                file=sys.stderr,
            )
        setattr(namespace, self.dest, values)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--experiment FILE`` / ``--config FILE`` and repeatable ``--set key=value``."""
    parser.add_argument(
        "--experiment",
        "--config",
        dest="experiment",
        metavar="FILE",
        help="experiment YAML: a file (e.g. a resolved config.yaml) or a packaged experiment "
        "(experiments/demo.yaml or demo, vgg16, paper/tab1_vgg16, ...)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set loss.lambda1=0.3 (repeatable)",
    )


def user_message(error: UserError) -> str:
    """The error's message; one raised in a DataLoader worker arrives wrapped in the worker's traceback, whose
    last line is the original ``pipeline.errors.UserError: <message>``."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    prefix = f"{UserError.__module__}.{UserError.__name__}: "
    return last.removeprefix(prefix)


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Call ``main`` and exit; a UserError prints ``error: <message>`` and exits with code 2."""
    quiet.quiet_libraries()
    try:
        code = main(argv)
    except UserError as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``: where a command loading a trained head runs, whatever device trained it."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def coverage_line(coverage: ClassCoverage) -> str:
    """One console line on how many classes have trained maps."""
    counts = coverage.summary()
    return (
        f"class coverage: {counts['classes_trained']} of {counts['num_classes']} classes were explained at least "
        f"{counts['min_count']} times in training; maps of the other classes are untrained, not explanations"
    )


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--split val|test`` or ``--images PATH...``, and ``--limit N``: the images a command scores."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", choices=["val", "test"], help="the config's validation or test split")
    source.add_argument("--images", nargs="+", help="image files or folders of images")
    parser.add_argument("--limit", type=int, help="use only the first N images")
    parser.add_argument(
        "--allow-changed-split",
        action="store_true",
        help="score a --split whose images changed since the model was trained (its splits.json)",
    )
    parser.add_argument(
        "--allow-seen",
        action="store_true",
        help="score images the model trained or was selected on; every output marks them seen",
    )


def add_road_arguments(parser: argparse.ArgumentParser) -> None:
    """``--imputer`` and ``--percentages``: the ROAD protocol, overriding the head's ``evaluation`` config."""
    parser.add_argument(
        "--imputer",
        choices=typing.get_args(Imputer),
        help="ROAD imputer: noisy_linear (ROAD paper) or telea (OpenCV inpainting, P-TAME paper's "
        "Table 1); default: the head's evaluation.imputer",
    )
    parser.add_argument(
        "--percentages",
        type=int,
        nargs="+",
        metavar="P",
        help="ROAD removal percentages, e.g. 10 30 50 70 (P-TAME paper); default: the head's evaluation.percentages",
    )


def road_overrides(args: argparse.Namespace) -> list[str]:
    """``--set``-style overrides for the ROAD arguments that were given."""
    overrides = [] if args.imputer is None else [f"evaluation.imputer={args.imputer}"]
    if args.percentages is not None:
        overrides.append(f"evaluation.percentages=[{', '.join(map(str, args.percentages))}]")
    return overrides


def add_tracking_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--tracking-uri URI`` and ``--search NAME`` (nest the run under that search's parent run)."""
    parser.add_argument("--tracking-uri", help=f"log {what} to MLflow here")
    parser.add_argument(
        "--search", help="nest the MLflow run under this search's parent run (runs/search/NAME or a folder)"
    )


def check_tracking(args: argparse.Namespace) -> None:
    """Fail fast in one line when the tracking server of ``--tracking-uri`` does not answer."""
    if args.tracking_uri or args.search:
        from pipeline.tracking.stores import check_tracking_server

        check_tracking_server(args.tracking_uri)


def search_parent_run(name: str) -> str:
    """The MLflow parent run of search ``name`` (a search folder, or a name under the default root)."""
    from pipeline.hpo.outputs.folder import PARENT_RUN, SearchFolder

    folder = SearchFolder.find(name)
    run_id = folder.state.get(PARENT_RUN)
    if not run_id:
        raise UserError(f"search {name!r} ({folder.directory}) has no MLflow run yet; run it first")
    return run_id


def start_tracking(args: argparse.Namespace, name: str, params: dict[str, typing.Any]) -> RunLog | None:
    """The command's MLflow run ``name`` (tag ``role`` = ``name``) when ``--tracking-uri`` or ``--search`` asks for
    one, started before the work so a bad --search or URI fails fast."""
    if not (args.tracking_uri or args.search):
        return None
    from mlflow.exceptions import MlflowException

    from pipeline.tracking.runs import Tracker

    parent = search_parent_run(args.search) if args.search else None
    tracker = Tracker(args.tracking_uri)
    try:
        return tracker.start_run(name, params, {"role": name}, parent_run_id=parent)
    except MlflowException as error:
        raise UserError(
            f"cannot log to {tracker.tracking_uri}: {str(error).splitlines()[0]}; pass the "
            "--tracking-uri the search used"
        ) from None
