"""A small pre-norm GPT (decoder-only transformer) whose normalization layer is a parameter,
in the spirit of nanoGPT's single readable file. The attention and the rotary position
encoding are shared with :mod:`normlib.book.models.ngpt`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as TF
from torch import nn

from normlib.functional import l2_normalize
from normlib.nn import LayerNorm, QKNorm


def rotary_tables(positions: int, d: int, device=None, dtype=torch.float32,
                  base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of the rotary angles ``t * base**(-2i/d)``, each ``(positions, d/2)``,
    in float32 at least (``t * f`` needs the digits)."""
    if d % 2:
        raise ValueError(f"x: expected an even head dimension for rotary positions, got {d}")
    dtype = torch.promote_types(dtype, torch.float32)
    frequencies = base ** (-torch.arange(0, d, 2, device=device, dtype=dtype) / d)
    angles = torch.arange(positions, device=device, dtype=dtype)[:, None] * frequencies
    return angles.cos(), angles.sin()


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position encoding (RoPE) of queries or keys ``(N, heads, T, d)``: the feature pairs
    ``(i, i + d/2)`` of position ``t`` are rotated by the angle ``t * base**(-2i/d)``, so that
    ``q_t . k_s`` depends on the offset ``t - s``. A rotation keeps every vector's norm."""
    t, d = x.shape[-2], x.shape[-1]
    cos, sin = (table.to(x.dtype) for table in rotary_tables(t, d, x.device, x.dtype, base))
    first, second = x[..., : d // 2], x[..., d // 2:]
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused query/key/value projection.
    ``qk_norm(head_width)``, when given, builds a norm applied to every head's queries and keys
    over the head dimension before the rotary encoding (QK-norm: Henry et al. 2020, Dehghani
    et al. 2023, Wortsman et al. 2024); the softmax keeps its ``1/sqrt(head_width)`` scale. A
    :class:`normlib.nn.QKNorm` does both in one op (:func:`normlib.functional.qk_norm`), reading
    the queries and keys in place from the fused projection."""

    def __init__(self, width: int, heads: int, rotary_positions: bool = False,
                 qk_norm: Callable[[int], nn.Module] | None = None):
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"heads: expected a divisor of width={width}, got {heads}")
        self.heads, self.rotary_positions = heads, rotary_positions
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        if qk_norm is not None:  # no modules otherwise: the state dict stays as it was
            self.q_norm, self.k_norm = qk_norm(width // heads), qk_norm(width // heads)

    def queries_keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(N, T, width)`` -> three ``(N, heads, T, width / heads)`` tensors."""
        n, t, d = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.heads, d // self.heads)
        if isinstance(getattr(self, "q_norm", None), QKNorm):
            # per-head QK-norm and the rotary encoding in one op (one kernel on a GPU), the
            # queries and keys read in place from the fused projection
            cos, sin = rotary_tables(t, d // self.heads, x.device, x.dtype) if self.rotary_positions else (None, None)
            q, k = (norm(qkv[:, :, i], cos, sin).transpose(1, 2) for i, norm in enumerate((self.q_norm, self.k_norm)))
            return q, k, qkv[:, :, 2].transpose(1, 2)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary_positions:
            q, k = rotary(q), rotary(k)
        return q, k, v

    def attention_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled logits ``q . k / sqrt(head_width)`` of every head, ``(N, heads, T, T)``,
        with the positions a query may not attend to (the future) set to ``-inf``."""
        q, k, _ = self.queries_keys_values(x)
        logits = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        t = x.shape[1]
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        return logits.masked_fill(future, float("-inf"))

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        n, h, t, d = y.shape
        return self.out(y.transpose(1, 2).reshape(n, t, h * d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.queries_keys_values(x)
        return self.merge_heads(TF.scaled_dot_product_attention(q, k, v, is_causal=True))


def swiglu_width(width: int) -> int:
    """The hidden width of a SwiGLU MLP with the parameters of a ``4 * width`` GELU MLP: about
    ``8 * width / 3`` (three matrices instead of two), rounded up to a multiple of 8."""
    return 8 * ((8 * width // 3 + 7) // 8)


class SwiGLU(nn.Module):
    """``out(u(x) * silu(v(x)))`` (Shazeer 2020), the MLP of LLaMA-style models and of nGPT."""

    def __init__(self, width: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or swiglu_width(width)
        self.u, self.v = nn.Linear(width, hidden, bias=False), nn.Linear(width, hidden, bias=False)
        self.out = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.u(x) * TF.silu(self.v(x)))


PLACEMENTS = ("pre", "post", "deepnorm", "sandwich")


def deepnorm_constants(depth: int) -> tuple[float, float]:
    """DeepNorm's ``(alpha, beta)`` for a decoder-only stack of ``depth`` blocks (Wang et al.
    2022): the residual is scaled by ``alpha = (2 depth)^(1/4)`` and the value, output and MLP
    weights start at Xavier-normal with gain ``beta = (8 depth)^(-1/4)``."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth: expected a positive integer, got {depth!r}")
    return (2 * depth) ** 0.25, (8 * depth) ** -0.25


