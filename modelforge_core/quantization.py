"""4-bit layers that stay trainable on every CPU, and the check ``modelforge doctor`` runs.

On a CPU with AVX-512 BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight into an
inference-only layout the first time the layer runs in eval mode without gradients (an
evaluation, ``generate``): ``Linear4bit.forward`` calls ``_convert_weight_packed_for_cpu`` when
the layer's ``support_avx512bf16_for_cpu`` switch is on (set at construction from
``has_avx512bf16()``) and marks the quant state ``packing_format_for_cpu``. Every later forward,
training included, then goes through ``gemv_4bit``, a kernel with no backward: biased layers crash
at ``result += bias``, the others back-propagate wrong gradients. Only ``state_dict()`` and a
move to a GPU undo the layout.

The core calls :func:`keep_4bit_trainable` on every model a provider loads (training, and the
``evaluate``/``generate``/``export`` paths, so metrics are computed the same way on every CPU), and
:func:`four_bit_guard_callback` undoes the layout before training starts or resumes after an
evaluation, should anything else have packed a layer. Nothing here imports torch or bitsandbytes
at module level.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

#: The per-layer switch bitsandbytes sets from ``has_avx512bf16()`` in ``Linear4bit.__init__``.
CPU_REPACK_SWITCH = "support_avx512bf16_for_cpu"
#: The quant-state flag bitsandbytes sets once a weight is in the inference-only CPU layout.
PACKED_FLAG = "packing_format_for_cpu"
#: bitsandbytes' logger that reports the missing hub kernel (``kernels`` package, needs the network).
KERNEL_NOTICE_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNEL_NOTICE_PREFIX = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _quant_state(module: Any) -> Any:
    return getattr(getattr(module, "weight", None), "quant_state", None)


def is_packed_for_cpu_inference(module: Any) -> bool:
    """True when ``module`` is a 4-bit layer whose weight is in bitsandbytes' inference-only layout."""
    return bool(getattr(_quant_state(module), PACKED_FLAG, False))


def packed_4bit_layers(model: Any) -> list[str]:
    """Names of the 4-bit layers of ``model`` left in the inference-only CPU layout."""
    named = getattr(model, "named_modules", None)
    if not callable(named):
        return []
    return [name for name, module in named() if is_packed_for_cpu_inference(module)]


def keep_4bit_trainable(model: Any) -> int:
    """Keep every bitsandbytes 4-bit layer of ``model`` in its trainable layout.

    Turns off each layer's CPU repack switch (so an eval-mode forward without gradients no longer
    repacks it) and unpacks any layer already repacked, with bitsandbytes' own inverse. Returns the
    number of 4-bit layers seen; a model without any costs one walk over its modules, and an
    object that is not a torch module (a third-party provider's own wrapper) is left alone.
    """
    modules = getattr(model, "modules", None)
    if not callable(modules):
        return 0
    layers = 0
    for module in modules():
        if not hasattr(module, CPU_REPACK_SWITCH):
            continue
        layers += 1
        setattr(module, CPU_REPACK_SWITCH, False)
        if is_packed_for_cpu_inference(module):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            weight = module.weight
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
            if getattr(module, "quant_state", None) is not None:
                module.quant_state = weight.quant_state
    return layers


