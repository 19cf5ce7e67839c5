"""Fused linear knowledge distillation kernels: reference, Pallas kernel, api."""
from pallas_kernels.distill.api import fused_linear_kd_loss

__all__ = ["fused_linear_kd_loss"]
