"""Silence library chatter a user cannot act on, in a command and in each Ray worker."""

from __future__ import annotations

import logging
import os
import warnings

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
    # MLflow sets its loggers to this level when it is imported, which may come after the call above (a new SQLite
    # store logs each table migration), and prints "View run ... at" for each run ended on a tracking server: the
    # search prints its own link once.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
