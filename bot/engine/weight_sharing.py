"""Module trees that share their weights with another: a second way to run the same model for next to no memory.

The compiled twins (bot.engine.compiled) and the fused-style UNet (bot.engine.fused_styles) each need a model of
their own to change (compile it, swap some of its layers) while the eager models keep serving, unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch


def weight_sharing_twin(module: torch.nn.Module, own: Callable[[str], bool] = lambda name: False) -> torch.nn.Module:
    """A deep copy of `module`'s structure whose parameters and buffers are the very same tensors, except the ones
    whose names `own` picks: those are copied."""
    named = [*module.named_parameters(), *module.named_buffers()]
    memo = {id(tensor): tensor for name, tensor in named if not own(name)}
    return copy.deepcopy(module, memo)
