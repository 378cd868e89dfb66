"""milr command line: eta* and lambda_1 of one configuration, sweeps over grids, their status.

Examples:

    milr eta-star --dataset gaussian --depth 2 --width 64 --seeds 0 1
    milr sharpness --dataset fashion-mnist --depth 4 --width 256 --seeds 0
    milr sweep configs/quick.yaml                       # local processes, one per core
    milr sweep configs/quick.yaml --dask-workers 8      # a LocalCluster on this machine
    milr sweep configs/paper.yaml --scheduler tcp://10.0.0.5:8786 --device cuda
    milr status configs/quick.yaml --list failed
    milr trials --dataset fashion-mnist --depth 4 --width 128 --seed 0   # a cached search
    milr data --preset quick                            # what `make data` runs
    milr download mnist                                 # MNIST files (needs network)

Every finished task is written to the results store at once; rerun the same command after an
interruption and only the missing tasks are computed. ``python -m milr`` is the same program.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import signal
import sys
import tempfile
import textwrap
import time
import warnings

import pandas as pd

from .conditions import run_condition_sweeps
from .config import SearchConfig, TrialConfig, check_int
from .data import (DATASETS, DEFAULT_THRESHOLDS, DOWNLOADS, DataNotFoundError, display_name,
                   download)
from .presets import PRESETS
from .sharpness import SharpnessTask, sharpness_tasks
from .store import Store, StoreCollisionError, code_version, describe_claim
from .sweep import SweepError, eta_star_tasks, run_sweep, sweep_status, task_label
from .trials import preset_configs, search_summary, trial_table
from .validate import build_tasks, load_sweep_file, spec_from_preset

log = logging.getLogger("milr")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# -- logging and signals ----------------------------------------------------------------------

class _AtLeast(logging.Filter):
    """Passes records of ``level`` and above (a filter, unlike a handler's level, is kept by
    tqdm's logging redirect)."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record) -> bool:
        return record.levelno >= self.level


def _warning_as_log_line(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` during a command: one log line (``WARNING milr: ...``),
    written through the progress bars like every other log line."""
    log.warning("%s: %s", category.__name__, message)


@contextlib.contextmanager
def _logging_and_signals(verbose: int = 0, log_file: str | None = None):
    """Set up logging (:func:`_setup_logging`) and SIGTERM handling for one command, and put
    both back afterwards (``main`` may be called from Python, e.g. in tests or notebooks).
    While the command runs, log lines and warnings go to stderr through
    ``tqdm.contrib.logging.logging_redirect_tqdm``, so they never break a progress bar."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    milr_log = logging.getLogger("milr")
    saved = (list(milr_log.handlers), milr_log.level, milr_log.propagate)
    try:
        old_term = signal.getsignal(signal.SIGTERM)
    except ValueError:  # pragma: no cover
        old_term = None
    old_showwarning = warnings.showwarning
    added = _setup_logging(verbose, log_file)
    _sigterm_as_interrupt()
    try:
        warnings.showwarning = _warning_as_log_line
        with logging_redirect_tqdm(loggers=[milr_log]):
            yield
    finally:
        warnings.showwarning = old_showwarning
        for h in added:
            milr_log.removeHandler(h)
            h.close()
        for h in saved[0]:
            milr_log.addHandler(h)
        milr_log.setLevel(saved[1])
        milr_log.propagate = saved[2]
        if old_term is not None:
            try:
                signal.signal(signal.SIGTERM, old_term)
            except ValueError:  # pragma: no cover - not the main thread
                pass


def _setup_logging(verbose: int = 0, log_file: str | None = None) -> list[logging.Handler]:
    """stderr: warnings (``-v`` info, ``-vv`` debug: one line per trial); ``--log-file``:
    everything at debug level, with timestamps and process ids (pool workers append too).
    Returns the handlers added to the ``milr`` logger."""
    milr_log = logging.getLogger("milr")
    for h in list(milr_log.handlers):
        milr_log.removeHandler(h)
    level = logging.WARNING if verbose <= 0 else (logging.INFO if verbose == 1
                                                  else logging.DEBUG)
    h = logging.StreamHandler(sys.stderr)
    h.addFilter(_AtLeast(level))
    h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    milr_log.addHandler(h)
    lowest = level
    if log_file:
        fh = logging.FileHandler(log_file)
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter(
            "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        milr_log.addHandler(fh)
        lowest = logging.DEBUG
    milr_log.setLevel(lowest)
    milr_log.propagate = False
    return list(milr_log.handlers)


def _sigterm_as_interrupt():
    """SIGTERM (e.g. a batch system ending a job) stops a sweep like Ctrl-C does."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a notebook's thread)
        pass


# -- options ----------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``milr eta-star: error: argument --width: '2.5' is not
    an integer >= 1; see milr eta-star --help`` (no usage block), exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())}; see "
                              f"{self.prog} --help\n")


def _typed(kind: type, allowed: str):
    """An argparse ``type`` converting to ``kind`` whose error names what is allowed."""
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None

    convert.__name__ = kind.__name__
    return convert


_INT, _NUMBER = _typed(int, "an integer"), _typed(float, "a number")


def _number_or_off(text: str):
    """A number, or ``off`` (kept as the string: the configuration class turns it into None)."""
    if text.strip().lower() == "off":
        return "off"
    return _typed(float, "a number or 'off'")(text)


#: Fields whose rule can be switched off on the command line (``--blowup-factor off``).
_OFF_FIELDS = ("blowup_factor",)


def _add_run_options(p: argparse.ArgumentParser, default_workers: str = "auto") -> None:
    g = p.add_argument_group("where results go and how tasks run")
    g.add_argument("--store", metavar="DIR", default=None,
                   help="results directory (default: the sweep file's 'store', else the "
                        "repository's data/results)")
    g.add_argument("--device", default=None,
                   help="torch device: cpu (default), cuda, cuda:N or mps")
    g.add_argument("--recompute", action="store_true",
                   help="recompute and overwrite finished records too")
    g.add_argument("--workers", default=default_workers, metavar="N|auto",
                   help=f"local worker processes (default {default_workers}; 1 = in this "
                        "process; auto = one per usable core)")
    g.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="send tasks to a running dask.distributed scheduler, e.g. "
                        "tcp://10.0.0.5:8786")
    g.add_argument("--dask-workers", type=_typed(int, "an integer >= 1"), metavar="N",
                   default=None,
                   help="start a dask LocalCluster of N worker processes on 127.0.0.1")
    g.add_argument("--torch-threads", type=_typed(int, "an integer >= 1"), metavar="N",
                   default=1,
                   help="torch threads per task (default 1: CPU results then do not depend on "
                        "the machine or backend)")
    g.add_argument("--no-group-seeds", action="store_true",
                   help="batched eta* search: one call per seed instead of all seeds of a "
                        "configuration in one batch (the default)")
    g.add_argument("--errors", choices=("continue", "raise"), default="continue",
                   help="on a failing task: record it and go on (default), or stop")
    g.add_argument("--lease", type=_typed(float, "a number of seconds > 0"), metavar="SECONDS",
                   default=None, dest="lease_s",
                   help="a task claimed by a sweep that has not refreshed its claim for this "
                        "long is taken over by others (default $MILR_LEASE_S, else 300)")
    o = p.add_argument_group("output")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bars (CI)")
    o.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v: one line per finished task; -vv: one line per trial")
    o.add_argument("--log-file", metavar="FILE", default=None,
                   help="append a debug-level log (every trial of every task) to FILE")


def _field_type(f: dataclasses.Field):
    t = str(f.type)
    if "bool" in t:
        return bool
    if "int" in t and "float" not in t:
        return int
    if "float" in t:
        return float
    return str


def _preset_values(section: str, name: str, default) -> str:
    """``; quick preset: 2, paper preset: 8`` for the presets whose ``section`` (trial,
    search, sharpness) sets ``name`` to something other than ``default``."""
    out = []
    for preset in ("quick", "paper"):
        value = PRESETS[preset].get(section, {}).get(name, default)
        if section == "sharpness" and name == "input_lr_scale":  # lambda_1 of the trials' nets
            value = PRESETS[preset].get("trial", {}).get(name, default)
        if value != default:
            out.append(f"{preset} preset: {value}")
    return "; " + ", ".join(out) if out else ""


def _add_dataclass_options(p, cls, skip=(), group_title=None, helps=None,
                           section=None, description=None) -> list[str]:
    """One ``--option`` per dataclass field (so the command line cannot drift from the
    configuration classes), each with its plain description from ``helps``, its default
    and, where a preset of ``section`` differs, the preset's value. Returns the field names
    added."""
    g = p.add_argument_group(group_title or cls.__name__, description)
    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_"):
            continue
        typ = _field_type(f)
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-")
        h = (helps or {})[f.name]
        if default is not None:
            presets = _preset_values(section, f.name, default) if section else ""
            h = f"{h} (default {default}{presets})"
        if typ is bool:
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=h)
        else:
            kind = {int: _INT, float: _NUMBER}.get(typ, typ)
            metavar = {int: "N", float: "X"}.get(typ, "NAME")
            if f.name in _OFF_FIELDS:
                kind, metavar = _number_or_off, "X|off"
            g.add_argument(flag, dest=f.name, type=kind, default=None, metavar=metavar,
                           help=h)
        names.append(f.name)
    return names


_TRIAL_HELP = {
    "threshold": "threshold accuracy t a trial must reach, chance < t < 1 (default: the data "
                 "set's: " + ", ".join(f"{display_name(k)} {v:g}"
                                       for k, v in DEFAULT_THRESHOLDS.items()) + ")",
    "batch_size": "SGD minibatch size", "step_budget": "SGD steps before a trial fails",
    "eval_every": "steps between validation-accuracy checks",
    "n_val": "size of the fixed validation subset, at most the split's rows",
    "input_lr_scale": "the input layer trains at this x eta, in [0, 1]",
    "blowup_factor": "a trial diverges when a batch loss exceeds this x the initial loss, > 1; "
                     "off: only non-finite losses stop a trial",
    "dtype": "float32 or float64",
    "readout_gain": "read-out weights ~ N(0, readout_gain / fan_in), > 0 (2: He like the "
                    "hidden layers)",
    "bias": "zero-initialised, trained biases in every layer (--no-bias: none)",
}
_SEARCH_HELP = {
    "eta_lo": "lower end of the initial bracket, > 0",
    "eta_hi": "upper end of the initial bracket, > eta-lo",
    "tol": "stop when u/l <= 1 + tol", "scan_factor": "ratio of the coarse scan, > 1",
    "scan": "top-down (stop at the first success) or full (every scan point: also measures "
            "eta_min and non_interval, shown only then)",
    "max_expand": "times eta-hi may grow when it succeeds",
    "max_trials": "cap on trials per search",
    "method": "bisect (Algorithm 1, one trial at a time) or batched (many trials in one batch)",
    "k": "batched only: learning rates per refinement round, in [1, 64]",
}
_SHARP_HELP = {
    "n_subset": "size of the fixed training subset of every HVP, at most the split's rows",
    "input_lr_scale": "input-layer rate factor of the effective sharpness, in [0, 1]",
    "tol": "relative tolerance of the eigensolver, in (0, 1)",
    "solver": "lanczos or power", "solver_seed": "seed of the start vector",
    "ncv": "Lanczos basis size, >= 3",
    "gauss_newton": "also compute the Gauss-Newton part's top eigenvalue",
    "weights_dtype": "dtype the network is built in (float32 or float64)",
    "hvp_dtype": "dtype of the Hessian-vector products (float32 or float64)",
    "readout_gain": "read-out weights ~ N(0, readout_gain / fan_in), > 0 (the trials' value)",
    "bias": "zero-initialised biases in every layer (--no-bias: none; the trials' value)",
    "chunk_size": "samples per pass (memory only, not part of the record; default: all)",
}
_DEFAULTS_NOTE = textwrap.fill(
    "The defaults are the library's (its configuration classes), not a preset's; where the "
    "quick or paper preset (configs/*.yaml, milr.presets) differs, its value is shown.", 78)


def _given(args, names) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _run_kwargs(args) -> dict:
    dask = args.scheduler is not None or args.dask_workers is not None
    return dict(workers=1 if dask else args.workers, scheduler=args.scheduler,
                dask_workers=args.dask_workers, torch_threads=args.torch_threads,
                errors=args.errors, group_seeds=not args.no_group_seeds,
                lease_s=args.lease_s)


# -- commands ---------------------------------------------------------------------------------

def _json_scalar(v):
    """Strict JSON: a non-finite float (NaN: e.g. no eta_min seen) becomes null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _one_config(args, tasks, store: Store, result_cols) -> int:
    import pandas as pd

    t0 = time.perf_counter()
    df = run_sweep(tasks, store, recompute=args.recompute, device=args.device or "cpu",
                   progress=not args.quiet, **_run_kwargs(args))
    st = sweep_status(tasks, store)
    temporary = getattr(args, "no_store", False)
    if args.json:
        for t in tasks:
            rec = store.get(t.kind, t.record_config())
            if rec is not None:
                line = {"config": rec["config"], "result": {
                    k: _json_scalar(v) for k, v in rec["result"].items()
                    if not isinstance(v, (list, dict))}}
                if not temporary:  # --no-store: the record is deleted on return
                    line["path"] = str(store.path(t.kind, t.record_config()))
                print(json.dumps(line, default=str, allow_nan=False))
    elif len(df):
        cols = [c for c in ["seed"] + result_cols if c in df.columns]
        table = df[cols].rename(columns={"wall_time": "wall_time_s"})
        if "wall_time_s" in table:
            table["wall_time_s"] = table["wall_time_s"].round(2)
        with pd.option_context("display.width", 120, "display.max_columns", 20):
            print(table.to_string(index=False))
    if not args.json:
        where = "not stored (--no-store)" if temporary else f"records in {store.root}"
        print(f"{st.summary()} in {time.perf_counter() - t0:.1f} s; {where}")
    return EXIT_OK if st.done == st.total else EXIT_FAILED


def _store_for(args, default: str | None = None):
    """(Store, cleanup) honouring --no-store (a temporary directory, deleted afterwards)."""
    if getattr(args, "no_store", False):
        tmp = tempfile.TemporaryDirectory(prefix="milr-")
        return Store(tmp.name), tmp.cleanup
    return Store(args.store or default), (lambda: None)


def _check_network_args(args) -> None:
    """One configuration: depth, width and seeds named as the user typed them."""
    check_int("depth", args.depth)
    check_int("width", args.width)
    for s in args.seeds:
        check_int("seed", s, 0)


def cmd_eta_star(args) -> int:
    """eta* of one configuration: one record per seed (with the batched search the seeds run
    in one batch)."""
    _check_network_args(args)
    tasks = eta_star_tasks([args.dataset], [args.depth], [args.width], args.seeds,
                           trial=_given(args, args._trial_fields),
                           search=_given(args, args._search_fields), min_width_over_depth=0)
    # eta_min and non_interval are measured by the full scan only (always empty otherwise)
    full = tasks[0].search.scan == "full"
    cols = ["eta_star", "bracket_lo", "bracket_hi", "status"] + (
        ["eta_min", "non_interval"] if full else []) + ["n_trials", "wall_time"]
    store, cleanup = _store_for(args)
    try:
        return _one_config(args, tasks, store, cols)
    finally:
        cleanup()


def cmd_sharpness(args) -> int:
    """lambda_1 at initialisation of one configuration, one network per seed."""
    _check_network_args(args)
    tasks = sharpness_tasks([args.dataset], [args.depth], [args.width], args.seeds,
                            min_width_over_depth=0, **_given(args, args._sharp_fields))
    gn = ["lambda_1_gn"] if tasks[0].gauss_newton else []  # empty without --gauss-newton
    store, cleanup = _store_for(args)
    try:
        return _one_config(args, tasks, store, ["lambda_1", "lambda_1_eff"] + gn + [
            "lambda_1_converged", "loss0", "wall_time"])
    finally:
        cleanup()


def cmd_sweep(args) -> int:
    """Every task of a sweep file that is not in the store yet."""
    spec = load_sweep_file(args.config)
    tasks = build_tasks(spec)
    store = Store(args.store or spec.store)
    st = sweep_status(tasks, store)
    print(f"sweep {args.config} ({spec.kind}): {st.total} tasks, {st.summary()}; store "
          f"{store.root}", file=sys.stderr)
    if args.dry_run:
        return EXIT_OK
    t0 = time.perf_counter()
    run_sweep(tasks, store, recompute=args.recompute, device=args.device or spec.device or
              "cpu", progress=not args.quiet, **_run_kwargs(args))
    st = sweep_status(tasks, store)
    print(f"{st.summary()} after {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if st.failed:
        print(f"see the errors with: milr status {args.config} --list failed", file=sys.stderr)
    return EXIT_OK if st.done == st.total else EXIT_FAILED


def cmd_status(args) -> int:
    """Done / pending / failed / corrupt counts of a sweep file's tasks in a store."""
    spec = load_sweep_file(args.config)
    tasks = build_tasks(spec)
    store = Store(args.store or spec.store)
    st = sweep_status(tasks, store)
    running = []  # not done, and claimed by a live sweep now
    for state in ("pending", "failed", "corrupt"):
        for t in st.tasks[state]:
            held = store.claim_holder(t.kind, t.record_config())
            if held is not None and held[1] == "live":
                running.append(held[0])
    if args.json:
        print(json.dumps({"config": str(args.config), "kind": spec.kind,
                          "store": str(store.root), **st.to_dict(), "running": len(running)}))
    else:
        print(f"{args.config} ({spec.kind}) in {store.root}:")
        for k in ("done", "pending", "failed", "corrupt"):
            print(f"  {k:<8}{getattr(st, k):>6}")
        print(f"  {'total':<8}{st.total:>6}")
        versions: dict = {}
        for t in st.tasks["done"]:
            v = str(store.get(t.kind, t.record_config())["meta"].get("code_version"))
            versions[v] = versions.get(v, 0) + 1
        for v, n in sorted(versions.items()):
            print(f"  made by {v}: {n}")
        if running:
            owners = sorted({describe_claim(i) for i in running})
            print(f"  ({len(running)} of the unfinished being computed now by "
                  f"{'; '.join(owners[:3])}{' ...' if len(owners) > 3 else ''})")
        stale = store.stale_temp_files()
        if stale:
            print(f"  ({len(stale)} leftover temporary file(s) of killed writers, e.g. "
                  f"{stale[0]}; harmless, delete them when no sweep runs)")
    for state in args.list or []:
        for t in st.tasks[state]:
            cfg = t.record_config()
            line = f"{state}\t{task_label(t)}\t{store.path(t.kind, cfg)}"
            if state == "failed":
                note = store.get_failure(t.kind, cfg)
                if note is not None:
                    line += "\t" + note["failure"]["error"].splitlines()[0][:200]
            elif state == "corrupt":
                _, why = store._parse(store.path(t.kind, cfg), t.kind)
                line += "\t" + why
            print(line)
    return EXIT_OK


def _strict(x):
    """JSON-ready copy with non-finite floats as null (strict JSON)."""
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return _json_scalar(x)


def cmd_trials(args) -> int:
    """The trials of one cached eta* search (read from the store; nothing is computed)."""
    _check_network_args(argparse.Namespace(depth=args.depth, width=args.width,
                                           seeds=[args.seed]))
    overrides = {k: getattr(args, k) for k in ("threshold", "step_budget", "input_lr_scale",
                                               "readout_gain", "bias", "blowup_factor")
                 if getattr(args, k) is not None}
    task, stask = preset_configs(args.preset, args.dataset, args.depth, args.width, args.seed,
                                 overrides)
    store = Store(args.store)
    rec = store.get(task.kind, task.record_config())
    label = (f"{args.dataset}, depth {args.depth}, width {args.width}, seed {args.seed} "
             f"({args.preset} preset rules{', ' + str(overrides) if overrides else ''})")
    if rec is None:
        print(f"milr trials: no cached eta* search of {label} in {store.root}; compute it "
              f"with `milr data --preset {args.preset}` or `milr eta-star` with the preset's "
              "rules", file=sys.stderr)
        return EXIT_FAILED
    srec = store.get(stask.kind, stask.record_config())
    lam = srec["result"] if srec is not None else {}
    summary = search_summary(rec)
    if args.json:
        out = {"config": rec["config"], "result": summary, "trials": rec["result"]["trials"],
               "path": str(store.path(task.kind, task.record_config())),
               "lambda_1": lam.get("lambda_1"), "lambda_1_eff": lam.get("lambda_1_eff")}
        print(json.dumps(_strict(out), default=str, allow_nan=False))
        return EXIT_OK
    print(f"eta* search of {label}")
    print(f"  record: {store.path(task.kind, task.record_config())}")
    print(f"  eta* = {summary['eta_star']:.4g}, final bracket [{summary['bracket_lo']:.4g}, "
          f"{summary['bracket_hi']:.4g}], status {summary['status']}, "
          f"{summary['n_trials']} trials")
    if lam.get("lambda_1_eff"):
        print(f"  2/lambda_1 = {2 / lam['lambda_1']:.4g} (plain Hessian), "
              f"{2 / lam['lambda_1_eff']:.4g} (effective, input layer at "
              f"{task.trial.input_lr_scale:g} x eta) from the cached lambda_1 record")
    else:
        print("  lambda_1: no cached record of this network")
    df = trial_table(rec).rename(columns={"eta": "eta (lr)", "steps": "stop step",
                                          "best_acc": "best acc", "final_acc": "final acc"})
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("outcome: success = reached t; diverged = non-finite or blown-up loss; budget "
          "exhausted = below t after the step budget; cancelled = stopped by the batched "
          "search (could no longer move the bracket). round 1 = the scan.")
    return EXIT_OK


def cmd_data(args) -> int:
    """The cached results of a preset (what ``make data`` runs): the same sweep machinery."""
    overrides = {"datasets": args.datasets} if args.datasets else {}
    tasks = build_tasks(spec_from_preset(args.preset, **overrides))
    if code_version().endswith("+dirty") and not args.allow_dirty:
        raise ValueError(f"the working tree has uncommitted changes in milr/ ({code_version()}):"
                         " records would not say which code made them; commit first, or pass "
                         "--allow-dirty")
    t0 = time.perf_counter()
    df = run_sweep(tasks, Store(args.store), recompute=args.recompute,
                   device=args.device or "cpu", progress=not args.quiet, **_run_kwargs(args))
    print(f"eta*: {len(df)} of {len(tasks)} records in {time.perf_counter() - t0:.1f} s")
    ok = len(df) == len(tasks)
    # lambda_1 at initialisation of the same networks (the preset's "sharpness" options)
    sharp = build_tasks(spec_from_preset(args.preset, kind="sharpness", **overrides))
    t0 = time.perf_counter()
    df = run_sweep(sharp, Store(args.store), recompute=args.recompute,
                   device=args.device or "cpu", progress=not args.quiet, **_run_kwargs(args))
    print(f"lambda_1: {len(df)} of {len(sharp)} records in {time.perf_counter() - t0:.1f} s")
    ok = ok and len(df) == len(sharp)
    # the condition and claim figures (milr.conditions; the preset's "data_figures")

    for fig, (n_done, n_all, secs) in run_condition_sweeps(
            args.preset, Store(args.store), recompute=args.recompute,
            device=args.device or "cpu", progress=not args.quiet,
            datasets=args.datasets or None, **_run_kwargs(args)).items():
        print(f"{fig}: {n_done} of {n_all} records in {secs:.1f} s")
        ok = ok and n_done == n_all
    return EXIT_OK if ok else EXIT_FAILED


def cmd_download(args) -> int:
    """Fetch a data set's official files (checksums verified) where the loaders find them."""
    dest = download(args.name, args.dir, mirrors=args.mirror or None,
                    report=lambda line: print(line, file=sys.stderr))
    print(f"{args.name}: files in {dest}")
    return EXIT_OK


# -- parser -----------------------------------------------------------------------------------

def _add_network_options(p: argparse.ArgumentParser):
    """The "network" option group (--dataset, --depth, --width) of a one-network command;
    returns the group, so the command adds its seed option to it."""
    g = p.add_argument_group("network")
    g.add_argument("--dataset", required=True, choices=DATASETS)
    g.add_argument("--depth", type=_typed(int, "an integer >= 1"), required=True,
                   help="hidden layers d >= 1")
    g.add_argument("--width", type=_typed(int, "an integer >= 1"), required=True,
                   help="units per hidden layer w >= 1")
    return g


def build_parser() -> argparse.ArgumentParser:
    """The ``milr`` argument parser (subcommands eta-star, sharpness, sweep, status, data,
    download)."""
    fmt = argparse.RawDescriptionHelpFormatter
    ap = _Parser(prog="milr", description=__doc__, formatter_class=fmt)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def one_config_parser(name, help_, example):
        p = sub.add_parser(name, help=help_, description=f"{help_}\n\nexample:\n  {example}",
                           formatter_class=fmt)
        g = _add_network_options(p)
        g.add_argument("--seeds", type=_typed(int, "an integer >= 0"), nargs="+", default=[0],
                       metavar="SEED",
                       help="one task per seed, integers >= 0 (default 0)")
        p.add_argument("--json", action="store_true", help="print one JSON line per seed")
        p.add_argument("--no-store", action="store_true",
                       help="do not cache: compute in a temporary directory")
        return p

    p = one_config_parser("eta-star", "eta* (maximal initial learning rate) of one "
                          "configuration", "milr eta-star --dataset gaussian --depth 2 "
                          "--width 64 --seeds 0 1 --step-budget 400")
    p.set_defaults(func=cmd_eta_star,
                   _trial_fields=_add_dataclass_options(
                       p, TrialConfig, ("dataset", "depth", "width"), "trial rules",
                       _TRIAL_HELP, "trial", _DEFAULTS_NOTE),
                   _search_fields=_add_dataclass_options(p, SearchConfig, (), "search rules",
                                                         _SEARCH_HELP, "search"))
    _add_run_options(p, default_workers="1")

    p = one_config_parser("sharpness", "lambda_1 (top Hessian eigenvalue of the training "
                          "loss) at initialisation of one configuration",
                          "milr sharpness --dataset gaussian --depth 2 --width 64 --seeds 0 1")
    fields = _add_dataclass_options(p, SharpnessTask, ("dataset", "depth", "width", "seed"),
                                    "sharpness options", _SHARP_HELP, "sharpness",
                                    _DEFAULTS_NOTE)
    p.set_defaults(func=cmd_sharpness, _sharp_fields=fields)
    _add_run_options(p, default_workers="1")

    p = sub.add_parser("sweep", help="compute every task of a sweep file that is not cached",
                       description="Compute every task of a sweep file (YAML: data sets x "
                       "depths x widths x seeds x other parameters) whose record is not in "
                       "the store yet; safe to interrupt and rerun.\n\nexamples:\n"
                       "  milr sweep configs/quick.yaml\n"
                       "  milr sweep configs/quick.yaml --dask-workers 2\n"
                       "  milr sweep configs/paper.yaml --scheduler tcp://host:8786 "
                       "--device cuda", formatter_class=fmt)
    p.add_argument("config", metavar="CONFIG.yaml", help="sweep file (see configs/)")
    p.add_argument("--dry-run", action="store_true", help="validate and count, compute nothing")
    p.set_defaults(func=cmd_sweep)
    _add_run_options(p)

    p = sub.add_parser("status", help="done / pending / failed / corrupt counts of a sweep",
                       description="Count a sweep file's tasks by state in the store (reads "
                       "only).\n\nexample:\n  milr status configs/quick.yaml --list failed",
                       formatter_class=fmt)
    p.add_argument("config", metavar="CONFIG.yaml", help="sweep file (see configs/)")
    p.add_argument("--store", metavar="DIR", default=None,
                   help="results directory (default: the sweep file's, else data/results)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.add_argument("--list", nargs="+", choices=("done", "pending", "failed", "corrupt"),
                   metavar="STATE", help="also list the tasks in these states "
                   "(done, pending, failed, corrupt) with their record paths")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--log-file", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("trials", help="the trials of one cached eta* search (table or JSON)",
                       description="Show the trial log of one cached eta* search: learning "
                       "rate, round, outcome, reason, stopping step, best and final accuracy "
                       "of every trial, the final bracket and, when its lambda_1 is cached, "
                       "2/lambda_1. Reads the store; computes nothing.\n\nexamples:\n"
                       "  milr trials --dataset fashion-mnist --depth 4 --width 128 --seed 0\n"
                       "  milr trials --dataset gaussian --depth 2 --width 64 --json",
                       formatter_class=fmt)
    g = _add_network_options(p)
    g.add_argument("--seed", type=_typed(int, "an integer >= 0"), default=0,
                   help="network seed >= 0 (default 0)")
    g = p.add_argument_group("which search (default: the preset's rules)")
    g.add_argument("--preset", default="quick",
                   help="preset whose trial and search rules made the record: quick "
                        "(default; the committed cache), paper or smoke")
    g.add_argument("--threshold", type=float, default=None,
                   help="threshold accuracy t (default: the preset's, else the data set's)")
    g.add_argument("--step-budget", type=_typed(int, "an integer >= 1"), default=None,
                   help="SGD steps per trial (default: the preset's)")
    g.add_argument("--input-lr-scale", type=float, default=None,
                   help="input-layer learning-rate factor (default: the preset's)")
    g.add_argument("--readout-gain", type=_NUMBER, default=None, metavar="X",
                   help="read-out initialisation gain of the searched network (default: the "
                        "preset's, 1)")
    g.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                   help="the searched network has biases (default: the preset's, yes)")
    g.add_argument("--blowup-factor", type=_number_or_off, default=None, metavar="X|off",
                   help="blow-up rule of its trials (default: the preset's, 100)")
    p.add_argument("--store", metavar="DIR", default=None,
                   help="results directory (default: the repository's data/results)")
    p.add_argument("--json", action="store_true",
                   help="print one line of strict JSON: config, result, the full trial log "
                        "('trials'), record path and cached lambda_1 (null when missing)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--log-file", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_trials)

    p = sub.add_parser("data", help="compute the cached results of a preset (make data)",
                       description="Compute the cached results of a preset of "
                       "milr.presets (the same sweep as configs/<preset>.yaml).\n\nexample:\n"
                       "  milr data --preset quick", formatter_class=fmt)
    p.add_argument("--preset", default="quick", help="quick | paper | smoke")
    p.add_argument("--datasets", nargs="*", help="override the preset's data sets")
    p.add_argument("--allow-dirty", action="store_true",
                   help="write records even when milr/ has uncommitted changes")
    p.set_defaults(func=cmd_data)
    _add_run_options(p)

    p = sub.add_parser("download", help="fetch MNIST, Fashion-MNIST or CIFAR-10 (needs network)",
                       description="Fetch a data set's official files, verify each against its "
                       "published md5 and write it atomically into DIR/<name>/ (default: "
                       "$MILR_DATA_DIR, else the checkout's data/raw), where the loaders find "
                       "it. Files already present and valid are skipped.\n\nexample:\n"
                       "  milr download mnist", formatter_class=fmt)
    p.add_argument("name", choices=tuple(DOWNLOADS))
    p.add_argument("--dir", metavar="DIR", default=None,
                   help="root directory (the files go to DIR/<name>/)")
    p.add_argument("--mirror", metavar="URL", action="append", default=None,
                   help="base URL to fetch from instead of the official list (repeatable)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--log-file", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_download)
    return ap


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some tasks failed or missing,
    2 bad input, 130 interrupted)."""
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        with _logging_and_signals(args.verbose, args.log_file):
            return args.func(args)
    except KeyboardInterrupt:
        store = getattr(args, "store", None) or "the store"
        print(f"\nmilr: interrupted; every finished record is kept in {store}. Run the same "
              "command again to compute the rest.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, FileNotFoundError, DataNotFoundError) as exc:
        if args.verbose >= 2:
            raise
        print(f"milr {args.cmd}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SweepError, StoreCollisionError, RuntimeError) as exc:
        if args.verbose >= 2:
            raise
        print(f"milr {args.cmd}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
