"""The trainer: one implementation of plain SGD with per-layer rates, and the trial rules.

Every number in ``data/`` comes from :class:`Trainer`: the eta* trials (any number of learning
rates and seeds at once; one trial is the special case, :func:`run_trial`), the late-stage
warm-up and the late-stage trials (:mod:`milr.late`). A trainer holds M *members* (one
member = one training run: a learning rate, an initial state, a minibatch stream) whose
parameters are stacked, ``(M, *shape)`` per parameter, and steps all of them together.

The update is ``p <- p - eta * scale_l * grad_p`` for every parameter ``p`` of layer ``l``
(plain SGD: no momentum, no weight decay; ``scale_l`` is the layer's learning-rate
multiplier, :func:`milr.models.layer_lr_scales`). Gradients come from a *network*:

* :class:`StackedMLP` (the default, every record): the ReLU MLP of :mod:`milr.models` with
  mean cross-entropy, forward and backward written out with batched matrix products (the
  input layer of all members that share a minibatch as one ``torch.mm``).
* :class:`StackedModule`: any ``nn.Module`` whose parameters are grouped by a ``layers``
  list, any loss, through ``torch.func`` (``vmap`` of ``grad`` of ``functional_call``). It
  is the generic path (tests train a linear regression with it); on the CPU it is 1.3-11x
  slower than the hand-written backward for the MLPs of the presets (``make bench``), which
  is why the MLP has its own (docs/DESIGN.md, "One trainer").

The stopping rules (:class:`StopRules`, one place, our choices; the paper's Sec. 3 gives
the threshold idea): after every step a member stops as ``diverged_nonfinite`` if its batch
loss is NaN or +/-inf and as ``diverged_blowup`` if it exceeds ``blowup_factor`` x its first
batch loss (no such rule with ``blowup_factor=None``). Every ``eval_every`` steps and after
its last step it is evaluated on the validation inputs: a non-finite parameter or a
non-finite validation output stops it as ``diverged_nonfinite`` (a row with a non-finite logit
never counts as correct); otherwise it stops as ``reached_threshold`` once the score reaches
``threshold`` (if one is set) and as ``budget_exhausted`` after ``step_budget`` steps.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from .config import TrialConfig, check_float, check_int, network_options
from .data import Dataset, load_dataset
from .models import layer_lr_scales, make_mlp

__all__ = ["TrialResult", "StopRules", "Trainer", "StackedMLP", "StackedModule", "run_trial",
           "run_trials", "batch_indices", "val_subset", "torch_dtype", "accuracy",
           "correct_fraction", "params_finite", "step_flops", "REASONS"]

log = logging.getLogger(__name__)

REASONS = ("reached_threshold", "diverged_nonfinite", "diverged_blowup", "budget_exhausted",
           "cancelled")
#: The blow-up limit when the rule is off: every finite float64 loss is at or below it.
_F64_MAX = torch.finfo(torch.float64).max
#: The keys of a trial's entry in an eta* record's trial log (:meth:`TrialResult.to_dict`).
_LOG_FIELDS = ("eta", "success", "reason", "steps", "best_acc", "final_acc", "loss0",
               "wall_time")


@dataclass
class TrialResult:
    """Outcome of one member (one trial).

    eta: the learning rate (layer ``l`` trained at ``scale_l * eta``).
    success: ``reason == "reached_threshold"`` (``False`` for a cancelled member).
    reason: one of :data:`REASONS` (see the module docstring).
    steps: SGD steps taken (the step at which the member stopped).
    best_acc, final_acc: best and last validation score (accuracy for the MLP; NaN if never
        evaluated).
    loss0: the first batch loss; loss_max: the largest finite batch loss it saw.
    wall_time: seconds from joining the trainer to stopping (shared with the other members).
    curve: ``(step, score)`` at every evaluation when asked for (``record_curve``).
    losses: every batch loss (``record_losses``); params: the final parameters, one tensor per
        parameter of the network (``keep_params``). Neither goes into :meth:`to_dict`.
    """

    eta: float
    success: bool
    reason: str
    steps: int
    best_acc: float
    final_acc: float
    loss0: float
    wall_time: float
    curve: list = field(default_factory=list)
    loss_max: float = math.nan
    losses: list = field(default_factory=list, repr=False)
    params: list | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """The trial-log entry of an eta* record (``curve`` only when recorded)."""
        d = {k: getattr(self, k) for k in _LOG_FIELDS}
        if self.curve:
            d["curve"] = [tuple(c) for c in self.curve]
        return d


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"``/``"float64"`` as a torch dtype."""
    return {"float32": torch.float32, "float64": torch.float64}[name]


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """Minibatch indices, ``(steps, batch_size)`` int64, for a trial with this ``seed``.

    Concatenated random permutations of ``range(n)`` (one per epoch) cut into consecutive
    batches; a batch may straddle two epochs. Drawn on the CPU from a generator seeded with
    ``seed + 7919`` (a stream apart from the initialisation's), so every trial of a seed sees
    the same data order whatever its learning rate or device (our choice).
    """
    g = torch.Generator().manual_seed(int(seed) + 7919)
    need = steps * batch_size
    perms = [torch.randperm(n, generator=g) for _ in range(math.ceil(need / n))]
    return torch.cat(perms)[:need].view(steps, batch_size)


