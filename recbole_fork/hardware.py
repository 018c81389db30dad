"""The GPU-path settings: peak FLOP/s for model FLOP utilisation, and ``torch_compile``.

MFU (as in PaLM and nanoGPT) = achieved training FLOP/s / peak FLOP/s of the devices, with
training FLOPs = 3 x forward FLOPs (``model.flops_per_token()``) per input position.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Peak FLOP/s of one GPU from NVIDIA's data sheets: (name fragment, bf16 tensor core DENSE
# (the sheets' headline figures are with 2:4 sparsity, twice these), fp32 without tensor
# cores). The first fragment found in torch.cuda.get_device_name() wins, so the more
# specific names come first. TF32 tensor-core peaks are half the bf16 ones on these chips.
PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 67e12),  # same compute as the H100 SXM
    ("H100 NVL", 835e12, 60e12),
    ("H100 PCIe", 756e12, 51e12),
    ("H100", 989e12, 67e12),  # SXM
    ("A100", 312e12, 19.5e12),  # SXM and PCIe
)


def table_peak_flops(device_name: str, *, bf16: bool, tf32: bool = False) -> float | None:
    """Peak FLOP/s of the GPU named ``device_name`` for the matmul precision in use.

    Args:
        device_name: ``torch.cuda.get_device_name()``, e.g. ``"NVIDIA H100 80GB HBM3"``.
        bf16: bf16 autocast is on (bf16 tensor-core peak).
        tf32: fp32 matmuls may use TF32 tensor cores (half the bf16 peak).

    Returns:
        FLOP/s, or None for a GPU not in ``PEAK_FLOPS``.
    """
    for fragment, bf16_peak, fp32_peak in PEAK_FLOPS:
        if fragment.lower() in device_name.lower():
            if bf16:
                return bf16_peak
            return bf16_peak / 2 if tf32 else fp32_peak
    return None


def resolve_peak_flops(
    configured: float | None, device: torch.device, *, bf16: bool
) -> float | None:
    """The per-device peak FLOP/s for ``mfu``: the config's ``peak_flops``, else the table.

    None (``mfu`` not logged) on CPU without a configured figure, and for unknown GPUs
    (logged, naming the GPU). ``peak_flops`` itself is checked (a positive number) when the
    training settings are read.
    """
    if configured is not None:
        return float(configured)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    tf32 = torch.get_float32_matmul_precision() != "highest"
    peak = table_peak_flops(name, bf16=bf16, tf32=tf32)
    if peak is None:
        logger.info("peak FLOP/s of %r unknown: set peak_flops to log mfu", name)
    return peak


def compile_backbone(model: nn.Module, device: torch.device) -> bool:
    """``torch.compile`` the model's backbone in place (``nn.Module.compile``); True if done.

    In place, so parameter names and checkpoints are the same as without compiling. Skipped,
    with the reason logged, on CPU (the point is fused CUDA kernels; inductor's CPU path
    would spend minutes compiling C++ on a small machine) and for a model without a
    ``backbone``.
    """
    backbone = getattr(model, "backbone", None)
    if device.type != "cuda":
        logger.info("torch_compile skipped: the model runs on %s, compiling is for CUDA", device)
        return False
    if not isinstance(backbone, nn.Module):
        logger.info("torch_compile skipped: %s has no backbone module", type(model).__name__)
        return False
    backbone.compile()
    logger.info("torch_compile: %s backbone compiled in place", type(model).__name__)
    return True


__all__ = [
    "PEAK_FLOPS",
    "compile_backbone",
    "resolve_peak_flops",
    "table_peak_flops",
]
