"""segbench: faithful semantic-segmentation architectures, trained and reviewed under one protocol."""

from segbench.registry import build_encoder, build_model, list_encoders, list_models, model_options

__version__ = "0.1.0"
__all__ = ["build_model", "build_encoder", "list_models", "list_encoders", "model_options", "__version__"]
