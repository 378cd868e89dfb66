"""Constant-width fully-connected ReLU networks, He-initialised in standard parameterisation."""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MLP", "make_mlp", "param_groups", "layer_lr_scales"]


from .config import check_bias as _check_bias
from .config import check_int as _check_int
from .config import check_readout_gain as _check_readout_gain


class MLP(nn.Module):
    """ReLU MLP with ``depth`` hidden layers of ``width`` units.

    Layers: ``layers[0]`` is the input layer (n0 -> w), ``layers[1:depth]`` are hidden-to-
    hidden (w -> w), ``layers[depth]`` is the read-out (w -> n_classes). ReLU follows every
    layer but the read-out. ``bias``: every layer has a bias (default) or none has
    (:func:`milr.config.check_bias`); ``readout_gain``: the read-out's initialisation
    variance is ``readout_gain / fan_in`` (:meth:`reset_parameters`). Both are stored as
    ``has_bias`` and ``readout_gain``.

    Input ``(batch, n0)``, output logits ``(batch, n_classes)``.
    """

    def __init__(self, n0: int, width: int, depth: int, n_classes: int, bias: bool = True,
                 readout_gain: float = 1.0):
        super().__init__()
        self.n0 = _check_int("n0", n0)
        self.width = _check_int("width", width)
        self.depth = _check_int("depth", depth)
        self.n_classes = _check_int("n_classes", n_classes, 2)
        self.has_bias = _check_bias(bias)
        self.readout_gain = _check_readout_gain(readout_gain)
        dims = [self.n0] + [self.width] * self.depth + [self.n_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=self.has_bias)
                                    for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """He initialisation in standard parameterisation (our choice of the paper's setting).

        Weights ``W ~ N(0, 2 / fan_in)`` for every layer followed by a ReLU (Kaiming normal,
        He et al. 2015), ``W ~ N(0, readout_gain / fan_in)`` for the read-out (default 1: no
        ReLU after it, so the logits have unit variance per unit second moment; 2: He on the
        read-out too), biases zero. The same generator state gives the same standard-normal
        draws whatever ``readout_gain`` and ``bias`` are (biases draw nothing), so networks
        that differ only in these choices start from scaled copies of one draw.
        """
        for i, layer in enumerate(self.layers):
            gain = self.readout_gain if i == len(self.layers) - 1 else 2.0
            std = math.sqrt(gain / layer.in_features)
            w = torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64)
            layer.weight.copy_(w * std)
            if layer.bias is not None:
                layer.bias.zero_()


def make_mlp(
    n0: int,
    width: int,
    depth: int,
    n_classes: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    bias: bool = True,
    readout_gain: float = 1.0,
) -> MLP:
    """A freshly He-initialised :class:`MLP`; same ``seed`` gives the same weights.

    Initial weights are drawn in float64 on the CPU from ``torch.Generator().manual_seed(seed)``
    and then cast, so the initialisation is identical across devices and dtypes (our choice:
    it makes float32/float64 and CPU/GPU runs comparable trial by trial). ``bias`` and
    ``readout_gain``: see :class:`MLP` (the trial fields of :class:`milr.config.TrialConfig`).

    Raises ``ValueError``/``TypeError`` if a size is not a positive integer, ``bias`` not a
    bool or ``readout_gain`` not a finite number > 0.
    """
    model = MLP(n0, width, depth, n_classes, bias=bias, readout_gain=readout_gain)
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
