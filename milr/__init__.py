"""milr: maximal initial learning rates (eta*) and sharpness of deep ReLU networks.

Reference implementation of Iyer, Hanin & Rolnick, "Maximal Initial Learning Rates in Deep
ReLU Networks" (ICML 2023). See the README for the method and our documented choices.

``milr.eta_star_for`` and ``milr.sharpness_of`` (:mod:`milr.custom`) measure eta* and
lambda_1 of a network you build, under the same rules as the built-in MLPs.
"""
__version__ = "0.1.0"

from .custom import eta_star_for, sharpness_of  # noqa: E402 (after __version__: store reads it)

__all__ = ["eta_star_for", "sharpness_of", "__version__"]
