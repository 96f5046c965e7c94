"""P-TAME explanation heads with an Ax/BoTorch hyperparameter search and MLflow review."""

__version__ = "0.1.0"