def val_subset(data: Dataset, n_val: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed validation subset: first ``n_val`` of a seed-0 permutation of the split.
    ``ValueError`` if the split has fewer rows (never a silently smaller subset: ``n_val``
    keys the record)."""
    n = len(data.y_val)
    if n_val > n:
        raise ValueError(f"n_val={n_val} must be an integer in [1, {n}]: {data.name} has {n} "
                         "validation rows")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:n_val]
    return data.x_val[idx], data.y_val[idx]


def correct_fraction(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy over the last-but-one axis: ``logits (..., n, C)``, ``y (n,)`` -> ``(...)``
    float64. A row counts as correct iff every logit of it is finite and its arg-max is the
    label (a NaN row's arg-max is 0: without the finiteness test it would count as correct
    whenever the label is 0)."""
    ok = (logits.argmax(dim=-1) == y) & torch.isfinite(logits).all(dim=-1)
    return ok.to(torch.float64).mean(dim=-1)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows of ``x`` (n, n0) that ``model`` classifies as ``y`` (n,); rows with a
    non-finite logit are wrong (:func:`correct_fraction`)."""
    return float(correct_fraction(model(x), y))


def params_finite(model: torch.nn.Module) -> bool:
    """Every parameter of ``model`` is finite (no NaN, no +/-inf)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def step_flops(cfg: TrialConfig, n0: int, n_classes: int) -> float:
    """Floating-point operations of one SGD step of one MLP trial (multiply-add = 2 FLOPs).

    Matrix products only: forward ``2 B (n0 w + (d-1) w^2 + w C)``, backward the weight
    gradients of every trained layer plus the input gradients of every layer but the first.
    Elementwise work is left out, so a rate computed from it is a lower bound (our convention,
    used by ``benchmarks/bench_search.py``).
    """
    B, w, d = cfg.batch_size, cfg.width, cfg.depth
    first = n0 * w
    rest = (d - 1) * w * w + w * n_classes
    bwd = (first if cfg.input_lr_scale > 0 else 0) + 2 * rest
    return 2.0 * B * (first + rest + bwd)


@dataclass(frozen=True)
class StopRules:
    """When a member stops (see the module docstring; all our choices, values checked by
    :class:`milr.config.TrialConfig` or the caller).

    step_budget: most SGD steps. eval_every: evaluation period (and after the last step).
    threshold: score at which a member succeeds; ``None``: it never stops early on its score.
    blowup_factor: a batch loss above this x the member's first batch loss is divergence;
        ``None``: no blow-up rule (only non-finite losses, parameters or outputs stop it).
    """

    step_budget: int
    eval_every: int
    threshold: float | None
    blowup_factor: float | None

    @classmethod
    def of(cls, cfg: TrialConfig) -> "StopRules":
        """The rules of an eta* trial."""
        return cls(cfg.step_budget, cfg.eval_every, cfg.threshold, cfg.blowup_factor)

    def next_eval(self, s: int) -> int:
        """The first evaluation step after step ``s``."""
        e, T = self.eval_every, self.step_budget
        return min((s // e + 1) * e, T)

    def is_eval(self, s: int) -> bool:
        return s % self.eval_every == 0 or s == self.step_budget

    def after_eval(self, score: float, s: int) -> str | None:
        """The reason a finite member stops after its evaluation at step ``s`` (or None)."""
        if self.threshold is not None and score >= self.threshold:
            return "reached_threshold"
        return "budget_exhausted" if s >= self.step_budget else None


def _relu_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Gradient through ReLU given its output (autograd's own kernel: a NaN gradient behind
    a dead unit is 0, as in ``loss.backward()``)."""
    return torch.ops.aten.threshold_backward(grad, out, 0)


def _affine(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``h @ W^T + b`` for stacked ``h (M, n, in)``, ``W (M, out, in)``, ``b (M, out)`` or
    ``None`` (no bias); with a bias one fused ``baddbmm``."""
    if b is None:
        return torch.bmm(h, W.transpose(1, 2))
    return torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))


class StackedMLP:
    """Gradients of M stacked ReLU MLPs (:class:`milr.models.MLP`) under mean cross-entropy.

    Parameters are ``[W_0, b_0, ..., W_d, b_d]`` (``bias=True``) or ``[W_0, ..., W_d]``
    (``bias=False``: no biases at all), ``W_l (M, out, in)``, ``b_l (M, out)``; parameter
    ``i`` belongs to layer ``i // 2`` (``i`` without biases). ``train_input=False``
    (input-layer rate 0) skips the input layer's gradient (its parameters then never change,
    even when the gradient would be NaN). ``bias`` and ``readout_gain`` also define the fresh
    networks of :meth:`init` (:func:`milr.models.make_mlp`).
    """

    def __init__(self, dims: Sequence[int], train_input: bool = True, bias: bool = True,
                 readout_gain: float = 1.0):
        self.dims = list(dims)
        self.n_layers = len(self.dims) - 1
        self.bias = bool(bias)
        self.readout_gain = float(readout_gain)
        self.per_layer = 2 if self.bias else 1
        self.layer_of = [i // self.per_layer for i in range(self.per_layer * self.n_layers)]
        self.train_input = bool(train_input)

    def weights(self, P: list) -> list:
        """The weights ``W_l`` of the stacked parameters ``P``, one per layer."""
        return P[0::self.per_layer]

    def biases(self, P: list) -> list:
        """The biases ``b_l`` of ``P``, one per layer (``None`` each without biases)."""
        return P[1::2] if self.bias else [None] * self.n_layers

    def init(self, seed: int, dtype, device) -> list[torch.Tensor]:
        """The parameters of a fresh network from ``seed`` (:func:`milr.models.make_mlp`)."""
        net = make_mlp(self.dims[0], self.dims[1], self.n_layers - 1, self.dims[-1], seed,
                       dtype, device, bias=self.bias, readout_gain=self.readout_gain)
        return self.of_model(net)

    def of_model(self, model) -> list[torch.Tensor]:
        """The parameters of a built :class:`milr.models.MLP`, in this network's order;
        ``ValueError`` if it has biases and this network has not, or the reverse."""
        out = [t.detach() for layer in model.layers for t in layer.parameters()]
        if len(out) != len(self.layer_of):
            raise ValueError(f"the model has {len(out)} parameter tensors; this network "
                             f"(bias={self.bias}) has {len(self.layer_of)}")
        return out

    def outputs(self, P: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits ``(m, n, C)`` of the stacked parameters ``P`` on shared inputs ``x (n, n0)``."""
        W, b = self.weights(P), self.biases(P)
        m, n = W[0].shape[0], x.shape[0]
        z = torch.mm(x, W[0].reshape(-1, self.dims[0]).t()).view(n, m, -1).transpose(0, 1)
        if b[0] is not None:
            z = z + b[0].unsqueeze(1)
        for l in range(1, self.n_layers):
            z = _affine(torch.relu(z), W[l], b[l])
        return z

    def forward_loss(self, P, groups, xs, y):
        """Batch losses ``(M,)`` and what :meth:`grads` needs.

        ``groups``: ``[(a, e), ...]`` member ranges that share a minibatch; ``xs``: the
        minibatch inputs ``(B, n0)`` of each group; ``y``: labels ``(M, B)``.
        """
        W, b = self.weights(P), self.biases(P)
        M, B, n0, w1 = W[0].shape[0], y.shape[1], self.dims[0], self.dims[1]
        parts = [torch.mm(x, W[0][a:e].reshape(-1, n0).t()) for (a, e), x in zip(groups, xs)]
        z = torch.cat(parts, dim=1).view(B, M, w1).transpose(0, 1)
        if b[0] is not None:
            z = z + b[0].unsqueeze(1)
        hs = [None]
        for l in range(1, self.n_layers):
            h = torch.relu(z)
            hs.append(h)
            z = _affine(h, W[l], b[l])
        logp = torch.log_softmax(z, dim=2)
        yy = y.unsqueeze(2)
        loss = -logp.gather(2, yy).squeeze(2).mean(1)
        return loss, (P, groups, xs, yy, hs, logp)

    def grads(self, ctx, keep: torch.Tensor) -> list:
        """Gradients of the mean cross-entropy, one per parameter (None for a frozen input
        layer); members with ``keep`` False get exact zeros."""
        P, groups, xs, yy, hs, logp = ctx
        W, k = self.weights(P), self.per_layer
        M, B, n0, w1 = W[0].shape[0], yy.shape[1], self.dims[0], self.dims[1]
        # d loss / d logits = (softmax - onehot) / B, as autograd computes it
        inv_b = 1.0 / B
        g = torch.exp(logp).mul_(inv_b)
        g.scatter_add_(2, yy, torch.full(yy.shape, -inv_b, dtype=g.dtype, device=g.device))
        g = torch.where(keep.view(M, 1, 1), g, 0.0)
        grads: list = [None] * len(P)
        for l in range(self.n_layers - 1, 0, -1):
            grads[k * l] = torch.bmm(g.transpose(1, 2), hs[l])
            if self.bias:
                grads[k * l + 1] = g.sum(1)
            g = _relu_backward(torch.bmm(g, W[l]), hs[l])  # ReLU'(z) = 1[h > 0], as autograd
        if self.train_input:
            dW = [torch.mm(g[a:e].transpose(0, 1).reshape(B, (e - a) * w1).t(), x)
                  .view(e - a, w1, n0) for (a, e), x in zip(groups, xs)]
            grads[0] = torch.cat(dW) if len(dW) > 1 else dW[0]
            if self.bias:
                grads[1] = g.sum(1)
        return grads


class StackedModule:
    """Gradients of M copies of any ``nn.Module`` through ``torch.func``.

    ``module``: the template (its own parameters are never changed); its parameters are
    grouped into layers by ``module.layers`` (parameter ``p`` belongs to the layer whose
    ``parameters()`` contain it). ``loss_fn(outputs, y) -> scalar`` (default mean
    cross-entropy). ``init(seed, dtype, device) -> [tensor, ...]`` (optional): the initial
    parameters of a member added by seed. Members that share a minibatch are vmapped together.
    """

    def __init__(self, module: torch.nn.Module, loss_fn: Callable = F.cross_entropy,
                 init: Callable | None = None):
        from torch.func import functional_call, grad_and_value, vmap

        self.module, self._init = module, init
        self.names = [n for n, _ in module.named_parameters()]
        layer_params = [{id(p) for p in layer.parameters()} for layer in module.layers]
        self.layer_of = []
        for _, p in module.named_parameters():
            where = [i for i, ids in enumerate(layer_params) if id(p) in ids]
            if len(where) != 1:
                raise ValueError("every parameter must belong to exactly one entry of "
                                 "module.layers")
            self.layer_of.append(where[0])
        self.n_layers = len(layer_params)

        def loss(params, x, y):
            return loss_fn(functional_call(module, dict(zip(self.names, params)), (x,)), y)

        self._grad = vmap(grad_and_value(loss), in_dims=(0, None, None))
        self._out = vmap(lambda params, x: functional_call(
            module, dict(zip(self.names, params)), (x,)), in_dims=(0, None))

    def of_model(self, model) -> list[torch.Tensor]:
        return [p.detach() for p in model.parameters()]

    def init(self, seed: int, dtype, device) -> list[torch.Tensor]:
        if self._init is None:
            raise ValueError("this StackedModule has no init: add members with init=...")
        return self._init(seed, dtype, device)

    def outputs(self, P, x):
        return self._out(list(P), x)

    def forward_loss(self, P, groups, xs, y):
        losses, grads = [], [[] for _ in P]
        for (a, e), x in zip(groups, xs):
            g, l = self._grad([p[a:e] for p in P], x, y[a])
            losses.append(l)
            for i, gi in enumerate(g):
                grads[i].append(gi)
        return torch.cat(losses), [torch.cat(g) for g in grads]

    def grads(self, ctx, keep: torch.Tensor) -> list:
        return [torch.where(keep.view(-1, *([1] * (g.dim() - 1))), g, 0.0) for g in ctx]


@dataclass
class _Member:
    """Host-side record of one member."""

    uid: int
    eta: float
    seed: int | None
    stream: object
    tag: object = None
    init: list | None = None
    start: int = -1  # global step at which it joined (-1: still queued)
    row0: int = 0  # first row of its stream in the flattened minibatch order
    t_start: float = math.nan
    best: float = math.nan
    final: float = math.nan
    curve: list = field(default_factory=list)


class Trainer:
    """Members of one network shape, any learning rates, initial states and data streams,
    trained together by plain SGD with per-layer rates (see the module docstring).

    Parameters
    ----------
    net: :class:`StackedMLP` or :class:`StackedModule`.
    x_train ``(N, ...)``, y_train ``(N, ...)``: training data; x_val, y_val: validation data.
        All are moved to ``device`` (inputs in ``dtype``) once.
    rules: :class:`StopRules`.
    lr_scales: one multiplier per layer of ``net`` (input layer first).
    score: ``score(outputs (m, n, ...), y_val) -> (m,)`` float64, higher is better
        (default :func:`correct_fraction`, the accuracy).
    dtype, device: of every parameter and input (``device="cuda"`` needs CUDA).
    record_curve, record_losses, keep_params: what each :class:`TrialResult` carries.
    max_members: most members stepped at once; more wait in a queue and join as others
        finish. ``None``: as many as fit in ~1/4 of the device memory (CPU: 4 GiB) at ~4
        parameter-sized buffers per member plus activations (our choice).
    poll_stops: also read the divergence flags after every step and drop diverged members at
        once. Default: on the CPU (free there), not on CUDA (a host-device synchronisation).

    Use: :meth:`add` members, then :meth:`advance` until :attr:`idle`; each call steps to the
    next evaluation point of any member and returns the members that stopped.

    Device state for M running members: the stacked parameters :attr:`P`; ``active (M,)``
    bool; ``loss0``, ``loss_max`` and ``limit`` (``blowup_factor * loss0``, -inf when
    ``loss0`` is not finite) ``(M,)`` float64; ``stop_g (M,)`` (the global step at which a
    member diverged) and ``stop_loss (M,)`` (the loss that stopped it: non-finite means
    ``diverged_nonfinite``, else ``diverged_blowup``). Flags are read only at evaluation
    points (and, with ``poll_stops``, after each step).
    """

    def __init__(self, net, x_train, y_train, x_val, y_val, rules: StopRules,
                 lr_scales: Sequence[float], *, score: Callable = correct_fraction,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 record_curve: bool = False, record_losses: bool = False,
                 keep_params: bool = False, max_members: int | None = None,
                 poll_stops: bool | None = None, batch_size: int | None = None):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r}: CUDA is not available on this machine")
        if len(lr_scales) != net.n_layers:
            raise ValueError(f"lr_scales has {len(lr_scales)} entries; the network has "
                             f"{net.n_layers} layers")
        self.net, self.rules, self.score, self.dtype = net, rules, score, dtype
        self.scales = [float(s) for s in lr_scales]
        self.record_curve, self.record_losses = bool(record_curve), bool(record_losses)
        self.keep_params = bool(keep_params)
        self.poll_stops = self.device.type != "cuda" if poll_stops is None else bool(poll_stops)
        dev = self.device
        self.xtr = x_train.to(device=dev, dtype=dtype)
        self.ytr = y_train.to(device=dev)
        self.xv = x_val.to(device=dev, dtype=dtype)
        self.yv = y_val.to(device=dev)
        self.n_train = len(self.ytr)
        self.max_members = None if max_members is None else check_int("max_members",
                                                                      max_members, 1)
        self.batch_size = batch_size
        self._streams: dict = {}
        self._order = torch.empty((0, 0), dtype=torch.long, device=dev)
        self._inits: dict = {}
        self.members: list[_Member] = []
        self.queue: list[_Member] = []
        self._cancelled: set[int] = set()
        self._loss_log: list = []
        self._uid = 0
        self.gstep = 0
        self.P: list[torch.Tensor] | None = None
        self.peak_members = self.steps_run = self.member_steps = self.syncs = 0
        self.label = ""  # names the configuration in the debug log

    # ------------------------------------------------------------------ MLP views
    @property
    def W(self) -> list[torch.Tensor]:
        """Weights of a :class:`StackedMLP`, ``(M, out, in)`` per layer."""
        return self.net.weights(self.P)

    @property
    def b(self) -> list[torch.Tensor]:
        """Biases of a :class:`StackedMLP`, ``(M, out)`` per layer (``None`` without biases)."""
        return self.net.biases(self.P)

    # ------------------------------------------------------------------ members
    def add_stream(self, key, order: torch.Tensor) -> None:
        """Register a minibatch stream ``order (steps >= step_budget, B)`` of row indices."""
        if key in self._streams:
            return
        if order.ndim != 2 or order.shape[0] < self.rules.step_budget:
            raise ValueError(f"order must be a (steps >= {self.rules.step_budget}, B) index "
                             f"tensor, got shape {tuple(order.shape)}")
        order = order[: self.rules.step_budget].to(self.device)
        if self._order.numel() and order.shape[1] != self._order.shape[1]:
            raise ValueError("every stream of a trainer must have the same batch size")
        self._streams[key] = len(self._order)
        self._order = order if not self._order.numel() else torch.cat([self._order, order])

    def add(self, eta: float, seed: int | None = None, *, init=None, stream=None,
            tag: object = None) -> int:
        """Queue a member at learning rate ``eta`` (finite, > 0; trusted, checked by callers).

        Its initial parameters: ``init`` (a model, or a list of tensors in the network's
        order), else a fresh network from ``seed``. Its minibatches: stream ``stream`` (see
        :meth:`add_stream`), else the seed's (:func:`batch_indices` with the trainer's
        ``batch_size``). ``tag`` is returned with its
        result. Returns the member's id.
        """
        if stream is None:
            stream = ("seed", int(seed))
        if stream not in self._streams:
            self.add_stream(stream, batch_indices(self.n_train, self.batch_size,
                                                  self.rules.step_budget, int(seed)))
        if init is not None and not isinstance(init, list):
            init = self.net.of_model(init)
        m = _Member(self._uid, float(eta), seed, stream, tag, init)
        self._uid += 1
        self.queue.append(m)
        return m.uid

    def cancel(self, uid: int) -> bool:
        """Stop member ``uid`` (queued: dropped silently; running: its result, ``reason=
        "cancelled"``, comes with the next :meth:`advance`). True if it was found."""
        for i, m in enumerate(self.queue):
            if m.uid == uid:
                del self.queue[i]
                return True
        if any(m.uid == uid for m in self.members):
            self._cancelled.add(uid)
            return True
        return False

    def _initial(self, m: _Member) -> list[torch.Tensor]:
        if m.init is not None:
            return [t.to(device=self.device, dtype=self.dtype) for t in m.init]
        if m.seed not in self._inits:
            self._inits[m.seed] = self.net.init(m.seed, self.dtype, self.device)
        return self._inits[m.seed]

    def _keep(self, idx: list[int]) -> None:
        """Compaction: keep only the members at positions ``idx`` of the stacks."""
        if list(idx) == list(range(len(self.members))):
            return
        sel = torch.tensor(idx, dtype=torch.long, device=self.device)
        self.P = [p.index_select(0, sel) for p in self.P]
        for name in ("neg_lr", "active", "stop_g", "stop_loss", "loss0", "limit", "loss_max"):
            setattr(self, name, getattr(self, name).index_select(0, sel))
        self.members = [self.members[i] for i in idx]
        self._regroup()

    def _regroup(self) -> None:
        """Sort the stacks by data stream (stream, joining step) and list the groups: members
        of a group see the same minibatch at every step."""
        keys = [(m.row0, m.start) for m in self.members]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        if order != list(range(len(keys))):
            self._keep(order)  # a permutation; calls _regroup again, now sorted
            return
        M = len(self.members)
        self._lr_shaped = [self.neg_lr[:, l].reshape(M, *([1] * (p.dim() - 1)))
                           for l, p in zip(self.net.layer_of, self.P)]
        self._groups = []
        for i, key in enumerate(keys):
            if self._groups and keys[self._groups[-1][0]] == key:
                self._groups[-1][1] = i + 1
            else:
                self._groups.append([i, i + 1, key[0], key[1]])
        self._uids = tuple(m.uid for m in self.members)

    def _admit(self) -> None:
        """Move queued members into the stacks, up to ``max_members``."""
        if self.max_members is None:
            self.max_members = self._default_max_members()
        room = self.max_members - len(self.members)
        if room <= 0 or not self.queue:
            return
        new, self.queue = self.queue[:room], self.queue[room:]
        inits = [self._initial(m) for m in new]
        now = time.perf_counter()
        lrs = []
        for m in new:
            m.row0 = self._streams[m.stream]
            lrs.append([-(m.eta * s) for s in self.scales])  # float64 products, as lr * scale
            m.start, m.t_start = self.gstep, now
        stacked = [torch.stack([ini[i] for ini in inits]) for i in range(len(inits[0]))]
        dev, k = self.device, len(new)
        if self.P is None:
            self.P = stacked
            z = lambda dt, v: torch.full((0,), v, dtype=dt, device=dev)  # noqa: E731
            self.neg_lr = torch.empty((0, len(self.scales)), dtype=self.dtype, device=dev)
            self.active, self.stop_g = z(torch.bool, 1), z(torch.long, 0)
            self.stop_loss, self.loss0 = z(torch.float64, 0), z(torch.float64, 0)
            self.limit, self.loss_max = z(torch.float64, 0), z(torch.float64, 0)
        else:
            self.P = [torch.cat([p, s]) for p, s in zip(self.P, stacked)]
        cat = lambda old, t: torch.cat([old, t.to(dev)])  # noqa: E731
        self.neg_lr = cat(self.neg_lr, torch.tensor(lrs, dtype=torch.float64).to(self.dtype))
        self.active = cat(self.active, torch.ones(k, dtype=torch.bool))
        self.stop_g = cat(self.stop_g, torch.zeros(k, dtype=torch.long))
        self.stop_loss = cat(self.stop_loss, torch.zeros(k, dtype=torch.float64))
        self.loss0 = cat(self.loss0, torch.full((k,), math.nan, dtype=torch.float64))
        self.limit = cat(self.limit, torch.full((k,), math.nan, dtype=torch.float64))
        self.loss_max = cat(self.loss_max, torch.full((k,), -math.inf, dtype=torch.float64))
        self.members.extend(new)
        self.peak_members = max(self.peak_members, len(self.members))
        self._regroup()

    def _default_max_members(self) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = free // 4
        else:
            budget = 4 << 30
        probe = self.queue[0] if self.queue else None
        shapes = [t.shape for t in self._initial(probe)] if probe is not None else []
        n_params = sum(math.prod(s) for s in shapes)
        B = self._order.shape[1] if self._order.numel() else 64
        width = max((s[0] for s in shapes), default=1)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        act = B * width * len(shapes) * 3 + len(self.yv) * width * 2
        return max(1, int(budget // ((4 * n_params + act) * itemsize)))

    # ------------------------------------------------------------------ training
    @property
    def idle(self) -> bool:
        """No member is running or queued."""
        return not self.members and not self.queue and not self._cancelled

    @property
    def n_running(self) -> int:
        return len(self.members)

    def _member_step(self, m: _Member) -> int:
        return self.gstep - m.start

    def _step(self) -> None:
        """One SGD step of every stacked member; no host-device synchronisation.

        Losses are compared with the stopping limits in float64 (like Python floats); a
        member that stopped keeps its parameters (its gradient is masked to 0).
        """
        xs, ys = [], []
        for a, e, row0, start in self._groups:
            idx = self._order[row0 + self.gstep - start]  # (B,) this step's minibatch
            xs.append(self.xtr.index_select(0, idx))
            ys.append(self.ytr.index_select(0, idx).expand(e - a, *idx.shape))
        y = torch.cat(ys)
        M = len(self.members)
        loss, ctx = self.net.forward_loss(self.P, [(a, e) for a, e, _, _ in self._groups],
                                          xs, y)
        l64 = loss.detach().to(torch.float64)
        for a, e, _, start in self._groups:
            if start == self.gstep:  # first step of these members: record loss0
                self.loss0[a:e] = l64[a:e]
                f = self.rules.blowup_factor  # None: every finite loss is below the limit
                lim = l64[a:e] * f if f is not None else torch.full_like(l64[a:e], _F64_MAX)
                self.limit[a:e] = torch.where(torch.isfinite(l64[a:e]), lim, -math.inf)
        bad = ~(l64 <= self.limit)  # NaN, +inf, blowup (and any loss after a non-finite loss0)
        seen = self.active & torch.isfinite(l64)
        self.loss_max = torch.where(seen, torch.maximum(self.loss_max, l64), self.loss_max)
        if self.record_losses:
            self._loss_log.append((self._uids, l64, self.active.clone()))
        newly = self.active & bad
        self.stop_g = torch.where(newly, self.gstep + 1, self.stop_g)
        self.stop_loss = torch.where(newly, l64, self.stop_loss)
        self.active &= ~bad
        for p, g, lr in zip(self.P, self.net.grads(ctx, self.active), self._lr_shaped):
            if g is not None:
                p.addcmul_(g, lr)
        self.steps_run += 1
        self.member_steps += M
        self.gstep += 1

    @torch.no_grad()
    def _evaluate(self, sel: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(score (len(sel),) float64, finite (len(sel),) bool)`` of the members at positions
        ``sel``: finite means every parameter and every validation output is finite."""
        n_val = len(self.yv)
        width = max(p.shape[1] if p.dim() > 1 else 1 for p in self.P)
        chunk = max(1, (1 << 25) // max(1, n_val * width))
        scores, finite = [], []
        for i in range(0, len(sel), chunk):
            s = torch.tensor(sel[i:i + chunk], dtype=torch.long, device=self.device)
            P = [p.index_select(0, s) for p in self.P]
            ok = torch.ones(len(s), dtype=torch.bool, device=self.device)
            for p in P:
                ok &= torch.isfinite(p).flatten(1).all(1)
            out = self.net.outputs(P, self.xv)
            ok &= torch.isfinite(out).flatten(1).all(1)
            scores.append(self.score(out, self.yv).to(torch.float64))
            finite.append(ok)
        return torch.cat(scores), torch.cat(finite)

    def _result(self, i: int, m: _Member, reason: str, steps: int, host: dict) -> TrialResult:
        losses = []
        if self.record_losses:
            for uids, l64, act in self._loss_log:
                if m.uid in uids:
                    j = uids.index(m.uid)
                    if bool(act[j]):
                        losses.append(float(l64[j]))
        lmax = float(host["loss_max"][i])
        log.debug("trial %s seed=%s eta=%.4g -> %s at step %d (score %.3f)", self.label,
                  m.seed, m.eta, reason, steps, m.best)
        return TrialResult(
            eta=m.eta, success=reason == "reached_threshold", reason=reason, steps=int(steps),
            best_acc=float(m.best), final_acc=float(m.final), loss0=float(host["loss0"][i]),
            wall_time=time.perf_counter() - m.t_start, curve=list(m.curve),
            loss_max=lmax if math.isfinite(lmax) else math.nan, losses=losses,
            params=[p[i].clone() for p in self.P] if self.keep_params else None)

    @torch.no_grad()
    def advance(self) -> list[tuple[int, TrialResult, object]]:
        """Train to the next evaluation point of any member; return who stopped since the
        last call, ``[(uid, TrialResult, tag), ...]`` (``[]`` when idle). With ``poll_stops``
        it also returns right after a step at which a member diverged."""
        rules, done = self.rules, []
        if self._cancelled:
            host = self._host()
            keep = []
            for i, m in enumerate(self.members):
                if m.uid in self._cancelled:
                    r = self._result(i, m, "cancelled", self._member_step(m), host)
                    done.append((m.uid, r, m.tag))
                else:
                    keep.append(i)
            self._cancelled = set()
            self._keep(keep)
        self._admit()
        if not self.members:
            return done
        steps = min(rules.next_eval(self._member_step(m)) - self._member_step(m)
                    for m in self.members)
        for i in range(steps):
            self._step()
            if self.poll_stops and i < steps - 1 and not bool(self.active.all()):
                break  # a member diverged: free its slot now (cheap on the CPU)
        self.syncs += 1
        host = self._host()
        keep, due = [], []
        for i, m in enumerate(self.members):
            if not host["active"][i]:
                reason = ("diverged_blowup" if math.isfinite(float(host["stop_loss"][i]))
                          else "diverged_nonfinite")
                r = self._result(i, m, reason, int(host["stop_g"][i]) - m.start, host)
                done.append((m.uid, r, m.tag))
            elif rules.is_eval(self._member_step(m)):
                due.append(i)
            else:
                keep.append(i)
        if due:
            score, finite = (t.cpu() for t in self._evaluate(due))
            for j, i in enumerate(due):
                m, s = self.members[i], self._member_step(self.members[i])
                a = float(score[j])
                m.final = a
                m.best = a if math.isnan(m.best) else max(m.best, a)
                if self.record_curve:
                    m.curve.append((s, a))
                reason = "diverged_nonfinite" if not finite[j] else rules.after_eval(a, s)
                if reason is None:
                    keep.append(i)
                else:
                    done.append((m.uid, self._result(i, m, reason, s, host), m.tag))
        self._keep(sorted(keep))
        return done

    def _host(self) -> dict:
        """One transfer of the per-member stopping state."""
        names = ("active", "stop_g", "stop_loss", "loss0", "loss_max")
        return {n: getattr(self, n).cpu() for n in names}

    def run(self) -> dict[int, TrialResult]:
        """Advance until idle; the results by member id."""
        out = {}
        while not self.idle:
            out.update({uid: r for uid, r, _ in self.advance()})
        return out


def trainer_for(cfg: TrialConfig, data: Dataset | None = None,
                device: str | torch.device = "cpu", generic: bool = False,
                **options) -> Trainer:
    """The :class:`Trainer` of eta* trials of ``cfg`` (MLP, mean cross-entropy, the fixed
    validation subset, :class:`StopRules` of ``cfg``, seed-derived initialisation with
    ``cfg``'s ``bias`` and ``readout_gain``, and data order). ``generic``: gradients through
    :class:`StackedModule` (``torch.func``) instead of the hand-written :class:`StackedMLP`
    (same trials; ``make bench`` compares their speed).
    ``options`` go to :class:`Trainer` (``record_curve``, ``max_members``, ...).
    Raises ``TypeError`` if ``cfg`` is not a :class:`milr.config.TrialConfig`."""
    if not isinstance(cfg, TrialConfig):
        raise TypeError(f"cfg={cfg!r} must be a milr.config.TrialConfig")
    data = load_dataset(cfg.dataset) if data is None else data
    xv, yv = val_subset(data, cfg.n_val)
    dims = [data.input_dim] + [cfg.width] * cfg.depth + [data.n_classes]
    net = StackedMLP(dims, train_input=cfg.input_lr_scale > 0, **network_options(cfg))
    if generic:
        net = StackedModule(make_mlp(dims[0], cfg.width, cfg.depth, dims[-1], 0,
                                     torch_dtype(cfg.dtype), device, **network_options(cfg)),
                            F.cross_entropy, net.init)
    tr = Trainer(net, data.x_train, data.y_train, xv, yv, StopRules.of(cfg),
                 layer_lr_scales(cfg.depth, cfg.input_lr_scale),
                 dtype=torch_dtype(cfg.dtype), device=device, batch_size=cfg.batch_size,
                 **options)
    tr.cfg = cfg
    tr.label = f"{cfg.dataset} d={cfg.depth} w={cfg.width}"
    tr.flops_per_member_step = step_flops(cfg, data.input_dim, data.n_classes)
    return tr


def run_trials(cfg: TrialConfig, etas: Iterable[float], seeds: Iterable[int],
               data: Dataset | None = None, device: str | torch.device = "cpu",
               record_curve: bool = False, max_members: int | None = None,
               models: Sequence | None = None) -> list[TrialResult]:
    """The trials ``(etas[i], seeds[i])`` of ``cfg``, trained together; results in order.

    ``models[i]`` (optional): a built :class:`milr.models.MLP` whose parameters are the
    trial's initial state instead of the seed's fresh network (tests use it).

    Raises ``ValueError`` if the lengths differ, for an ``eta`` that is not finite and > 0 or
    a seed that is not an integer >= 0 (the user's entry point; the trainer trusts it).
    """
    etas = [check_float(f"eta[{i}]", e, 0.0, lo_open=True) for i, e in enumerate(etas)]
    seeds = [check_int(f"seed[{i}]", s, 0) for i, s in enumerate(seeds)]
    if len(etas) != len(seeds) or (models is not None and len(models) != len(etas)):
        raise ValueError(f"etas ({len(etas)}) and seeds ({len(seeds)}) must have equal length")
    tr = trainer_for(cfg, data, device, record_curve=record_curve, max_members=max_members)
    uids = [tr.add(e, s, init=None if models is None else models[i])
            for i, (e, s) in enumerate(zip(etas, seeds))]
    out = tr.run()
    return [out[u] for u in uids]


def run_trial(cfg: TrialConfig, eta: float, seed: int, data: Dataset | None = None,
              device: str | torch.device = "cpu", record_curve: bool = False,
              model=None) -> TrialResult:
    """One eta* trial: a fresh network from ``seed`` (or ``model``'s parameters) trained at
    ``eta`` under the rules of ``cfg`` (the one-member case of :func:`run_trials`).

    ``eta``: finite and > 0; ``seed``: integer >= 0 (fixes initialisation and data order).
    Raises ``ValueError`` for a bad ``eta`` or ``seed`` (checked by :func:`run_trials`).
    """
    (r,) = run_trials(cfg, [eta], [seed], data, device, record_curve,
                      models=None if model is None else [model])
    return r