def four_bit_guard_callback() -> Any:
    """A ``TrainerCallback`` that applies :func:`keep_4bit_trainable` to the trained model when
    training starts and after every evaluation, before training resumes."""
    from transformers import TrainerCallback

    class FourBitGuard(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if model is not None:
                keep_4bit_trainable(model)

        def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if model is not None:
                keep_4bit_trainable(model)

    return FourBitGuard()


class _DropKernelNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(KERNEL_NOTICE_PREFIX)


def quiet_kernel_notice() -> None:
    """Keep bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" line
    (printed when it is imported on a CPU with AVX-512 BF16 and the ``kernels`` package, which
    downloads that kernel from the Hugging Face hub, is missing) out of what users see.

    That kernel only speeds up the inference-only layout that :func:`keep_4bit_trainable` keeps
    off; bitsandbytes falls back to its own kernel anyway. Cheap: no import; idempotent.
    """
    logger = logging.getLogger(KERNEL_NOTICE_LOGGER)
    if not any(isinstance(existing, _DropKernelNotice) for existing in logger.filters):
        logger.addFilter(_DropKernelNotice())


# --- the doctor's check ----------------------------------------------------------------------

@dataclass(frozen=True)
class FourBitTrainingCheck:
    """The result of :func:`check_4bit_training`."""

    works: bool
    device: str
    #: Whether bitsandbytes would repack 4-bit layers for CPU inference here (AVX-512 BF16).
    cpu_repack: bool
    reason: str


def _loss(layers: list[Any], x: Any, target: Any, *, dequantized: bool) -> Any:
    """Summed MSE through each layer, or through its dequantized weights (the reference)."""
    import torch
    from bitsandbytes.functional import dequantize_4bit

    total = torch.zeros((), device=x.device)
    for layer in layers:
        if dequantized:
            weight = dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
            out = torch.nn.functional.linear(x, weight, layer.bias)
        else:
            out = layer(x)
        total = total + torch.nn.functional.mse_loss(out, target)
    return total


def check_4bit_training(device: str = "cpu", *, guard: bool = True, force_cpu_repack: bool = False,
                        steps: int = 2) -> FourBitTrainingCheck:
    """Train through real 4-bit layers the way a run does, and say whether it works on ``device``.

    Two ``Linear4bit`` layers (nf4, one with a bias, one without) run an eval-mode forward without
    gradients (the "before" evaluation), then ``steps`` optimizer steps on a trainable input
    scale. It works when no layer is left in the inference-only layout, no warning about a
    missing autograd kernel is raised, the gradient equals the one through the dequantized
    weights, and the loss falls.

    :param guard: apply :func:`keep_4bit_trainable` as training runs do (``False`` shows what
        bitsandbytes alone does).
    :param force_cpu_repack: turn bitsandbytes' CPU repack switch on even where the CPU lacks
        AVX-512 BF16 (the repack itself is plain torch), to exercise that branch anywhere.
    """
    try:
        import torch
        from bitsandbytes.functional import has_avx512bf16
        from bitsandbytes.nn.modules import Linear4bit
    except Exception as exc:  # not installed, or no build for this machine
        return FourBitTrainingCheck(False, device, False, f"bitsandbytes does not load: {type(exc).__name__}: {exc}")
    cpu_repack = device == "cpu" and (force_cpu_repack or bool(has_avx512bf16()))
    try:
        with warnings.catch_warnings(record=True) as caught, torch.random.fork_rng(devices=[]):
            warnings.simplefilter("always")
            torch.manual_seed(0)
            layers: list[Any] = []
            for bias in (True, False):
                plain = torch.nn.Linear(64, 32, bias=bias)
                layer = Linear4bit(64, 32, bias=bias, quant_type="nf4", compute_dtype=torch.float32)
                layer.load_state_dict(plain.state_dict())
                layer = layer.to(device)
                if layer.bias is not None:
                    layer.bias.requires_grad_(False)  # frozen, as under LoRA
                setattr(layer, CPU_REPACK_SWITCH, getattr(layer, CPU_REPACK_SWITCH, False) or force_cpu_repack)
                if guard:
                    keep_4bit_trainable(layer)
                layers.append(layer)
            x = torch.randn(8, 64, device=device)
            target = torch.randn(8, 32, device=device)
            with torch.no_grad():
                for layer in layers:
                    layer.eval()
                    layer(x)
                    layer.train()
            packed = [layer for layer in layers if is_packed_for_cpu_inference(layer)]
            if packed:
                return FourBitTrainingCheck(False, device, cpu_repack, f"{len(packed)} of 2 layers were left in "
                                            "bitsandbytes' inference-only CPU layout after an evaluation")
            scale = torch.ones(64, device=device, requires_grad=True)
            optimizer = torch.optim.SGD([scale], lr=0.05)
            losses: list[float] = []
            for _ in range(steps):
                optimizer.zero_grad()
                loss = _loss(layers, x * scale, target, dequantized=False)
                loss.backward()
                reference = scale.detach().clone().requires_grad_(True)
                _loss(layers, x * reference, target, dequantized=True).backward()
                if scale.grad is None or reference.grad is None or not torch.allclose(
                        scale.grad, reference.grad, rtol=1e-3, atol=1e-4):
                    return FourBitTrainingCheck(False, device, cpu_repack, "gradients through the 4-bit layers "
                                                "differ from those through their dequantized weights")
                optimizer.step()
                losses.append(float(loss))
            autograd = [w for w in caught if "autograd kernel was not registered" in str(w.message)]
            if autograd:
                return FourBitTrainingCheck(False, device, cpu_repack, "a 4-bit kernel without autograd ran during "
                                            "training: " + str(autograd[0].message).split(":")[0])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return FourBitTrainingCheck(False, device, cpu_repack, f"{type(exc).__name__}: {first}"[:200])
    if len(losses) >= 2 and not losses[-1] < losses[0]:
        return FourBitTrainingCheck(False, device, cpu_repack, f"the loss did not fall ({losses[0]:.4g} -> "
                                    f"{losses[-1]:.4g})")
    layout = (" (bitsandbytes' AVX-512 BF16 inference layout kept off)" if cpu_repack else "")
    return FourBitTrainingCheck(True, device, cpu_repack, f"{steps} optimizer steps through biased and bias-free "
                                f"4-bit layers after an evaluation, gradients exact{layout}")
