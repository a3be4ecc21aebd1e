"""``nn.Module`` layers built on :mod:`normlib.functional`.

Constructors, defaults, parameter and buffer names match ``torch.nn``, so a
``state_dict`` saved from a torch model loads into the normlib one and back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch import nn

from normlib import _validation as V
from normlib import functional as NF
from normlib.distributed import sync_batch_norm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "SyncBatchNorm",
    "MeanOnlyBatchNorm",
    "BatchGroupNorm",
    "LayerNorm",
    "RMSNorm",
    "QKNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "AdaIN",
    "ScaleNorm",
    "DyT",
    "WSConv2d",
    "ScaledStdConv2d",
    "LocalResponseNorm",
    "LocalContrastNorm",
    "GRN",
    "FiLM",
    "ConditionalBatchNorm2d",
    "AdaLNZero",
    "SPADE",
]


class _PerChannelNorm(nn.Module):
    """Shared state of BatchNorm and InstanceNorm: affine parameters and running stats."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None, *, bias=True):
        super().__init__()
        V.check_positive_int(num_features, "num_features")
        V.check_eps(eps)
        if momentum is not None:
            V.check_momentum(momentum)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        factory = {"device": device, "dtype": dtype}
        self.register_parameter("weight", nn.Parameter(torch.ones(num_features, **factory)) if affine else None)
        self.register_parameter("bias", nn.Parameter(torch.zeros(num_features, **factory)) if affine and bias else None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        V.check_tensor(x, "input")
        if x.dim() not in self._input_dims:
            raise ValueError(
                f"input: expected {' or '.join(map(str, self._input_dims))}D input to "
                f"{type(self).__name__}, got shape {tuple(x.shape)}"
            )

    def _count_batch(self) -> None:
        """Count a training batch (torch counts them whether or not momentum uses the count)."""
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)

    def _running_average_factor(self) -> float:
        """The momentum of this step's running-statistics update; ``momentum=None`` gives a
        cumulative moving average, 1 / (batches counted so far)."""
        if self.momentum is None:
            tracked = float(self.num_batches_tracked) if self.track_running_stats else 0.0
            return 1.0 / tracked if self.training and tracked > 0 else 0.0
        return self.momentum

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class _BatchNorm(_PerChannelNorm):
    """Batch normalization (Ioffe & Szegedy 2015). Derived in ``chapters/02_batch_norm.ipynb``.

    Two extensions beyond ``torch.nn``, both off by default: ``ghost_batch_size`` (keyword)
    normalizes training batches in ghost batches of that size
    (:func:`normlib.functional.ghost_batch_norm`), and setting the attribute
    ``inference_alpha`` to a value in (0, 1] mixes batch and population statistics in eval
    mode (:func:`normlib.functional.mixed_batch_norm`).
    """

    def __init__(self, *args, ghost_batch_size: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if ghost_batch_size is not None:
            V.check_positive_int(ghost_batch_size, "ghost_batch_size")
        self.ghost_batch_size = ghost_batch_size
        self.inference_alpha = 0.0

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        V.check_channels(input, self.num_features)
        self._count_batch()
        factor = self._running_average_factor()
        # Batch statistics in training mode, and in eval mode when no running stats exist.
        use_batch_stats = self.training or self.running_mean is None
        keep_running = not self.training or self.track_running_stats
        running_mean = self.running_mean if keep_running else None
        running_var = self.running_var if keep_running else None
        if not use_batch_stats and self.inference_alpha > 0:
            return NF.mixed_batch_norm(input, running_mean, running_var, self.inference_alpha,
                                      self.weight, self.bias, self.eps)
        if use_batch_stats and self.ghost_batch_size is not None:
            return NF.ghost_batch_norm(input, self.ghost_batch_size, running_mean, running_var,
                                      self.weight, self.bias, True, factor, self.eps)
        return NF.batch_norm(input, running_mean, running_var, self.weight, self.bias,
                            use_batch_stats, factor, self.eps)

    def extra_repr(self) -> str:
        ghost = f", ghost_batch_size={self.ghost_batch_size}" if self.ghost_batch_size else ""
        return super().extra_repr() + ghost


class BatchNorm1d(_BatchNorm):
    """Batch normalization of ``(N, C)`` or ``(N, C, L)`` inputs; same API as
    :class:`torch.nn.BatchNorm1d`. Derived in ``chapters/02_batch_norm.ipynb``."""

    _input_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization of ``(N, C, H, W)`` inputs; same API as
    :class:`torch.nn.BatchNorm2d`. Derived in ``chapters/02_batch_norm.ipynb``."""

    _input_dims = (4,)


class MeanOnlyBatchNorm(nn.Module):
    """Mean-only batch normalization (Salimans & Kingma 2016): ``x - mu + bias`` per channel of
    an ``(N, C, *)`` input, ``mu`` the batch mean in training and a running mean (updated with
    ``momentum``, as in :class:`BatchNorm2d`) in evaluation. Meant to follow a layer under
    :func:`normlib.spectral.weight_norm`. Buffers and parameter are named as in ``BatchNorm``
    (``running_mean``, ``num_batches_tracked``, ``bias``), without a weight or a variance.
    Derived in ``chapters/09_weight_norm.ipynb``."""

    def __init__(self, num_features: int, momentum: float = 0.1, bias: bool = True, device=None, dtype=None):
        super().__init__()
        V.check_positive_int(num_features, "num_features")
        V.check_momentum(momentum)
        self.num_features, self.momentum = num_features, momentum
        factory = {"device": device, "dtype": dtype}
        self.register_parameter("bias", nn.Parameter(torch.zeros(num_features, **factory)) if bias else None)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        V.check_tensor(input, "input", min_dim=2)
        V.check_channels(input, self.num_features)
        if self.training:
            self.num_batches_tracked.add_(1)
        return NF.mean_only_batch_norm(input, self.running_mean, self.bias, self.training, self.momentum)

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}, bias={self.bias is not None}"


class SyncBatchNorm(_PerChannelNorm):
    """Batch normalization whose training statistics are those of the whole batch, split across
    the processes of ``process_group`` (:func:`normlib.distributed.sync_batch_norm`): in a run
    of K processes it computes what :class:`BatchNorm2d` computes on the K slices put together.
    Without an initialized process group, and in eval mode, it is batch normalization.
    Same constructor, ``state_dict`` keys and running statistics as :class:`torch.nn.SyncBatchNorm`.
    Derived in ``chapters/02_batch_norm.ipynb``."""

    _input_dims = (2, 3, 4, 5)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.process_group = process_group

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        V.check_channels(input, self.num_features)
        self._count_batch()
        factor = self._running_average_factor()
        if not self.training and self.running_mean is not None:
            return NF.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False, factor, self.eps)
        if not self.training:  # no running statistics: the batch's own, as torch does (not synchronized)
            return NF.batch_norm(input, None, None, self.weight, self.bias, True, factor, self.eps)
        keep = self.track_running_stats
        return sync_batch_norm(input, self.running_mean if keep else None, self.running_var if keep else None,
                               self.weight, self.bias, factor, self.eps, self.process_group)

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group=None) -> nn.Module:
        """Replace every BatchNorm layer of ``module`` (normlib's or ``torch.nn``'s, 1d, 2d or 3d)
        by a :class:`SyncBatchNorm` that shares its parameters and buffers; returns the module
        (a new one if ``module`` itself is a BatchNorm layer). Ghost-batch layers are left as
        they are: their statistics are those of small ghost batches by design."""
        if cls.is_synchronizable(module):
            sync = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                       process_group, bias=module.bias is not None)
            sync.weight, sync.bias = module.weight, module.bias
            sync.running_mean, sync.running_var = module.running_mean, module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
            sync.train(module.training)
            return sync
        for name, child in module.named_children():
            module.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return module

    @classmethod
    def is_synchronizable(cls, module: nn.Module) -> bool:
        """Whether :meth:`convert_sync_batchnorm` replaces ``module``."""
        return (isinstance(module, (_BatchNorm, nn.modules.batchnorm._BatchNorm)) and not isinstance(module, cls)
                and not getattr(module, "ghost_batch_size", None))


class _InstanceNorm(_PerChannelNorm):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False,
                 device=None, dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        V.check_tensor(input, "input")
        batched = input.dim() == self._input_dims[-1]
        if not batched and input.dim() != self._input_dims[0]:
            raise ValueError(
                f"input: expected {self._input_dims[0]}D (unbatched) or {self._input_dims[1]}D input to "
                f"{type(self).__name__}, got shape {tuple(input.shape)}"
            )
        x = input if batched else input.unsqueeze(0)
        if self.affine or self.track_running_stats:
            V.check_channels(x, self.num_features)
        # As in torch: InstanceNorm does not count batches, and momentum=None freezes the stats.
        factor = 0.0 if self.momentum is None else self.momentum
        out = NF.instance_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            self.training or not self.track_running_stats, factor, self.eps,
        )
        return out if batched else out.squeeze(0)


class InstanceNorm1d(_InstanceNorm):
    """Instance normalization of ``(N, C, L)`` or ``(C, L)`` inputs; same API as
    :class:`torch.nn.InstanceNorm1d`. Derived in ``chapters/06_instance_norm.ipynb``."""

    _input_dims = (2, 3)


class InstanceNorm2d(_InstanceNorm):
    """Instance normalization of ``(N, C, H, W)`` or ``(C, H, W)`` inputs; same API as
    :class:`torch.nn.InstanceNorm2d`. Derived in ``chapters/06_instance_norm.ipynb``."""

    _input_dims = (3, 4)


class _RowwiseNorm(nn.Module):
    """What LayerNorm and RMSNorm share: the options of :func:`normlib.functional.layer_norm`
    (keyword-only), a weight that starts at ``1 - weight_offset`` so that the gain starts at 1
    (Gemma's and Transformer Engine's zero-centred gain starts at zero), and ``forward(input,
    residual=None)``, which with a residual returns ``(y, input + residual)``."""

    def _set_options(self, weight_offset, casting_mode, out_dtype, residual_dtype, memory_efficient, factory):
        V.check_norm_options(torch.empty(0), torch.empty(0) if weight_offset else None, weight_offset, casting_mode,
                             out_dtype, memory_efficient=memory_efficient)
        if residual_dtype is not None and residual_dtype not in V.FLOAT_DTYPES:
            raise TypeError(f"residual_dtype: expected None or a floating-point dtype, got {residual_dtype!r}")
        self.weight_offset, self.casting_mode, self.out_dtype = weight_offset, casting_mode, out_dtype
        self.residual_dtype, self.memory_efficient = residual_dtype, memory_efficient
        if weight_offset and not self.elementwise_affine:
            raise ValueError("weight_offset: the gain is weight_offset + weight, so it needs elementwise_affine=True")
        if self.elementwise_affine:
            self.weight = nn.Parameter(torch.full(self.normalized_shape, 1.0 - weight_offset, **factory))
        else:
            self.register_parameter("weight", None)

    def _options(self, residual, gate, scale, shift) -> dict:
        return dict(residual=residual, weight_offset=self.weight_offset, casting_mode=self.casting_mode,
                    out_dtype=self.out_dtype, residual_dtype=self.residual_dtype if residual is not None else None,
                    memory_efficient=self.memory_efficient, gate=gate, scale=scale, shift=shift)

    def _extra_options(self) -> str:
        defaults = dict(weight_offset=0.0, casting_mode="fp32", out_dtype=None, residual_dtype=None,
                        memory_efficient=False)
        return "".join(f", {k}={getattr(self, k)!r}" for k, v in defaults.items() if getattr(self, k) != v)


class LayerNorm(_RowwiseNorm):
    """Layer normalization (Ba, Kiros & Hinton 2016); same API as :class:`torch.nn.LayerNorm`,
    plus the keyword options of :func:`normlib.functional.layer_norm` (``weight_offset``,
    ``casting_mode``, ``out_dtype``, ``residual_dtype``, ``memory_efficient``) and
    ``forward(input, residual=None, *, gate=None, scale=None, shift=None)``: the fused residual
    add and adaLN(-Zero)'s modulation. Derived in ``chapters/03_layer_norm.ipynb``."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None, *,
                 weight_offset: float = 0.0, casting_mode: str = "fp32", out_dtype: torch.dtype | None = None,
                 residual_dtype: torch.dtype | None = None, memory_efficient: bool = False):
        super().__init__()
        self.normalized_shape = V.normalized_shape_tuple(normalized_shape)
        V.check_eps(eps)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        factory = {"device": device, "dtype": dtype}
        self._set_options(weight_offset, casting_mode, out_dtype, residual_dtype, memory_efficient, factory)
        bias = nn.Parameter(torch.zeros(self.normalized_shape, **factory)) if elementwise_affine and bias else None
        self.register_parameter("bias", bias)

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None, *, gate: torch.Tensor | None = None,
                scale: torch.Tensor | None = None, shift: torch.Tensor | None = None):
        return NF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps,
                             **self._options(residual, gate, scale, shift))

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}{self._extra_options()}")


