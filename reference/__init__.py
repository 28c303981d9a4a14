"""The NumPy reference: float64, readable, the ground truth of the implicit-update theorem.

P1 = Dherin et al. 2025 (arXiv 2507.16003); P2 = Innocenti & Achour 2025 (arXiv 2512.11255).
"""
from .blocks import attention, block, block_output, init_block, taps
from .config import ACTIVATIONS, KINDS, BlockConfig, param_shapes
from .dynamics import Trajectory, factorised_update, trajectory
from .layers import gelu, layer_norm, relu, softmax
from .model import (
    apply_model_updates, init_model, join_stack, model_forward, model_position_updates, model_updates, split_stack,
)
from .update import Update, apply_update, bias_key, implicit_update, position_updates
from .validation import ZeroNormError

__all__ = [
    "ACTIVATIONS", "KINDS", "BlockConfig", "Trajectory", "Update", "ZeroNormError",
    "apply_model_updates", "apply_update", "attention", "bias_key", "block", "block_output", "factorised_update",
    "gelu",
    "implicit_update", "init_block", "init_model", "join_stack", "layer_norm", "model_forward", "model_position_updates",
    "model_updates",
    "param_shapes", "position_updates", "relu", "softmax", "split_stack", "taps", "trajectory",
]
