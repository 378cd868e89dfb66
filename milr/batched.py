"""Batched trials and a batched eta* search: many learning rates and seeds trained at once.

The paper's Algorithm 1 runs one trial (one learning rate, one seed) at a time. A small
network leaves most of a machine idle that way: a step of a width-64 net is a few tiny matrix
products, and the time goes into the Python and kernel-launch overhead around them. This
module trains M trials of one (data set, depth, width) configuration *together*:

* :class:`TrialBatch` keeps the weights of every member stacked, ``W[l]`` of shape
  ``(M, out, in)``, and runs forward and backward passes by hand with batched matrix products
  (``torch.baddbmm`` / ``torch.bmm``; the input layer of all members that share a minibatch
  stream as one ``torch.mm``), so one step of M members is a few large kernels. Each member
  has its own learning rate (the input layer at ``input_lr_scale * eta``), its own
  seed-derived initialisation (:func:`milr.models.make_mlp`) and data order
  (:func:`milr.train.batch_indices`), and its own stopping state. Every member follows the
  trial rules of :func:`milr.train.run_trial` (equivalence is tested in float64); divergence
  flags and the step of divergence are kept on the device and read at evaluation points, so
  on CUDA there is no host-device synchronisation per step (on the CPU, where reading a flag
  costs nothing, they are also read after every step, see ``poll_stops``). A member that
  succeeded, diverged or was cancelled stops changing and is removed from the stacks
  (compaction), so it stops costing compute. New members can join at any evaluation point.
* :func:`eta_star_batched` is a k-section search that uses the width of the batch: round one
  is the geometric scan of the bracket (all of it at once on CUDA; top-down, a window of
  points at a time, on the CPU); each later round trains up to ``k`` rates spread
  geometrically inside the current bracket [l, u] (the fewest that still close the bracket in
  the same number of rounds, :func:`kpoints`) and keeps the sub-interval between the largest
  success and the point above it, until u / l <= 1 + tol like bisection, in about
  ``log(k + 1) / log 2`` times fewer rounds; ``k = 1`` is bisection. Seeds run in the same
  batch, each with its own bracket and its own rounds (a seed starts its next round as soon
  as its current one is decided, without waiting for the other seeds).

Non-monotone outcomes (our choice, documented in the README): within a round the new bracket
is [largest success, next point above it]. The largest success is final only when every point
above it has finished, so a round waits for those; points *below* the largest success cannot
change the bracket and are cancelled at once (``reason="cancelled"``, ``success=None`` in the
trial log; they do not count as outcomes). A failure seen below a success anywhere in the log
sets ``non_interval=True``; a failure that would have come after the success that cancelled
it is not seen, exactly as the sequential search never tries rates below its bracket. With
``SearchConfig(scan="full")`` the scan points below the first success are not cancelled but
keep running in the background while the refinement proceeds, so ``eta_min`` (the lower end
of the successful interval) is measured at little extra wall time on a GPU; with
``scan="top-down"`` (the default, like the sequential search) they are cancelled.

Floating point: the batched products sum in a different order from ``torch.nn.Linear``, so a
member agrees with :func:`milr.train.run_trial` to rounding (float64: identical outcomes in
the tests; float32: to ~1e-6 per step). Near eta* SGD is chaotic (differences grow ~e-fold
every ~10 steps in the runs we measured), so a trial at a rate within ~10-20 % of eta* can end
differently under either trainer, or under the sequential trainer with 1 versus 2 threads; the
two searches then agree to the seeds' spread rather than to one bracket step (README,
Performance).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import torch

from .config import SearchConfig, TrialConfig, check_float, check_int
from .data import Dataset, load_dataset
from .models import layer_lr_scales, make_mlp
from .search import EtaStarResult, _eta_min, non_interval, scan_points
from .train import TrialResult, batch_indices, torch_dtype, val_subset

__all__ = ["TrialBatch", "run_trials_batched", "eta_star_batched", "k_section", "kpoints",
           "step_flops"]

log = logging.getLogger(__name__)

#: Relative slack in the k-section convergence test ``u / l <= (1 + tol)(1 + 1e-9)``, so that
#: a bracket split into exactly the planned number of parts is not refined again because of a
#: rounding error in ``l * (u / l) ** (j / (k + 1))``.
_REL_SLACK = 1e-9


def step_flops(cfg: TrialConfig, n0: int, n_classes: int) -> float:
    """Floating-point operations of one SGD step of one trial (multiply-add = 2 FLOPs).

    Counts the matrix products only: forward ``2 B (n0 w + (d-1) w^2 + w C)``, backward the
    weight gradients of every trained layer plus the input gradients of every layer but the
    first (``2 B`` times the same sizes). Elementwise work (ReLU, softmax, update) is left out,
    so a rate computed from this count is a lower bound of the work done (our convention,
    used by ``benchmarks/bench_search.py``).
    """
    B, w, d = cfg.batch_size, cfg.width, cfg.depth
    first = n0 * w
    rest = (d - 1) * w * w + w * n_classes
    fwd = first + rest
    bwd = (first if cfg.input_lr_scale > 0 else 0) + 2 * rest
    return 2.0 * B * (fwd + bwd)


def _relu_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Gradient through ReLU given its output: ``grad`` where ``out > 0``, else 0 (autograd's
    own kernel, so a NaN gradient behind a dead unit is 0, as in the sequential trainer)."""
    return torch.ops.aten.threshold_backward(grad, out, 0)