class RMSNorm(_RowwiseNorm):
    """Root-mean-square normalization (Zhang & Sennrich 2019); same API as
    :class:`torch.nn.RMSNorm` (``eps=None`` means the input dtype's machine epsilon), plus
    ``partial_fraction=f`` (keyword) for pRMSNorm, the RMS estimated from the first fraction ``f``
    of the features, and the keyword options of :func:`normlib.functional.rms_norm`:
    ``RMSNorm(d, 1e-6, weight_offset=1.0)`` is Gemma's, ``RMSNorm(d, 1e-6, casting_mode="llama")``
    Llama's, bit for bit (their state dicts load). Derived in ``chapters/04_rms_norm.ipynb``."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=None, *,
                 partial_fraction: float | None = None, weight_offset: float = 0.0, casting_mode: str = "fp32",
                 out_dtype: torch.dtype | None = None, residual_dtype: torch.dtype | None = None,
                 memory_efficient: bool = False):
        super().__init__()
        self.normalized_shape = V.normalized_shape_tuple(normalized_shape)
        V.check_eps(eps, allow_none=True)
        if partial_fraction is not None:
            V.check_number(partial_fraction, "partial_fraction", 0, 1, open_low=True)
        self.eps, self.elementwise_affine, self.partial_fraction = eps, elementwise_affine, partial_fraction
        self._set_options(weight_offset, casting_mode, out_dtype, residual_dtype, memory_efficient,
                          {"device": device, "dtype": dtype})
        if partial_fraction is not None and self._extra_options():
            raise ValueError("partial_fraction: pRMSNorm takes none of the options weight_offset, casting_mode, "
                             "out_dtype, residual_dtype, memory_efficient")

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None, *, gate: torch.Tensor | None = None,
                scale: torch.Tensor | None = None, shift: torch.Tensor | None = None):
        if self.partial_fraction is not None:
            if residual is not None or gate is not None or scale is not None or shift is not None:
                raise ValueError("residual: pRMSNorm (partial_fraction) takes no residual, gate, scale or shift")
            return NF.partial_rms_norm(input, self.normalized_shape, self.partial_fraction, self.weight, self.eps)
        return NF.rms_norm(input, self.normalized_shape, self.weight, self.eps,
                           **self._options(residual, gate, scale, shift))

    def extra_repr(self) -> str:
        partial = f", partial_fraction={self.partial_fraction}" if self.partial_fraction is not None else ""
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}{partial}"
                f"{self._extra_options()}")


def _check_groups(num_groups, num_channels) -> None:
    V.check_positive_int(num_groups, "num_groups")
    V.check_positive_int(num_channels, "num_channels")
    if num_channels % num_groups != 0:
        raise ValueError(f"num_groups: expected a divisor of num_channels={num_channels}, got {num_groups}")


class GroupNorm(nn.Module):
    """Group normalization (Wu & He 2018); same API as :class:`torch.nn.GroupNorm`, plus
    ``silu=True`` (keyword) for the SiLU that follows it in diffusion UNets, and
    ``forward(input, scale=None, shift=None)`` for their scale-shift from the time embedding
    (``(N, C)``): ``silu(norm(x) * (1 + scale) + shift)``, one fused kernel on CUDA tensors.
    Derived in ``chapters/05_group_norm.ipynb``."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None, *, bias=True,
                 silu: bool = False):
        super().__init__()
        _check_groups(num_groups, num_channels)
        V.check_eps(eps)
        if not isinstance(silu, bool):
            raise TypeError(f"silu: expected a bool, got {type(silu).__name__}")
        self.num_groups, self.num_channels, self.eps, self.affine, self.silu = num_groups, num_channels, eps, affine, silu
        factory = {"device": device, "dtype": dtype}
        self.register_parameter("weight", nn.Parameter(torch.ones(num_channels, **factory)) if affine else None)
        self.register_parameter("bias", nn.Parameter(torch.zeros(num_channels, **factory)) if affine and bias else None)

    def forward(self, input: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        V.check_tensor(input, "input", min_dim=2)
        V.check_channels(input, self.num_channels)
        if scale is None and shift is None and not self.silu:
            return NF.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
        return NF.group_norm(input, self.num_groups, self.weight, self.bias, self.eps, scale=scale, shift=shift,
                             silu=self.silu)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}" + (", silu=True" if self.silu else ""))


