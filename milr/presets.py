"""Named sweep grids. ``quick`` fits this project's 2-core CPU budget; ``paper`` is larger
(more depths, widths and seeds, a full epoch) and meant for a GPU; ``smoke`` is for tests.

All grids keep only networks with width >= depth. Every value here is our choice.
"""
from __future__ import annotations

import copy

__all__ = ["PRESETS", "get_preset"]

PRESETS: dict[str, dict] = {
    "quick": {
        "datasets": ["fashion-mnist", "gaussian"],
        "depths": [1, 2, 4, 8],
        "widths": [32, 64, 128, 256, 512, 1024],
        "seeds": [0, 1, 2],
        "trial": {"batch_size": 64, "step_budget": 400, "eval_every": 25, "n_val": 1000,
                  "input_lr_scale": 0.01},
        # batched k-section search (milr.batched), 2 rates per round: on 2 CPU cores extra
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
        "trial": {"batch_size": 64, "step_budget": 938, "eval_every": 25, "n_val": 10000,
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


def get_preset(name: str) -> dict:
    """A deep copy of preset ``name``; ``ValueError`` lists the known names."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not known; allowed: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
