"""Shared command-line plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Callable, Sequence

from pipeline.errors import UserError


# Libraries whose warnings (and torch warnings raised from their code) a user of a search cannot act on:
# the optimiser's numerical and API notices.
OPTIMISER_MODULES = r"(ax|botorch|gpytorch|linear_operator|pyro)(\.|$)"


def quiet_libraries() -> None:
    """Silence library chatter a user cannot act on: deprecation notices, the optimiser's warnings,
    INFO logs and MLflow's artifact progress bars."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
    warnings.filterwarnings("ignore", module=OPTIMISER_MODULES)
    for name in ("ax", "mlflow", "botorch", "alembic", "urllib3", "timm", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # BoTorch compiles a C++ kernel on its first multi-objective trial; importing torch's compiler helper on a
    # machine with a CUDA toolkit but no GPU logs "No CUDA runtime is found".
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def quiet_ax() -> None:
    """Import Ax without its import-time INFO chatter; its console handler shows errors only."""
    logging.disable(logging.INFO)
    try:
        import ax  # noqa: F401  (attaches Ax's handler)
        import ax.storage.sqa_store.with_db_settings_base  # noqa: F401  (logs at import)
    finally:
        logging.disable(logging.NOTSET)

    for handler in logging.getLogger("ax").handlers:  # its modelling notices, e.g. "outcome is constant"
        handler.setLevel(logging.ERROR)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--experiment FILE`` / ``--config FILE`` and repeatable ``--set key=value``."""
    parser.add_argument("--experiment", "--config", dest="experiment", metavar="FILE",
                        help="experiment YAML: a file (e.g. a resolved config.yaml) or a packaged experiment "
                             "(experiments/demo.yaml or demo, vgg16, paper/tab1_vgg16, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set loss.lambda1=0.3 (repeatable)")


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
    quiet_libraries()
    try:
        code = main(argv)
    except UserError as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