class QKNorm(nn.Module):
    """Per-head QK-norm (:func:`normlib.functional.qk_norm`): RMSNorm (``rms=False``: LayerNorm)
    over the head dimension of ``(..., T, H, head_dim)`` queries or keys, one gain ``weight``
    of shape ``(head_dim,)`` shared by the heads (Qwen3's and Gemma 3's ``q_norm``/``k_norm``),
    and ``forward(x, cos=None, sin=None)`` applies the rotary embedding after it, in the same
    kernel on CUDA tensors. Derived in ``chapters/14_attention_norms.ipynb``."""

    def __init__(self, head_dim: int, eps: float | None = None, elementwise_affine: bool = True, rms: bool = True,
                 device=None, dtype=None):
        super().__init__()
        V.check_positive_int(head_dim, "head_dim")
        V.check_eps(eps, allow_none=True)
        self.head_dim, self.eps, self.elementwise_affine, self.rms = head_dim, eps, elementwise_affine, rms
        factory = {"device": device, "dtype": dtype}
        self.register_parameter("weight", nn.Parameter(torch.ones(head_dim, **factory)) if elementwise_affine else None)
        self.register_parameter("bias", nn.Parameter(torch.zeros(head_dim, **factory))
                                if elementwise_affine and not rms else None)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None):
        return NF.qk_norm(x, self.weight, self.eps, bias=self.bias, cos=cos, sin=sin, rms=self.rms)

    def extra_repr(self) -> str:
        return f"{self.head_dim}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, rms={self.rms}"


