"""Models-from-code entry point of the registered explainer: MLflow runs this file to build the model."""

from mlflow.models import set_model

from pipeline.tracking.serving import ExplainerModel

set_model(ExplainerModel())
