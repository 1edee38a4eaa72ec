import torch
from torch import nn

from losslab.errors import ConfigError


def flat_features(features: nn.Module, in_shape: tuple[int, ...], model: str) -> int:
    """Number of features `features` produces for one input of `in_shape` (a dry run on zeros)."""
    try:
        with torch.no_grad():
            return features.eval()(torch.zeros(1, *in_shape)).shape[1]
    except RuntimeError as e:
        raise ConfigError(
            f"model={model} cannot take inputs of shape {tuple(in_shape)}: they are too small for its "
            f"convolutions and poolings; use a dataset with larger images."
        ) from e
    finally:
        features.train()
