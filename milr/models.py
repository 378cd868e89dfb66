"""Constant-width fully-connected ReLU networks, He-initialised in standard parameterisation."""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MLP", "make_mlp", "param_groups", "layer_lr_scales"]


from .config import check_int as _check_int


class MLP(nn.Module):
    """ReLU MLP with ``depth`` hidden layers of ``width`` units.

    Layers: ``layers[0]`` is the input layer (n0 -> w), ``layers[1:depth]`` are hidden-to-
    hidden (w -> w), ``layers[depth]`` is the read-out (w -> n_classes). ReLU follows every
    layer but the read-out.

    Input ``(batch, n0)``, output logits ``(batch, n_classes)``.
    """

    def __init__(self, n0: int, width: int, depth: int, n_classes: int):
        super().__init__()
        self.n0 = _check_int("n0", n0)
        self.width = _check_int("width", width)
        self.depth = _check_int("depth", depth)
        self.n_classes = _check_int("n_classes", n_classes, 2)
        dims = [self.n0] + [self.width] * self.depth + [self.n_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """He initialisation in standard parameterisation (our choice of the paper's setting).

        Weights ``W ~ N(0, 2 / fan_in)`` for every layer followed by a ReLU (Kaiming normal,
        He et al. 2015), ``W ~ N(0, 1 / fan_in)`` for the read-out (no ReLU after it, so the
        logits have unit variance per unit second moment), biases zero.
        """
        for i, layer in enumerate(self.layers):
            gain = 1.0 if i == len(self.layers) - 1 else 2.0
            std = math.sqrt(gain / layer.in_features)
            w = torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64)
            layer.weight.copy_(w * std)
            layer.bias.zero_()


def make_mlp(
    n0: int,
    width: int,
    depth: int,
    n_classes: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> MLP:
    """A freshly He-initialised :class:`MLP`; same ``seed`` gives the same weights.

    Initial weights are drawn in float64 on the CPU from ``torch.Generator().manual_seed(seed)``
    and then cast, so the initialisation is identical across devices and dtypes (our choice:
    it makes float32/float64 and CPU/GPU runs comparable trial by trial).

    Raises ``ValueError``/``TypeError`` if a size is not a positive integer.
    """
    model = MLP(n0, width, depth, n_classes)
    model.reset_parameters(torch.Generator().manual_seed(int(seed)))
    return model.to(device=device, dtype=dtype)


def layer_lr_scales(depth: int, input_lr_scale: float) -> list[float]:
    """Per-layer learning-rate multipliers: ``input_lr_scale`` for the input layer, 1 otherwise.

    Length ``depth + 1`` (input layer, hidden layers, read-out). The paper's condition (ii):
    the power law needs the input layer trained at a relatively small learning rate.
    """
    return [float(input_lr_scale)] + [1.0] * depth


def param_groups(model: MLP, lr: float, input_lr_scale: float) -> list[dict]:
    """SGD parameter groups: input layer at ``input_lr_scale * lr``, every other layer at ``lr``.

    With ``input_lr_scale == 0`` the input layer is frozen (its group has lr 0).
    """
    scales = layer_lr_scales(model.depth, input_lr_scale)
    return [
        {"params": list(layer.parameters()), "lr": lr * s, "lr_scale": s}
        for layer, s in zip(model.layers, scales)
    ]
