"""Weight initialisation shared by the models."""

from torch import nn


def init_weights(model: nn.Module, init: str, std: float) -> None:
    """`default`: PyTorch's own; `zeros`: all weights and biases 0; `normal`: weights N(0, std^2), biases 0."""
    if init == "default":
        return
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if init == "zeros":
                nn.init.zeros_(m.weight)
            else:
                nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def make_activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}[name]()
