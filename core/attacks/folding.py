"""BatchNorm folded into the preceding convolutions: the same function, cheaper to differentiate.

Why: an eval-mode attack (or Integrated Gradients) sees BatchNorm as a fixed affine map, so folding it
removes a memory-bound op from every forward and backward pass of the attack without changing the function
(Ioffe & Szegedy 2015 define the inference-time BatchNorm as that affine map; folding it into the
convolution is the standard inference optimisation, ``torch.nn.utils.fusion``).

* :func:`fold_batchnorm` — the folded twin (what the attacks use);
* :func:`fast_twin` — the folded twin with its encoder in channels_last, for many input gradients of one
  frozen model (Integrated Gradients' path points).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _fold_into_convs(module: nn.Module) -> None:
    """Fold every BatchNorm2d that directly follows a Conv2d, in place, recursively.

    Two patterns are recognised: consecutive ``(Conv2d, BatchNorm2d)`` entries of an
    ``nn.Sequential`` (``test_cnn``, ResNet downsample branches) and sibling attributes
    ``convN`` / ``bnN`` (torchvision ResNet stems and blocks, whose forward applies ``bnN`` right
    after ``convN``). No tracing: torch.fx patches ``nn.Module.__call__`` process-wide while it
    traces, which broke concurrent requests in the service.
    """
    for child in module.children():
        _fold_into_convs(child)
    mods = module._modules
    if isinstance(module, nn.Sequential):
        names = list(mods)
        for a, b in zip(names, names[1:], strict=False):
            if isinstance(mods[a], nn.Conv2d) and isinstance(mods[b], nn.BatchNorm2d):
                mods[a] = fuse_conv_bn_eval(mods[a], mods[b])
                mods[b] = nn.Identity()
    for name in list(mods):
        if name.startswith("conv") and name[4:].isdigit() and f"bn{name[4:]}" in mods:
            conv, bn = mods[name], mods[f"bn{name[4:]}"]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                mods[name] = fuse_conv_bn_eval(conv, bn)
                mods[f"bn{name[4:]}"] = nn.Identity()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A twin of a frozen, eval-mode ``model`` whose encoder has BatchNorm folded into the convolutions.

    Why: an eval-mode attack sees BatchNorm as a fixed affine map, so folding it removes a memory-bound
    op from each of the attack's forward and backward passes (a measured speed-up on the CPU; see
    benchmarks/train_throughput.py) without changing the function. The twin shares every other
    module with ``model``; its encoder is a copy built per call from the current weights (tens of
    ms). A model without an ``encoder`` (or in train mode) is returned unchanged. Thread-safe: no
    global state is touched.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None or model.training or not any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules()):
        return model
    fused = copy.deepcopy(encoder)
    _fold_into_convs(fused)
    twin = copy.copy(model)
    twin._modules = dict(model._modules)
    twin._modules["encoder"] = fused
    return twin


def fast_twin(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """A function-identical copy of a frozen, eval-mode ``model`` that is cheaper to differentiate.

    BatchNorm is folded into the convolutions (:func:`fold_batchnorm`) and, with ``channels_last``, the
    encoder copy is put in channels_last (faster convolutions on CPU and GPU; feed it inputs in the same
    format, :func:`robustdx.core.attacks.base.channels_like`). The caller's model is not modified: the
    folded encoder is a new module and only it changes memory format; a model without a foldable encoder
    is deep-copied before any format change. Build the twin inside :func:`~robustdx.core.attacks.base.frozen_eval`
    and use it while the model's weights stay as they are: it is a snapshot, not a view.

    Returns:
        The twin, or ``model`` itself when there is nothing to change (no BatchNorm to fold and
        ``channels_last`` off or no 4-D weights).

    >>> from robustdx.core.config import ModelConfig
    >>> from robustdx.core.models import build_model
    >>> net = build_model(ModelConfig(arch="test_cnn")).eval()
    >>> twin = fast_twin(net)
    >>> twin is not net and any(isinstance(m, nn.BatchNorm2d) for m in net.encoder.modules())
    True
    """
    twin = fold_batchnorm(model)
    if not channels_last or not any(p.ndim == 4 for p in model.parameters()):
        return twin
    if twin is model:
        return copy.deepcopy(model).to(memory_format=torch.channels_last)
    twin._modules["encoder"] = twin._modules["encoder"].to(memory_format=torch.channels_last)
    return twin