class Block(nn.Module):
    """One residual block, attention then MLP, each sublayer ``f`` placed around its norm as
    ``placement`` says:

    * ``"pre"``: ``x + f(norm(x))`` (GPT-2, LLaMA);
    * ``"post"``: ``norm(x + f(x))`` (the original Transformer, BERT);
    * ``"deepnorm"``: ``norm(alpha * x + f(x))`` (DeepNet), post-norm with an up-weighted residual;
    * ``"sandwich"``: ``x + norm_out(f(norm(x)))`` (CogView's sandwich LN, the peri-LN of
      recent models): a second norm on the sublayer's output, before it joins the stream."""

    def __init__(self, width: int, heads: int, norm: Callable[[int], nn.Module], rotary_positions: bool = False,
                 mlp: str = "gelu", placement: str = "pre", alpha: float = 1.0,
                 qk_norm: Callable[[int], nn.Module] | None = None):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement: expected one of {PLACEMENTS}, got {placement!r}")
        self.placement, self.alpha = placement, alpha
        self.norm_attention, self.norm_mlp = norm(width), norm(width)
        # the output norms: sandwich's own; the identity (no parameters) for pre-norm
        out = norm if placement == "sandwich" else lambda _: nn.Identity()
        self.norm_attention_out, self.norm_mlp_out = out(width), out(width)
        self.attention = CausalSelfAttention(width, heads, rotary_positions, qk_norm)
        if mlp == "gelu":
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width, bias=False), nn.GELU(),
                                     nn.Linear(4 * width, width, bias=False))
        else:
            self.mlp = SwiGLU(width)

    def _sublayer(self, x: torch.Tensor, f: nn.Module, norm: nn.Module, norm_out: nn.Module) -> torch.Tensor:
        if self.placement in ("post", "deepnorm"):
            return norm(self.alpha * x + f(x))  # alpha = 1 for post
        return x + norm_out(f(norm(x)))  # pre and sandwich

    @property
    def mlp_out(self) -> nn.Linear:
        """The MLP's output projection (``W_2`` of the FFN in Xiong et al.), whichever the MLP."""
        return self.mlp.out if isinstance(self.mlp, SwiGLU) else self.mlp[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._sublayer(x, self.attention, self.norm_attention, self.norm_attention_out)
        return self._sublayer(x, self.mlp, self.norm_mlp, self.norm_mlp_out)

    def deepnorm_init_(self, beta: float) -> None:
        """DeepNet's initialization: Xavier-normal with gain ``beta`` for the value and output
        projections and the MLP, gain 1 for the queries and keys (each a ``width x width`` slice
        of the fused projection)."""
        width = self.attention.out.in_features
        for part, gain in enumerate((1.0, 1.0, beta)):  # queries, keys, values: fans of one slice
            nn.init.xavier_normal_(self.attention.qkv.weight[part * width:(part + 1) * width], gain=gain)
        for layer in [self.attention.out, *(m for m in self.mlp.modules() if isinstance(m, nn.Linear))]:
            nn.init.xavier_normal_(layer.weight, gain=beta)


class GPT(nn.Module):
    """Token embeddings, ``depth`` residual blocks, a final norm and a linear read-out.
    ``norm(width)`` builds every normalization layer (LayerNorm by default). Positions are
    learned embeddings added to the tokens (``positions="learned"``) or rotary encodings of
    the queries and keys (``positions="rotary"``, as in nGPT's baseline). The MLP is a
    ``4 * width`` GELU MLP (``mlp="gelu"``) or a SwiGLU of the same size (``mlp="swiglu"``).
    ``placement`` puts the norms before the sublayers (``"pre"``, the default), after the
    residual sum (``"post"``), after a residual sum scaled by DeepNorm's alpha with DeepNet's
    initialization (``"deepnorm"``), or on both sides of the sublayer (``"sandwich"``); see
    :class:`normlib.book.models.gpt.Block`. ``init="normal"`` draws every matrix and embedding
    from N(0, 0.02^2) (GPT-2, nanoGPT); ``init="xavier"`` is the original Transformer's regime
    that Xiong et al. analyse: Xavier-normal matrices and unit-variance embeddings (the
    Transformer's ``sqrt(width)`` embedding scale), so the residual stream starts at norm
    about ``sqrt(width)`` per embedding (``sqrt(2 width)`` with learned positions added);
    DeepNorm's own initialization then overrides the blocks'. Post-norm stacks end normalized,
    so ``"post"`` and ``"deepnorm"`` have no final norm (``self.norm`` is the identity), as in
    the original Transformer. ``qk_norm(head_width)``, when given, normalizes every head's
    queries and keys (see :class:`normlib.book.models.gpt.CausalSelfAttention`).
    ``fixnorm=True`` fixes the length of the word vectors (FixNorm, Nguyen & Chiang 2018, as
    Nguyen & Salazar 2019 use it): the token embeddings enter at length ``sqrt(width)`` and the
    read-out's rows at length 1, so a logit is the final hidden state's length times a cosine;
    unlike the authors' model, input and output embeddings stay untied.
    Used in ``chapters/04_rms_norm.ipynb``, ``chapters/13_norm_placement.ipynb``,
    ``chapters/14_attention_norms.ipynb`` and ``chapters/16_ngpt.ipynb``."""

    def __init__(self, vocab_size: int, context: int, width: int = 64, depth: int = 2, heads: int = 4,
                 norm: Callable[[int], nn.Module] = LayerNorm, positions: str = "learned", mlp: str = "gelu",
                 placement: str = "pre", init: str = "normal", qk_norm: Callable[[int], nn.Module] | None = None,
                 fixnorm: bool = False):
        super().__init__()
        if positions not in ("learned", "rotary"):
            raise ValueError(f"positions: expected 'learned' or 'rotary', got {positions!r}")
        if mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp: expected 'gelu' or 'swiglu', got {mlp!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement: expected one of {PLACEMENTS}, got {placement!r}")
        if init not in ("normal", "xavier"):
            raise ValueError(f"init: expected 'normal' or 'xavier', got {init!r}")
        if not isinstance(fixnorm, bool):
            raise TypeError(f"fixnorm: expected a bool, got {type(fixnorm).__name__}")
        self.context, self.placement, self.fixnorm = context, placement, fixnorm
        self.token = nn.Embedding(vocab_size, width)
        if positions == "learned":
            self.position = nn.Embedding(context, width)
        alpha, beta = deepnorm_constants(depth) if placement == "deepnorm" else (1.0, 1.0)
        self.blocks = nn.ModuleList(Block(width, heads, norm, positions == "rotary", mlp, placement, alpha, qk_norm)
                                    for _ in range(depth))
        self.norm = nn.Identity() if placement in ("post", "deepnorm") else norm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.apply(self._init if init == "normal" else self._xavier_init)
        if placement == "deepnorm":
            for block in self.blocks:
                block.deepnorm_init_(beta)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    @staticmethod
    def _xavier_init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0)

    def hidden_states(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream after the embedding and after each block, ``(N, T, width)`` each."""
        check_token_ids(ids, self.context)
        x = self.token(ids)
        if self.fixnorm:
            x = l2_normalize(x) * x.shape[-1] ** 0.5
        if hasattr(self, "position"):
            x = x + self.position(torch.arange(ids.shape[1], device=ids.device))
        states = [x]
        for block in self.blocks:
            states.append(block(states[-1]))
        return states

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.hidden_states(ids)[-1])
        return TF.linear(h, l2_normalize(self.head.weight)) if self.fixnorm else self.head(h)


def check_token_ids(ids: torch.Tensor, context: int) -> None:
    if ids.dim() != 2 or ids.dtype != torch.long:
        raise ValueError(f"ids: expected a (N, T) tensor of int64 token ids, got shape {tuple(ids.shape)} and {ids.dtype}")
    if ids.shape[1] > context:
        raise ValueError(f"ids: expected at most {context} positions, got {ids.shape[1]}")


def mlp_output_gradient_norms(model: GPT, ids: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """The norm of the gradient of the next-token loss on one batch with respect to each
    block's MLP output matrix (``W_2`` in Xiong et al. 2020), first block first: the quantity
    whose size at initialization tells post-LN from pre-LN. The model's other gradients are
    left as they were. Used in ``chapters/13_norm_placement.ipynb``."""
    weights = [block.mlp_out.weight for block in model.blocks]
    loss = TF.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    return [g.norm().item() for g in torch.autograd.grad(loss, weights)]


def max_attention_logits(model: GPT, ids: torch.Tensor) -> list[float]:
    """The largest scaled attention logit ``q . k / sqrt(head_width)`` of each block on a batch
    of token ids, first block first: the quantity whose growth at a high learning rate makes
    attention collapse onto one key (Dehghani et al. 2023; Wortsman et al. 2024)."""
    inputs = []
    hooks = [block.attention.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
             for block in model.blocks]
    try:
        with torch.no_grad():
            model(ids)
            return [block.attention.attention_logits(x).amax().item() for block, x in zip(model.blocks, inputs)]
    finally:
        for hook in hooks:
            hook.remove()