class BatchGroupNorm(nn.Module):
    """Batch normalization combined with group normalization (our reading of Summers &
    Dinneen 2020), see :func:`normlib.functional.batch_group_norm`: in training mode,
    statistics over the batch, the positions and groups of ``num_channels / num_groups``
    channels; running statistics per group (buffers of shape ``(num_groups,)``) for evaluation
    mode. With ``num_groups = num_channels`` it is :class:`BatchNorm2d` (or 1d) with the same
    ``eps`` and float ``momentum``, state dict included; it has no cumulative average
    (``momentum=None``) and always tracks running statistics.
    Used in ``chapters/02_batch_norm.ipynb``."""

    def __init__(self, num_groups, num_channels, eps=1e-5, momentum=0.1, affine=True, device=None, dtype=None):
        super().__init__()
        _check_groups(num_groups, num_channels)
        V.check_eps(eps)
        V.check_momentum(momentum)
        self.num_groups, self.num_channels, self.eps, self.momentum, self.affine = (
            num_groups, num_channels, eps, momentum, affine)
        factory = {"device": device, "dtype": dtype}
        self.register_parameter("weight", nn.Parameter(torch.ones(num_channels, **factory)) if affine else None)
        self.register_parameter("bias", nn.Parameter(torch.zeros(num_channels, **factory)) if affine else None)
        self.register_buffer("running_mean", torch.zeros(num_groups, **factory))
        self.register_buffer("running_var", torch.ones(num_groups, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        V.check_tensor(input, "input", min_dim=2)
        V.check_channels(input, self.num_channels)
        if self.training:
            self.num_batches_tracked.add_(1)
        return NF.batch_group_norm(input, self.num_groups, self.running_mean, self.running_var, self.weight,
                                   self.bias, self.training, self.momentum, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}")


class AdaIN(nn.Module):
    """Adaptive instance normalization layer: ``AdaIN()(content, style)``; no parameters.
    Derived in ``chapters/07_adain.ipynb``."""

    def __init__(self, eps=1e-5):
        super().__init__()
        V.check_eps(eps)
        self.eps = eps

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return NF.adain(content, style, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class ScaleNorm(nn.Module):
    """ScaleNorm (Nguyen & Salazar 2019): ``scale * x / max(||x||, eps)`` over the last axis,
    with one learned scalar ``scale`` initialized at ``sqrt(normalized_shape)`` (or
    ``scale_init``), so that a fresh ScaleNorm computes what a fresh RMSNorm does, up to
    ``eps``. The parameter is a 0-dimensional tensor named ``scale``, as in the authors'
    ``ScaleNorm``, whose state dict loads as is. ``normalized_shape`` is the feature count, or
    LayerNorm's one-element tuple of it, so ``ScaleNorm`` can stand wherever a
    ``LayerNorm(width)`` is built. Derived in ``chapters/14_attention_norms.ipynb``."""

    def __init__(self, normalized_shape, eps: float = 1e-5, scale_init: float | None = None,
                 device=None, dtype=None):
        super().__init__()
        features = V.single_size(normalized_shape, "features")
        V.check_eps(eps)
        if scale_init is not None:
            V.check_number(scale_init, "scale_init")
        self.normalized_shape, self.eps = features, eps
        self.scale_init = features**0.5 if scale_init is None else float(scale_init)
        self.scale = nn.Parameter(torch.tensor(self.scale_init, device=device, dtype=dtype))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        V.check_trailing_shape(input, (self.normalized_shape,))
        return NF.scale_norm(input, self.scale, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, scale_init={self.scale_init:.4g}"


class DyT(nn.Module):
    """Dynamic Tanh (Zhu et al. 2025): ``weight * tanh(alpha * x) + bias``, LayerNorm's drop-in
    replacement in transformers without normalization. ``alpha`` is one learned scalar
    (initialized at ``alpha_init_value``), ``weight`` and ``bias`` per feature (ones and zeros),
    over the last axis or, with ``channels_last=False``, over axis 1 of ``(N, C, *)``. The
    parameter names and shapes are those of the authors' ``DynamicTanh``, so its state dict
    loads as is; ``normalized_shape`` is the number of channels, or LayerNorm's one-element
    tuple of it (so a LayerNorm's ``normalized_shape`` can be passed on). Unlike the authors'
    module, ``channels_last`` defaults to ``True``, channels-first inputs may have any number of
    positions, and half-precision inputs are computed in float32. Derived in
    ``chapters/15_dyt.ipynb``."""

    def __init__(self, normalized_shape, channels_last: bool = True, alpha_init_value: float = 0.5,
                 device=None, dtype=None):
        super().__init__()
        normalized_shape = V.single_size(normalized_shape, "channels")
        V.check_number(alpha_init_value, "alpha_init_value")
        self.normalized_shape, self.channels_last = normalized_shape, channels_last
        self.alpha_init_value = alpha_init_value
        factory = {"device": device, "dtype": dtype}
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init_value), **factory))
        self.weight = nn.Parameter(torch.ones(normalized_shape, **factory))
        self.bias = nn.Parameter(torch.zeros(normalized_shape, **factory))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return NF.dyt(input, self.alpha, self.weight, self.bias, self.channels_last)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, channels_last={self.channels_last}, "
                f"alpha_init_value={self.alpha_init_value}")


