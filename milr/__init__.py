"""milr: maximal initial learning rates (eta*) and sharpness of deep ReLU networks.

Reference implementation of Iyer, Hanin & Rolnick, "Maximal Initial Learning Rates in Deep
ReLU Networks" (ICML 2023). See the README for the method and our documented choices.
"""
__version__ = "0.1.0"
