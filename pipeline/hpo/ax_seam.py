"""The one door to Ax beyond ``ax.api.Client``'s public methods.

Ax 1.3 keeps some of what a resumable, multi-objective search needs behind private names, and documents its
analyses as not part of its API. Every such use is here, each with the reason, so an Ax upgrade that moves one
breaks this module (and ``tests/test_ax_seam.py``, which opens a search folder written by this code), not the
search. ``pyproject.toml`` caps ``ax-platform`` below the next release line that was not tried.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ax.api import Client
    from ax.core.experiment import Experiment


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


def experiment(client: Client) -> Experiment:
    """The client's experiment. Ax 1.3's ``Client`` exposes it only as ``_experiment``; the search needs it for
    the trials' statuses, failure reasons and run metadata (extra metrics), the observed data, the objective
    thresholds and, on resume, the saved search space to compare with the current one."""
    return client._experiment


def set_random_seed(client: Client, seed: int) -> None:
    """Seed BoTorch's candidate generation of a loaded client: the JSON snapshot does not store the seed and
    ``Client`` has no public setter, so a resumed search would otherwise generate unseeded points."""
    client._random_seed = seed


def generation_node_name(generator_run: Any) -> str | None:
    """The generation-strategy node ("Sobol", "MBM") that produced a trial's point, for the trial table; Ax keeps
    it only as ``GeneratorRun._generation_node_name``. None for a manual trial."""
    return getattr(generator_run, "_generation_node_name", None)