class WSConv2d(nn.Conv2d):
    """A 2-D convolution with weight standardization (Qiao et al. 2019): every forward pass
    convolves with :func:`normlib.functional.weight_standardization` of the stored weight, so
    each output channel's filter has zero mean and unit variance over its fan-in. Meant to be
    followed by a GroupNorm or BatchNorm.

    Constructor as :class:`torch.nn.Conv2d` plus ``eps`` (default 1e-6, timm's; it is added to
    the filter's variance, so it matters once filters are tiny: keep it well below their
    variance). Parameter names ``weight`` and ``bias``, so the state dict of a ``Conv2d``, of
    the authors' WS ``Conv2d`` or of timm's ``StdConv2d`` loads as is (build with
    ``bias=False`` for timm's, which has no bias by default). The output is timm's; the
    authors' layer divides by the unbiased standard deviation plus 1e-5, a factor
    ``sqrt(n / (n - 1))`` away for a fan-in of ``n``. Derived in
    ``chapters/10_weight_standardization.ipynb``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, eps: float = 1e-6):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        V.check_eps(eps)
        if self.weight[0].numel() < 2:
            raise ValueError(f"kernel_size: expected a fan-in (in_channels / groups * kernel area) of at least 2, "
                             f"got {self.weight[0].numel()}")
        self.eps = eps

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, NF.weight_standardization(self.weight, self.eps), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}"


class ScaledStdConv2d(WSConv2d):
    """A 2-D convolution with the scaled weight standardization of NF-ResNets (Brock et al.
    2021): every forward pass convolves with
    :func:`normlib.functional.scaled_weight_standardization` of the stored weight, each filter
    standardized over its fan-in and scaled by ``gain[o] * gamma / sqrt(fan_in)``. On
    unit-variance inputs its outputs keep unit variance (times ``gain * gamma``), with no
    normalization of the activations; ``gamma`` corrects for the activation in front of it
    (``sqrt(2 / (1 - 1/pi))`` = 1.7129 after a ReLU).

    Constructor as :class:`torch.nn.Conv2d` plus ``gamma`` (default 1), ``eps`` (default 1e-6)
    and ``gain_init`` (default 1, the learnable ``gain`` of shape ``(C_out, 1, 1, 1)``).
    Parameter names ``weight``, ``bias`` and ``gain``: the state dict of timm's
    ``ScaledStdConv2d`` loads as is (timm pads to keep the size by default, this layer pads
    as ``Conv2d`` does: pass ``padding``). Derived in ``chapters/11_normalizer_free.ipynb``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, gamma: float = 1.0, eps: float = 1e-6,
                 gain_init: float = 1.0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype, eps=eps)
        V.check_number(gamma, "gamma", low=0.0, open_low=True)
        V.check_number(gain_init, "gain_init")
        self.gamma, self.gain_init = gamma, gain_init
        self.gain = nn.Parameter(torch.full((out_channels, 1, 1, 1), float(gain_init), device=device, dtype=dtype))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = NF.scaled_weight_standardization(self.weight, self.gain, self.gamma, self.eps)
        return self._conv_forward(input, weight, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gamma={self.gamma}, gain_init={self.gain_init}"


class LocalResponseNorm(nn.Module):
    """Local response normalization across channels (AlexNet), as
    :class:`torch.nn.LocalResponseNorm`: ``x_c / (k + alpha / size * sum x_{c'}^2) ** beta``
    over ``size`` neighbouring channels (AlexNet's ``alpha = 1e-4`` is ``alpha = 5e-4`` here,
    with ``size = 5``). No parameters. Derived in ``chapters/17_local_norms.ipynb``."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        V.check_positive_int(size, "size")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return NF.local_response_norm(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class LocalContrastNorm(nn.Module):
    """Local contrast normalization (Jarrett et al. 2009) of ``(N, C, H, W)`` inputs, see
    :func:`normlib.functional.local_contrast_norm`. No parameters.
    Derived in ``chapters/17_local_norms.ipynb``."""

    def __init__(self, kernel_size: int = 9, sigma: float = 2.0, eps: float = 1e-4):
        super().__init__()
        V.check_odd_positive_int(kernel_size, "kernel_size")
        V.check_number(sigma, "sigma", low=0.0, open_low=True)
        V.check_eps(eps)
        self.kernel_size, self.sigma, self.eps = kernel_size, sigma, eps

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return NF.local_contrast_norm(input, self.kernel_size, self.sigma, self.eps)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}, eps={self.eps}"


class GRN(nn.Module):
    """Global response normalization (ConvNeXt V2), see
    :func:`normlib.functional.global_response_norm`: ``weight * (x * n) + bias + x``, with
    ``weight`` and ``bias`` of shape ``(num_channels,)`` initialized at zero, so a fresh GRN
    is the identity. Inputs are ``(N, *positions, C)`` or, with ``channels_last=False``,
    ``(N, C, *positions)``. The constructor and parameter names are timm's
    ``GlobalResponseNorm``; its state dict (``weight`` and ``bias`` of shape ``(1, 1, 1, C)`` or
    ``(1, C, 1, 1)``) and the authors' (``gamma`` and ``beta`` of shape ``(1, 1, 1, C)``) load
    as they are, reshaped to ``(C,)``. Derived in ``chapters/18_global_response_norm.ipynb``."""

    def __init__(self, num_channels: int, eps: float = 1e-6, channels_last: bool = True, device=None, dtype=None):
        super().__init__()
        V.check_positive_int(num_channels, "num_channels")
        V.check_eps(eps)
        if not isinstance(channels_last, bool):
            raise TypeError(f"channels_last: expected a bool, got {type(channels_last).__name__}")
        self.num_channels, self.eps, self.channels_last = num_channels, eps, channels_last
        self.weight = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        V.check_tensor(input, "input", min_dim=3)
        axis = -1 if self.channels_last else 1
        if input.shape[axis] != self.num_channels:
            raise ValueError(f"input: expected {self.num_channels} channels in dim {axis}, got shape "
                             f"{tuple(input.shape)}")
        return NF.global_response_norm(input, self.weight, self.bias, self.eps, self.channels_last)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for ours, theirs in (("weight", "gamma"), ("bias", "beta")):  # the authors' names, timm's shapes
            if prefix + theirs in state_dict and prefix + ours not in state_dict:
                state_dict[prefix + ours] = state_dict.pop(prefix + theirs)
            value = state_dict.get(prefix + ours)
            if isinstance(value, torch.Tensor) and value.numel() == self.num_channels:
                state_dict[prefix + ours] = value.reshape(self.num_channels)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, channels_last={self.channels_last}"


class FiLM(nn.Module):
    """Feature-wise linear modulation (Perez et al. 2018): ``gamma(c) * x + beta(c)`` per
    example and channel, with ``(delta_gamma, beta)`` from one linear layer of the condition
    ``c`` (the FiLM generator's output layer, gammas first) and ``gamma = gamma_baseline +
    delta_gamma``: the authors' ``gamma_baseline = 1`` keeps a fresh layer near the identity
    instead of near zero. ``forward(input, condition)`` takes an ``(N, C, *positions)`` input
    (or ``(N, *positions, C)`` with ``channels_last=True``) and an ``(N, condition_features)``
    condition. Derived in ``chapters/19_conditional_norms.ipynb``."""

    def __init__(self, condition_features: int, num_features: int, gamma_baseline: float = 1.0,
                 channels_last: bool = False, device=None, dtype=None):
        super().__init__()
        V.check_positive_int(condition_features, "condition_features")
        V.check_positive_int(num_features, "num_features")
        V.check_number(gamma_baseline, "gamma_baseline")
        self.num_features, self.gamma_baseline, self.channels_last = num_features, gamma_baseline, channels_last
        self.generator = nn.Linear(condition_features, 2 * num_features, device=device, dtype=dtype)

    def forward(self, input: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        V.check_tensor(condition, "condition", min_dim=2, max_dim=2)
        delta_gamma, beta = self.generator(condition).chunk(2, dim=-1)
        return NF.modulate(input, beta, delta_gamma + (self.gamma_baseline - 1), self.channels_last)

    def extra_repr(self) -> str:
        return f"gamma_baseline={self.gamma_baseline}, channels_last={self.channels_last}"


class ConditionalBatchNorm2d(nn.Module):
    """Class-conditional batch normalization (Miyato & Koyama 2018; the class-table form of de
    Vries et al.'s conditional BN, which adds MLP-predicted offsets to a pretrained network's
    gains and biases): batch normalization without affine parameters (``norm``, a :class:`BatchNorm2d`
    whose buffers are torch's), then each example's class ``y`` picks its own gain and bias,
    ``weight[y] * x_hat + bias[y]``. ``weight`` and ``bias`` are ``(num_classes, C)`` tables
    initialized at ones and zeros, so a fresh layer is a BatchNorm2d for every class.
    ``forward(input, labels)`` takes ``(N, C, H, W)`` and ``(N,)`` integer labels; the
    gains and biases are used in their own dtype (float32 parameters with a half-precision
    input are computed in float32). Derived in ``chapters/19_conditional_norms.ipynb``."""

    def __init__(self, num_features: int, num_classes: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 track_running_stats: bool = True, device=None, dtype=None):
        super().__init__()
        V.check_positive_int(num_classes, "num_classes")
        self.num_classes = num_classes
        self.norm = BatchNorm2d(num_features, eps, momentum, affine=False, track_running_stats=track_running_stats,
                                device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.ones(num_classes, num_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_classes, num_features, device=device, dtype=dtype))

    def forward(self, input: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if (not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int32, torch.int64)
                or labels.shape != input.shape[:1]):
            got = f"a {labels.dtype} tensor of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) \
                else type(labels).__name__
            raise ValueError(f"labels: expected a tensor of {input.shape[0]} integer class indices, got {got}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels: expected class indices in [0, {self.num_classes - 1}], got "
                             f"{labels.min().item()} to {labels.max().item()}")
        return NF.modulate(self.norm(input), self.bias[labels], self.weight[labels] - 1, channels_last=False)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


class AdaLNZero(nn.Sequential):
    """DiT's adaLN-Zero conditioning (Peebles & Xie 2023): ``SiLU``, then a linear layer from
    the condition to ``chunks`` vectors of ``features``, weights and bias initialized at zero.
    ``forward(condition)`` returns the ``chunks`` tensors of shape ``(N, features)`` in DiT's
    order, ``(shift, scale, gate)`` for each branch it modulates (6 for a transformer block:
    attention, then MLP; 2, ``(shift, scale)``, for DiT's final layer). A block computes
    ``x + gate * f(modulate(LN(x), shift, scale))`` (:func:`normlib.functional.modulate`, a
    LayerNorm without affine parameters), which at initialization is ``x``. As a submodule
    named ``adaLN_modulation`` its state dict is DiT's. Derived in
    ``chapters/19_conditional_norms.ipynb``."""

    def __init__(self, features: int, condition_features: int, chunks: int = 6, device=None, dtype=None):
        V.check_positive_int(features, "features")
        V.check_positive_int(condition_features, "condition_features")
        V.check_positive_int(chunks, "chunks")
        linear = nn.Linear(condition_features, chunks * features, device=device, dtype=dtype)
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
        super().__init__(nn.SiLU(), linear)
        self.features, self.chunks = features, chunks

    def forward(self, condition: torch.Tensor) -> tuple[torch.Tensor, ...]:
        V.check_tensor(condition, "condition", min_dim=2, max_dim=2)
        return super().forward(condition).chunk(self.chunks, dim=-1)


class SPADE(nn.Module):
    """Spatially-adaptive normalization (Park et al. 2019): a normalization without affine
    parameters (``norm="batch"``, the paper's, or ``"instance"``), then ``* (1 + gamma) +
    beta`` with per-pixel ``gamma`` and ``beta`` maps computed from the segmentation map,
    resized (nearest) to the input's size: a ``kernel_size`` convolution to ``hidden``
    channels and a ReLU, then one convolution each for ``gamma`` and ``beta``.
    ``forward(input, segmap)`` takes ``(N, C, H, W)`` and ``(N, label_channels, H', W')``
    (one-hot labels). Submodule names are the authors' (``param_free_norm``, ``mlp_shared``,
    ``mlp_gamma``, ``mlp_beta``), so their state dicts load. Derived in
    ``chapters/19_conditional_norms.ipynb``."""

    def __init__(self, num_features: int, label_channels: int, hidden: int = 128, kernel_size: int = 3,
                 norm: str = "batch", device=None, dtype=None):
        super().__init__()
        for value, name in ((num_features, "num_features"), (label_channels, "label_channels"), (hidden, "hidden")):
            V.check_positive_int(value, name)
        V.check_odd_positive_int(kernel_size, "kernel_size")
        factory = {"device": device, "dtype": dtype}
        if norm == "batch":
            self.param_free_norm = BatchNorm2d(num_features, affine=False, **factory)
        elif norm == "instance":
            self.param_free_norm = InstanceNorm2d(num_features, affine=False, **factory)
        else:
            raise ValueError(f"norm: expected 'batch' or 'instance', got {norm!r}")
        pad = kernel_size // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_channels, hidden, kernel_size, padding=pad, **factory),
                                        nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, num_features, kernel_size, padding=pad, **factory)
        self.mlp_beta = nn.Conv2d(hidden, num_features, kernel_size, padding=pad, **factory)
        self.label_channels = label_channels

    def forward(self, input: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        V.check_tensor(segmap, "segmap", min_dim=4, max_dim=4)
        if segmap.shape[0] != input.shape[0] or segmap.shape[1] != self.label_channels:
            raise ValueError(f"segmap: expected shape ({input.shape[0]}, {self.label_channels}, H, W), got "
                             f"{tuple(segmap.shape)}")
        normalized = self.param_free_norm(input)
        features = self.mlp_shared(TF.interpolate(segmap.to(input.dtype), size=input.shape[2:], mode="nearest"))
        return NF.modulate(normalized, self.mlp_beta(features), self.mlp_gamma(features), channels_last=False)