@dataclass
class _Member:
    """Host-side record of one member of a :class:`TrialBatch`."""

    uid: int
    eta: float
    seed: int
    tag: object = None
    start: int = -1  # global step at which it joined (-1: still queued)
    row0: int = 0  # first row of its seed's minibatch order in the flattened order
    t_start: float = math.nan
    best: float = math.nan
    final: float = math.nan
    curve: list = field(default_factory=list)


class TrialBatch:
    """Trials of one configuration, any learning rates and seeds, trained together.

    Parameters
    ----------
    cfg: the trial rules (:class:`milr.config.TrialConfig`); ``cfg.dtype`` is the compute
        dtype of weights and inputs.
    data: the data set (loaded from ``cfg.dataset`` when omitted). Training inputs, labels,
        the validation subset and every seed's minibatch order are moved to ``device`` once.
    device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (a :class:`torch.device` works too).
    record_curve: keep ``(step, val_acc)`` pairs in each :class:`TrialResult`.
    max_members: most members trained at once; members added beyond it wait in a queue and
        join as others finish. ``None``: as many as fit in ~1/4 of the device memory (CPU: 4
        GiB) at ~4 parameter-sized buffers per member plus activations (our choice).
    poll_stops: also look at the divergence flags after every step (not only at evaluation
        points) and drop diverged members at once. Default: on the CPU, where reading a flag
        costs nothing and a diverged member would otherwise cost up to ``eval_every`` steps of
        compute; off on CUDA, where it would be a host-device synchronisation per step.

    Use: :meth:`add` members, then call :meth:`advance` until :attr:`idle`; each call trains
    up to the next evaluation point of any member and returns the members that finished
    there. :meth:`cancel` stops a member (its result has ``reason="cancelled"``).

    State on the device, for M running members: ``W[l]`` ``(M, out_l, in_l)`` and ``b[l]``
    ``(M, out_l)`` in ``cfg.dtype``; ``active`` ``(M,)`` bool; ``loss0`` and ``limit``
    (``blowup_factor * loss0``, or -inf when ``loss0`` is not finite) ``(M,)`` float64; for a
    member that diverged between evaluation points, ``stop_g`` ``(M,)`` int64 (the global step
    count when it did) and ``stop_loss`` ``(M,)`` float64 (the loss that stopped it: non-finite
    means ``diverged_nonfinite``, else ``diverged_blowup``).

    Raises ``TypeError`` if ``cfg`` is not a TrialConfig, ``ValueError`` for a CUDA device on a
    machine without CUDA or ``max_members < 1``. Source: our implementation of the paper's
    trials (Sec. 3) with our documented rules (README, Method); batching is our choice.
    """

    def __init__(
        self,
        cfg: TrialConfig,
        data: Dataset | None = None,
        device: str | torch.device = "cpu",
        record_curve: bool = False,
        max_members: int | None = None,
        poll_stops: bool | None = None,
    ):
        if not isinstance(cfg, TrialConfig):
            raise TypeError(f"cfg={cfg!r} must be a milr.config.TrialConfig")
        self.cfg = cfg
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r}: CUDA is not available on this machine")
        self.dtype = torch_dtype(cfg.dtype)
        self.record_curve = bool(record_curve)
        self.poll_stops = self.device.type != "cuda" if poll_stops is None else bool(poll_stops)
        data = load_dataset(cfg.dataset) if data is None else data
        self.n0, self.n_classes = data.input_dim, data.n_classes
        self.xtr = data.x_train.to(device=self.device, dtype=self.dtype)
        self.ytr = data.y_train.to(device=self.device)
        xv, yv = val_subset(data, cfg.n_val)
        self.xv = xv.to(device=self.device, dtype=self.dtype)
        self.yv = yv.to(device=self.device)
        self.n_train = len(data.y_train)
        self.dims = [self.n0] + [cfg.width] * cfg.depth + [self.n_classes]
        self.n_layers = cfg.depth + 1
        self.scales = layer_lr_scales(cfg.depth, cfg.input_lr_scale)
        self.train_input = cfg.input_lr_scale > 0
        n_params = sum(a * b + b for a, b in zip(self.dims[:-1], self.dims[1:]))
        if max_members is None:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                budget = free // 4
            else:
                budget = 4 << 30
            itemsize = torch.empty((), dtype=self.dtype).element_size()
            act = cfg.batch_size * sum(self.dims) * 3 + cfg.n_val * max(self.dims) * 2
            per = (4 * n_params + act) * itemsize
            max_members = max(1, int(budget // per))
        self.max_members = check_int("max_members", max_members, 1)
        # seeds: row block of the flattened minibatch order, initial weights
        self._seed_index: dict[int, int] = {}
        self._order = torch.empty((0, cfg.batch_size), dtype=torch.long, device=self.device)
        self._init: dict[int, tuple[list, list]] = {}
        # running members, in stack order
        self.members: list[_Member] = []
        self.queue: list[_Member] = []
        self._cancelled: set[int] = set()
        self._uid = 0
        self.gstep = 0
        self._alloc(0)
        # statistics (benchmarks)
        self.peak_members = 0
        self.steps_run = 0  # batched steps
        self.member_steps = 0  # sum over steps of the number of stacked members
        self.syncs = 0
        self.flops_per_member_step = step_flops(cfg, self.n0, self.n_classes)

    # ------------------------------------------------------------------ state management
    def _alloc(self, m: int) -> None:
        dev, dt = self.device, self.dtype
        self.W = [torch.empty((m, b, a), device=dev, dtype=dt)
                  for a, b in zip(self.dims[:-1], self.dims[1:])]
        self.b = [torch.empty((m, b), device=dev, dtype=dt) for b in self.dims[1:]]
        self.neg_lr = torch.empty((m, self.n_layers), device=dev, dtype=dt)
        self.active = torch.empty((m,), device=dev, dtype=torch.bool)
        self.stop_g = torch.empty((m,), device=dev, dtype=torch.long)
        self.stop_loss = torch.empty((m,), device=dev, dtype=torch.float64)
        self.loss0 = torch.empty((m,), device=dev, dtype=torch.float64)
        self.limit = torch.empty((m,), device=dev, dtype=torch.float64)
        self._lr_views: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._groups: list[list[int]] = []  # [first, end, row0, start] per data stream

    def _seed_state(self, seed: int):
        if seed not in self._seed_index:
            order = batch_indices(self.n_train, self.cfg.batch_size, self.cfg.step_budget, seed)
            self._seed_index[seed] = len(self._seed_index)
            self._order = torch.cat([self._order, order.to(self.device)])
            net = make_mlp(self.n0, self.cfg.width, self.cfg.depth, self.n_classes, seed,
                           self.dtype, self.device)
            self._init[seed] = ([l.weight.detach() for l in net.layers],
                                [l.bias.detach() for l in net.layers])
        return self._seed_index[seed], self._init[seed]

    def add(self, eta: float, seed: int, tag: object = None) -> int:
        """Queue a trial at learning rate ``eta`` (> 0, finite) from ``seed`` (int >= 0).

        It joins the batch at the current step (or, when the batch is full, as soon as a slot
        frees) with its seed's fresh initialisation and data order, and runs the rules of
        :func:`milr.train.run_trial`. ``tag`` is any object returned with its result.
        Returns the member's id. Raises ``ValueError``/``TypeError`` for a bad ``eta``/``seed``.
        """
        eta = check_float("eta", eta, 0.0, lo_open=True)
        seed = check_int("seed", seed, 0)
        m = _Member(self._uid, eta, seed, tag)
        self._uid += 1
        self.queue.append(m)
        return m.uid

    def cancel(self, uid: int) -> bool:
        """Stop member ``uid`` (queued or running); True if it was found.

        A running member stops before the next step (it is removed from the stacks then, and
        its result, ``reason="cancelled"``, ``success=False``, is returned by the next
        :meth:`advance`); a queued one is dropped silently. Call between :meth:`advance` calls
        (the batch is then at an evaluation point).
        """
        for i, m in enumerate(self.queue):
            if m.uid == uid:
                del self.queue[i]
                return True
        if any(m.uid == uid for m in self.members):
            self._cancelled.add(uid)
            return True
        return False

    def _keep(self, idx: list[int]) -> None:
        """Compaction: keep only the members at positions ``idx`` of the stacks."""
        if list(idx) == list(range(len(self.members))):
            return
        sel = torch.tensor(idx, dtype=torch.long, device=self.device)
        self.W = [w.index_select(0, sel) for w in self.W]
        self.b = [b.index_select(0, sel) for b in self.b]
        for name in ("neg_lr", "active", "stop_g", "stop_loss", "loss0", "limit"):
            setattr(self, name, getattr(self, name).index_select(0, sel))
        self.members = [self.members[i] for i in idx]
        self._regroup()

    def _regroup(self) -> None:
        """Sort the stacks by data stream (seed, joining step) and list the groups.

        Members of one group see the same minibatch at every step, so the input layer of a
        whole group is one plain matrix product ``(B, n0) @ (n0, k w)`` (fewer, larger
        kernels and one gather of the inputs per group instead of per member).
        """
        keys = [(m.row0, m.start) for m in self.members]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        if order != list(range(len(keys))):
            self._keep(order)  # a permutation; calls _regroup again, now sorted
            return
        M = len(self.members)
        self._lr_views = [(self.neg_lr[:, l].reshape(M, 1, 1), self.neg_lr[:, l].reshape(M, 1))
                          for l in range(self.n_layers)]
        self._groups = []
        for i, key in enumerate(keys):
            if self._groups and keys[self._groups[-1][0]] == key:
                self._groups[-1][1] = i + 1
            else:
                self._groups.append([i, i + 1, key[0], key[1]])

    def _admit(self) -> None:
        """Move queued members into the stacks, up to ``max_members``."""
        room = self.max_members - len(self.members)
        if room <= 0 or not self.queue:
            return
        new, self.queue = self.queue[:room], self.queue[room:]
        T = self.cfg.step_budget
        W_new = [[] for _ in self.W]
        b_new = [[] for _ in self.b]
        lrs = []
        now = time.perf_counter()
        for m in new:
            si, (W0, b0) = self._seed_state(m.seed)
            for l in range(self.n_layers):
                W_new[l].append(W0[l])
                b_new[l].append(b0[l])
            m.row0 = si * T
            # same float64 products as milr.models.param_groups (lr * scale)
            lrs.append([-(m.eta * s) for s in self.scales])
            m.start, m.t_start = self.gstep, now
        dev, k = self.device, len(new)
        self.W = [torch.cat([w, torch.stack(n)]) for w, n in zip(self.W, W_new)]
        self.b = [torch.cat([b, torch.stack(n)]) for b, n in zip(self.b, b_new)]
        cat = lambda old, t: torch.cat([old, t.to(dev)])  # noqa: E731
        self.neg_lr = cat(self.neg_lr, torch.tensor(lrs, dtype=torch.float64).to(self.dtype))
        self.active = cat(self.active, torch.ones(k, dtype=torch.bool))
        self.stop_g = cat(self.stop_g, torch.zeros(k, dtype=torch.long))
        self.stop_loss = cat(self.stop_loss, torch.zeros(k, dtype=torch.float64))
        self.loss0 = cat(self.loss0, torch.full((k,), math.nan, dtype=torch.float64))
        self.limit = cat(self.limit, torch.full((k,), math.nan, dtype=torch.float64))
        self.members.extend(new)
        self.peak_members = max(self.peak_members, len(self.members))
        self._regroup()

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

    def _next_eval(self, s: int) -> int:
        e, T = self.cfg.eval_every, self.cfg.step_budget
        return min((s // e + 1) * e, T)

    def _forward(self, x: torch.Tensor, sel: torch.Tensor | None = None, keep: bool = False):
        """Logits ``(m, n, C)`` of the members ``sel`` (all if None) on inputs ``x``.

        ``x`` is ``(m, n, n0)`` or, shared by all members, ``(n, n0)``. With ``keep`` the
        post-ReLU activations ``[x, h_1, ..., h_d]`` are returned too (for the backward pass).
        """
        W = self.W if sel is None else [w.index_select(0, sel) for w in self.W]
        b = self.b if sel is None else [v.index_select(0, sel) for v in self.b]
        if x.dim() == 2:  # shared inputs: one plain matrix product for all members
            m, n = W[0].shape[0], x.shape[0]
            z = torch.mm(x, W[0].reshape(-1, self.n0).t()).view(n, m, -1).transpose(0, 1)
            z = z + b[0].unsqueeze(1)
        else:
            z = torch.baddbmm(b[0].unsqueeze(1), x, W[0].transpose(1, 2))
        hs = [x]
        for l in range(1, self.n_layers):
            h = torch.relu(z)
            if keep:
                hs.append(h)
            z = torch.baddbmm(b[l].unsqueeze(1), h, W[l].transpose(1, 2))
        return (z, hs) if keep else z

    def _step(self) -> None:
        """One SGD step of every stacked member; no host-device synchronisation.

        Forward: input layer per data-stream group as one ``torch.mm``, other layers as
        ``torch.baddbmm`` over the member dimension. Backward by hand (ReLU MLP with mean
        cross-entropy), then the SGD update ``W -= lr_m * dW`` per member and layer.
        """
        cfg, M, B, n0 = self.cfg, len(self.members), self.cfg.batch_size, self.n0
        w1 = self.dims[1]
        W0 = self.W[0]
        xs, ys, parts = [], [], []
        for a, e, row0, start in self._groups:
            idx = self._order[row0 + self.gstep - start]  # (B,) this step's minibatch
            x = self.xtr.index_select(0, idx)
            xs.append(x)
            ys.append(self.ytr.index_select(0, idx).expand(e - a, B))
            parts.append(torch.mm(x, W0[a:e].reshape(-1, n0).t()))  # (B, k w)
        z = torch.cat(parts, dim=1).view(B, M, w1).transpose(0, 1)  # (M, B, w)
        z = z + self.b[0].unsqueeze(1)
        y = torch.cat(ys).unsqueeze(2)  # (M, B, 1)
        hs = [None]
        for l in range(1, self.n_layers):
            h = torch.relu(z)
            hs.append(h)
            z = torch.baddbmm(self.b[l].unsqueeze(1), h, self.W[l].transpose(1, 2))
        logp = torch.log_softmax(z, dim=2)
        loss = -logp.gather(2, y).squeeze(2).mean(1)  # (M,), mean cross-entropy per member
        # divergence rules of run_trial, per member, in float64 like its Python floats:
        # stop if the loss is not finite or exceeds blowup_factor x the first step's loss
        l64 = loss.to(torch.float64)
        for a, e, _, start in self._groups:
            if start == self.gstep:  # first step of these members: record loss0
                self.loss0[a:e] = l64[a:e]
                lim = l64[a:e] * cfg.blowup_factor
                self.limit[a:e] = torch.where(torch.isfinite(l64[a:e]), lim, -math.inf)
        bad = ~(l64 <= self.limit)  # NaN, +inf, blowup (and any loss after a non-finite loss0)
        newly = self.active & bad
        self.stop_g = torch.where(newly, self.gstep + 1, self.stop_g)
        self.stop_loss = torch.where(newly, l64, self.stop_loss)
        self.active &= ~bad
        # backward by hand: d loss / d logits = (softmax - onehot) / B, as autograd computes it
        inv_b = 1.0 / B
        g = torch.exp(logp).mul_(inv_b)
        g.scatter_add_(2, y, torch.full(y.shape, -inv_b, dtype=g.dtype, device=g.device))
        g = torch.where(self.active.view(M, 1, 1), g, 0.0)  # stopped members: no update
        for l in range(self.n_layers - 1, 0, -1):
            dW = torch.bmm(g.transpose(1, 2), hs[l])  # (M, out, in)
            db = g.sum(1)
            dh = torch.bmm(g, self.W[l])
            g = _relu_backward(dh, hs[l])  # ReLU'(z) = 1[z > 0] = 1[h > 0], as autograd
            lr_w, lr_b = self._lr_views[l]
            self.W[l].addcmul_(dW, lr_w)
            self.b[l].addcmul_(db, lr_b)
        if self.train_input:
            lr_w, lr_b = self._lr_views[0]
            for (a, e, _, _), x in zip(self._groups, xs):
                dz = g[a:e].transpose(0, 1).reshape(B, (e - a) * w1)
                dW = torch.mm(dz.t(), x).view(e - a, w1, n0)
                W0[a:e].addcmul_(dW, lr_w[a:e])
            self.b[0].addcmul_(g.sum(1), lr_b)
        self.steps_run += 1
        self.member_steps += M
        self.gstep += 1

    @torch.no_grad()
    def _accuracy(self, sel: list[int]) -> torch.Tensor:
        """Validation accuracy ``(len(sel),)`` float64 of the members at positions ``sel``."""
        n_val, width = len(self.yv), max(self.dims[1:])
        chunk = max(1, (1 << 25) // max(1, n_val * width))
        out = []
        for i in range(0, len(sel), chunk):
            s = torch.tensor(sel[i:i + chunk], dtype=torch.long, device=self.device)
            logits = self._forward(self.xv, s)
            out.append((logits.argmax(dim=2) == self.yv).to(torch.float64).mean(1))
        return torch.cat(out)

    @torch.no_grad()
    def _params_finite(self, sel: torch.Tensor) -> torch.Tensor:
        ok = torch.ones(len(sel), dtype=torch.bool, device=self.device)
        for t in self.W + self.b:
            ok &= torch.isfinite(t.index_select(0, sel)).flatten(1).all(1)
        return ok

    def _result(self, m: _Member, success, reason: str, steps: int, loss0: float):
        return TrialResult(
            eta=float(m.eta), success=success, reason=reason, steps=int(steps),
            best_acc=float(m.best), final_acc=float(m.final), loss0=float(loss0),
            wall_time=time.perf_counter() - m.t_start, curve=list(m.curve),
        )

    @torch.no_grad()
    def advance(self) -> list[tuple[int, TrialResult, object]]:
        """Train to the next evaluation point of any member; return who finished there.

        With ``poll_stops`` it also returns early, after the step at which a member diverged.

        Returns ``[(uid, TrialResult, tag), ...]`` for every member that reached the
        threshold, diverged, exhausted its step budget or was cancelled since the last call.
        ``TrialResult.wall_time`` is the wall time from joining to finishing (shared with the
        other members). Returns ``[]`` when the batch is idle.
        """
        cfg = self.cfg
        done = []
        if self._cancelled:
            loss0 = self.loss0.cpu()
            keep = []
            for i, m in enumerate(self.members):
                if m.uid in self._cancelled:
                    done.append((m.uid, self._result(m, False, "cancelled", self._member_step(m),
                                                     float(loss0[i])), m.tag))
                else:
                    keep.append(i)
            self._cancelled = set()
            self._keep(keep)
        self._admit()
        if not self.members:
            return done
        steps = min(self._next_eval(self._member_step(m)) - self._member_step(m)
                    for m in self.members)
        for i in range(steps):
            self._step()
            if self.poll_stops and i < steps - 1 and not bool(self.active.all()):
                break  # a member diverged: free its slot now (cheap on the CPU)
        self.syncs += 1
        # one transfer of the per-member stopping state
        active, stop_g, stop_loss, loss0 = (t.cpu() for t in (self.active, self.stop_g,
                                                              self.stop_loss, self.loss0))
        keep, due = [], []
        for i, m in enumerate(self.members):
            s = self._member_step(m)
            if not active[i]:
                reason = ("diverged_blowup" if math.isfinite(float(stop_loss[i]))
                          else "diverged_nonfinite")
                done.append((m.uid, self._result(m, False, reason, int(stop_g[i]) - m.start,
                                                 float(loss0[i])), m.tag))
            elif s % cfg.eval_every == 0 or s == cfg.step_budget:
                due.append(i)
            else:
                keep.append(i)
        if due:
            sel = torch.tensor(due, dtype=torch.long, device=self.device)
            finite = self._params_finite(sel)
            acc = torch.full((len(due),), math.nan, dtype=torch.float64, device=self.device)
            ok = finite.cpu()
            fin_idx = [j for j in range(len(due)) if ok[j]]
            if fin_idx:
                acc[fin_idx] = self._accuracy([due[j] for j in fin_idx])
            acc = acc.cpu()
            for j, i in enumerate(due):
                m = self.members[i]
                s = self._member_step(m)
                if not ok[j]:
                    done.append((m.uid, self._result(m, False, "diverged_nonfinite", s,
                                                     float(loss0[i])), m.tag))
                    continue
                a = float(acc[j])
                m.final = a
                m.best = a if math.isnan(m.best) else max(m.best, a)
                if self.record_curve:
                    m.curve.append((s, a))
                if a >= cfg.threshold:
                    done.append((m.uid, self._result(m, True, "reached_threshold", s,
                                                     float(loss0[i])), m.tag))
                elif s == cfg.step_budget:
                    done.append((m.uid, self._result(m, False, "budget_exhausted", s,
                                                     float(loss0[i])), m.tag))
                else:
                    keep.append(i)
        self._keep(sorted(keep))
        return done


def run_trials_batched(
    cfg: TrialConfig,
    etas: Iterable[float],
    seeds: Iterable[int],
    data: Dataset | None = None,
    device: str | torch.device = "cpu",
    record_curve: bool = False,
    max_members: int | None = None,
) -> list[TrialResult]:
    """Run the trials ``(etas[i], seeds[i])`` together; results in the order given.

    The batched counterpart of calling :func:`milr.train.run_trial` once per pair: the same
    rules, the same initialisation and data order per seed, the same outcome (tested in
    float64). ``etas`` and ``seeds`` must have the same length (``ValueError`` otherwise).
    """
    etas, seeds = list(etas), list(seeds)
    if len(etas) != len(seeds):
        raise ValueError(f"etas ({len(etas)}) and seeds ({len(seeds)}) must have equal length")
    batch = TrialBatch(cfg, data, device, record_curve=record_curve, max_members=max_members)
    uids = [batch.add(e, s) for e, s in zip(etas, seeds)]
    out: dict[int, TrialResult] = {}
    while not batch.idle:
        for uid, res, _ in batch.advance():
            out[uid] = res
    return [out[u] for u in uids]


# ---------------------------------------------------------------------- the search
def kpoints(lo: float, hi: float, tol: float, k_max: int, budget: int) -> list[float]:
    """Learning rates of one k-section round inside the bracket ``(lo, hi)``, ascending.

    The rounds still needed with up to ``k_max`` points each are ``n = ceil(log L /
    log(k_max + 1))`` with ``L = log(hi / lo) / log(1 + tol)``; this round uses the fewest
    points ``k`` that still finish in ``n`` rounds, ``k = ceil(L^(1/n)) - 1`` (at least 1, at
    most ``k_max`` and ``budget``), placed at ``lo * (hi / lo)^(j / (k + 1))``, j = 1..k
    (our choice: it reaches the final bracket ratio of bisection in fewer rounds without
    training more rates than that needs). Returns [] if the bracket is already closed.
    """
    ratio = math.log(hi / lo) / math.log1p(tol)
    if ratio <= 1 + _REL_SLACK or budget < 1:
        return []
    n = max(1, math.ceil(math.log(ratio) / math.log(k_max + 1) - _REL_SLACK))
    k = math.ceil(ratio ** (1.0 / n) - _REL_SLACK) - 1
    k = max(1, min(k, k_max, budget))
    r = hi / lo
    return [lo * r ** (j / (k + 1)) for j in range(1, k + 1)]


class _SeedSearch:
    """The k-section search of one seed (see the module docstring)."""

    def __init__(self, seed: int, search: SearchConfig, k_max: int, window: int | None):
        self.seed, self.search, self.k_max = seed, search, k_max
        self.window = window
        self.pending: list[float] = []  # scan points not yet started (descending)
        self.log: list[dict] = []
        self.outcomes: list[tuple[float, bool]] = []
        self.n_started = 0
        self.lo = self.hi = math.nan
        self.status: str | None = None
        self.phase = "scan"
        self.round = 0
        self.running: dict[int, float] = {}  # current round, uid -> eta
        self.points: list[float] = []  # current round's points
        self.best: float = math.nan  # largest success of the current round (or its baseline)
        self.background: dict[int, float] = {}  # full scan: points below the first success
        self.uid_round: dict[int, int] = {}
        self.t0 = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.status is not None and not self.running and not self.background

    def _launch(self, batch: TrialBatch, p: float) -> None:
        uid = batch.add(p, self.seed, tag=self)
        self.running[uid] = p
        self.uid_round[uid] = self.round
        self.points.append(p)
        self.n_started += 1

    def _start_round(self, batch: TrialBatch, points: list[float], baseline: float) -> None:
        self.round += 1
        self.points = []
        self.best = baseline
        self.running = {}
        for p in points:
            self._launch(batch, p)

    def start(self, batch: TrialBatch) -> None:
        """Round one: the geometric scan of the bracket, from the top.

        With ``scan="top-down"`` at most ``window`` scan points run at once; the next lower
        point starts when one of them fails, none once one succeeds. This changes the cost,
        never the outcome: every point at or above the largest success is still tried.
        """
        s = self.search
        pts = scan_points(s.eta_lo, s.eta_hi, s.scan_factor)[: s.max_trials]
        n = len(pts) if (s.scan == "full" or self.window is None) else self.window
        self._start_round(batch, pts[:n], math.nan)
        self.pending = pts[n:]

    def _refill(self, batch: TrialBatch) -> None:
        """Scan window: start lower scan points while no success has been seen."""
        while (self.phase == "scan" and self.pending and math.isnan(self.best)
               and len(self.running) < self.window):
            self._launch(batch, self.pending.pop(0))

    def on_result(self, uid: int, res: TrialResult, batch: TrialBatch) -> None:
        entry = res.to_dict()
        entry["round"] = self.uid_round.get(uid, self.round)
        if res.reason == "cancelled":
            entry["success"] = None
        else:
            self.outcomes.append((res.eta, bool(res.success)))
        self.log.append(entry)
        if uid in self.background:
            del self.background[uid]
            return
        self.running.pop(uid, None)
        if res.success and not res.eta <= self.best:
            self.best = res.eta
            self._cancel_below(batch)
        if self.pending:
            self._refill(batch)

    def _cancel_below(self, batch: TrialBatch) -> None:
        """Points below the round's largest success cannot change the bracket."""
        for uid, eta in list(self.running.items()):
            if eta < self.best:
                del self.running[uid]
                if self.phase == "scan" and self.search.scan == "full":
                    self.background[uid] = eta
                else:
                    batch.cancel(uid)

    def _decided(self) -> bool:
        if math.isnan(self.best):
            return not self.running and not self.pending
        return all(eta < self.best for eta in self.running.values())

    def update(self, batch: TrialBatch) -> None:
        """Close the current round if it is decided and start the next one."""
        if self.status is not None or not self._decided():
            return
        s = self.search
        above = [p for p in self.points if p > self.best] if not math.isnan(self.best) else []
        self.pending = []
        if self.phase == "scan":
            if math.isnan(self.best):
                self.status = "no_success"
                return
            if self.best >= s.eta_hi:
                self.phase = "expand"
                budget = s.max_trials - self.n_started
                pts = [s.eta_hi * s.scan_factor ** j
                       for j in range(1, min(s.max_expand, budget) + 1)]
                if not pts:
                    self.lo, self.hi = s.eta_hi, math.inf
                    self.status = ("upper_bound_succeeded" if s.max_expand == 0
                                   else "max_trials")
                    return
                self._start_round(batch, pts, s.eta_hi)
                return
            self.lo, self.hi = self.best, min(above)
        elif self.phase == "expand":
            if not above:
                self.lo, self.hi = self.best, math.inf
                n_exp = len(self.points)
                self.status = ("upper_bound_succeeded" if n_exp >= s.max_expand
                               else "max_trials")
                return
            self.lo, self.hi = self.best, min(above)
        else:  # refine
            self.lo, self.hi = self.best, min(above + [self.hi])
        self.phase = "refine"
        if self.hi / self.lo <= (1 + s.tol) * (1 + _REL_SLACK):
            self.status = "converged"
            return
        pts = kpoints(self.lo, self.hi, s.tol, self.k_max, s.max_trials - self.n_started)
        if not pts:
            self.status = "max_trials"
            return
        self._start_round(batch, pts, self.lo)

    def result(self) -> EtaStarResult:
        lo = self.lo
        return EtaStarResult(
            seed=int(self.seed),
            eta_star=float(lo),
            bracket_lo=float(lo),
            bracket_hi=float(self.hi),
            status=self.status,
            eta_min=_eta_min(self.outcomes, lo) if not math.isnan(lo) else math.nan,
            non_interval=non_interval(self.outcomes),
            n_trials=len(self.log),
            wall_time=time.perf_counter() - self.t0,
            trials=self.log,
        )


def k_section(batch, search: SearchConfig, seeds: list[int], k: int,
              scan_window: int | None = None) -> list[EtaStarResult]:
    """Drive the k-section searches of ``seeds`` on ``batch``; one result per seed, in order.

    ``batch`` is a :class:`TrialBatch` or any object with its protocol (``add(eta, seed,
    tag) -> uid``, ``cancel(uid)``, ``advance() -> [(uid, result, tag)]``, ``idle``); tests
    drive the search logic with a synthetic oracle that way. See :func:`eta_star_batched`.
    """
    searches = [_SeedSearch(s, search, k, scan_window) for s in seeds]
    for s in searches:
        s.start(batch)
    while not all(s.done for s in searches):
        if batch.idle:  # pragma: no cover (guard against a logic error looping forever)
            raise RuntimeError("batched search stalled: no trial running, search not done")
        for uid, res, owner in batch.advance():
            owner.on_result(uid, res, batch)
        for s in searches:
            s.update(batch)
    while not batch.idle:  # collect the records of the last cancelled trials
        for uid, res, owner in batch.advance():
            owner.on_result(uid, res, batch)
    return [s.result() for s in searches]


def eta_star_batched(
    cfg: TrialConfig,
    search: SearchConfig | None = None,
    seeds: Iterable[int] = (0,),
    data: Dataset | None = None,
    device: str | torch.device = "cpu",
    k: int | None = None,
    max_members: int | None = None,
    stats: dict | None = None,
    scan_window: int | None = None,
) -> list[EtaStarResult]:
    """Estimate eta* for each seed with the batched k-section search (see module docstring).

    Same inputs and outputs as :func:`milr.search.eta_star` (which dispatches here for
    ``SearchConfig(method="batched")``): one :class:`milr.search.EtaStarResult` per seed, in
    the order given, with the same fields and a full trial log (entries carry their ``round``;
    cancelled trials have ``success=None``). ``n_trials`` counts every trial started,
    cancelled ones included.

    Parameters
    ----------
    cfg: trial rules; ``cfg.dtype`` is the compute dtype.
    search: search rules; ``search.k`` (rates per refinement round) unless ``k`` is given.
        ``eta_lo``, ``eta_hi``, ``scan_factor``, ``scan``, ``max_expand``, ``max_trials`` and
        ``tol`` mean what they mean for the sequential search.
    seeds: integers >= 0, trained in the same batch, each with its own bracket and rounds.
    data: the data set (loaded from ``cfg.dataset`` if omitted); moved to ``device`` once.
    device: ``"cpu"`` or ``"cuda[:i]"``. On CUDA no host-device synchronisation happens
        between evaluation points.
    max_members: cap on trials trained at once (see :class:`TrialBatch`).
    scan_window: with ``scan="top-down"``, how many scan points of a seed run at once
        (default: all on CUDA, where extra members are nearly free; 1 on the CPU, where each
        costs its compute: the scan then tries the same points as the sequential top-down
        scan, and a point that diverges frees its slot within a step). It changes the cost
        and the cancelled entries of the log, never ``eta_star``, the bracket or the status.
    stats: if a dict is given, it receives the batch's counters (``steps_run``,
        ``member_steps``, ``syncs``, ``flops``, ``max_members_seen``).

    The final bracket satisfies ``u / l <= (1 + tol)(1 + 1e-9)`` (status ``converged``),
    like bisection's ``u / l <= 1 + tol``. Raises ``ValueError`` for a negative seed, an empty
    seed list or ``k < 1``.
    """
    search = SearchConfig() if search is None else search
    seeds = [check_int("seed", s, 0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds} must not repeat")
    k = search.k if k is None else check_int("k", k, 1)
    if scan_window is None:
        scan_window = None if torch.device(device).type == "cuda" else 1
    else:
        scan_window = check_int("scan_window", scan_window, 1)
    batch = TrialBatch(cfg, data, device, max_members=max_members)
    out = k_section(batch, search, seeds, k, scan_window)
    if stats is not None:
        stats.update(steps_run=batch.steps_run, member_steps=batch.member_steps,
                     syncs=batch.syncs, flops=batch.member_steps * batch.flops_per_member_step,
                     max_members_seen=batch.peak_members)
    for r in out:
        log.debug("batched eta* %s d=%d w=%d seed=%d -> %.4g (%s, %d trials)", cfg.dataset,
                  cfg.depth, cfg.width, r.seed, r.eta_star, r.status, r.n_trials)
    return out
