"""Building blocks of the HRM: casted linear/embedding, RoPE, causal attention with a KV cache, SwiGLU.

Imports only torch, transformers and the config module: `save_pretrained` ships it with the model code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache

from .configuration_hrm import ATTN_BACKENDS

try:  # FlashAttention is optional and GPU-only.
    from flash_attn import flash_attn_func  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001 - any import failure (missing, wrong CUDA build) means "not available"
    flash_attn_func = None


def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0):
    """Fill `tensor` with a truncated normal whose std (after truncation) equals `std` (JAX/Flax style)."""
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        # Truncating N(0, 1) to [lower, upper] shrinks its std; compensate so the result has std `std`.
        sqrt2 = math.sqrt(2.0)
        cdf_lo, cdf_hi = math.erf(lower / sqrt2), math.erf(upper / sqrt2)
        z = (cdf_hi - cdf_lo) / 2.0
        pdf_lo = math.exp(-0.5 * lower**2) / math.sqrt(2 * math.pi)
        pdf_hi = math.exp(-0.5 * upper**2) / math.sqrt(2 * math.pi)
        trunc_std = math.sqrt(1 - (upper * pdf_hi - lower * pdf_lo) / z - ((pdf_hi - pdf_lo) / z) ** 2)
        comp_std = std / trunc_std
        tensor.uniform_(cdf_lo, cdf_hi)
        tensor.erfinv_().mul_(sqrt2 * comp_std).clip_(lower * comp_std, upper * comp_std)
    return tensor


def rms_norm(hidden_states: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without a learnable scale, computed in fp32 and cast back."""
    dtype = hidden_states.dtype
    x = hidden_states.to(torch.float32)
    x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return x.to(dtype)


class RMSNorm(nn.Module):
    """RMSNorm (`rms_norm`), with a learnable scale when `weight` (a retrofitted model's norms), else none.

    Without a scale the module has no parameters, so the upstream port's state dict is unchanged.
    """

    def __init__(self, hidden_size: int, eps: float, weight: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size)) if weight else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = rms_norm(hidden_states, self.eps)
        return out if self.weight is None else self.weight.to(out.dtype) * out


def _find_multiple(a: int, b: int) -> int:
    return (-(a // -b)) * b


class CastedLinear(nn.Module):
    """Linear layer with fp32 master weights cast to the input dtype at call time; LeCun truncated init."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(
            trunc_normal_init_(torch.empty(out_features, in_features), std=1.0 / math.sqrt(in_features))
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    """Embedding table kept in fp32 and cast to `cast_to` on lookup."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(
            trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std)
        )

    bias = None  # read as an output embedding (a tied LM head): logits = hidden @ weight.T, no bias

    @property
    def weight(self) -> nn.Parameter:
        """The table under the name transformers and trainers read from an output embedding."""
        return self.embedding_weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


class RotaryEmbedding(nn.Module):
    """1-D rotary position tables (rotate-half convention, emb = cat(freqs, freqs)), non-persistent."""

    def __init__(self, dim: int, max_position_embeddings: int, base: float):
        super().__init__()
        self.dim, self.max_position_embeddings, self.base = dim, max_position_embeddings, base
        cos, sin = self._tables()
        self.cos_cached: torch.Tensor
        self.sin_cached: torch.Tensor
        self.register_buffer("cos_cached", cos, persistent=False)
        self.register_buffer("sin_cached", sin, persistent=False)

    def _tables(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        steps = torch.arange(0, self.dim, 2, dtype=torch.float32, device=device)
        inv_freq = 1.0 / (self.base ** (steps / self.dim))
        t = torch.arange(self.max_position_embeddings, dtype=torch.float32, device=device)
        emb = torch.cat((torch.outer(t, inv_freq),) * 2, dim=-1)
        return emb.cos(), emb.sin()

    def reset_tables(self) -> None:
        """Recompute the tables where they live (transformers builds a model on the meta device, then moves it)."""
        cos, sin = self._tables(self.cos_cached.device)
        with torch.no_grad():
            self.cos_cached.copy_(cos)
            self.sin_cached.copy_(sin)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (cos, sin) of shape [B, S, head_dim] for integer `position_ids` [B, S]."""
        # (checked in eager mode only: a compiled decode step must not read a tensor back)
        if not torch.compiler.is_compiling() and int(position_ids.max()) >= self.cos_cached.shape[0]:
            raise ValueError(
                f"position {int(position_ids.max())} exceeds the RoPE table of {self.cos_cached.shape[0]} "
                "positions; raise `seq_len` in the model config"
            )
        return self.cos_cached[position_ids], self.sin_cached[position_ids]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate q, k of shape [B, S, H, D] by cos/sin of shape [B, S, D]."""
    cos = cos.unsqueeze(-2).to(q.dtype)
    sin = sin.unsqueeze(-2).to(q.dtype)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


def build_attn_mask(
    key_mask: torch.Tensor,
    query_len: int,
    causal: bool,
    segment_ids: torch.Tensor | None = None,
    prefix_mask: torch.Tensor | None = None,
    query_columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean [B, 1, Q, K] mask (True = attend) for `query_len` queries over K key columns.

    The queries sit at key columns `query_columns` [Q] (default: the last `query_len`; a static KV cache puts
    them where it writes). `key_mask` [B, K] hides padding keys and columns not written yet; `segment_ids`
    [B, K] (packed batches) hides keys of other examples. `prefix_mask` [B, K] (PrefixLM, True on prompt
    tokens) lets a prompt query also see the later prompt keys of its own example: the prompt is
    bidirectional, everything else stays causal. A query always sees itself, so no row is empty.
    """
    k_len = key_mask.shape[1]
    if query_columns is None:
        query_columns = torch.arange(k_len - query_len, k_len, device=key_mask.device)
    q_pos = query_columns[:, None]
    k_pos = torch.arange(k_len, device=key_mask.device)[None, :]
    allowed = key_mask.bool()[:, None, :]
    if causal:
        visible = (k_pos <= q_pos)[None]
        if prefix_mask is not None:
            prefix = prefix_mask.bool()
            visible = visible | (prefix[:, query_columns, None] & prefix[:, None, :])
        allowed = allowed & visible
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, query_columns, None] == segment_ids[:, None, :])
    allowed = allowed | (k_pos == q_pos)[None]
    return allowed[:, None]


class Attention(nn.Module):
    """Multi-head attention with a fused qkv projection, RoPE, optional causal masking and KV cache."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_key_value_heads: int,
        causal: bool,
        backend: str = "auto",
        bias: bool = False,
    ):
        super().__init__()
        if backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend must be one of {ATTN_BACKENDS}, got {backend!r}")
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_key_value_heads = num_key_value_heads
        self.causal = causal
        self.backend = backend
        self.qkv_proj = CastedLinear(hidden_size, (num_heads + 2 * num_key_value_heads) * head_dim, bias=bias)
        self.o_proj = CastedLinear(num_heads * head_dim, hidden_size, bias=False)

    def _use_flash(self, q: torch.Tensor, plain: bool) -> bool:
        if self.backend == "flash_attn":
            if flash_attn_func is None or not q.is_cuda or not plain:
                raise RuntimeError(
                    "attn_backend=flash_attn needs the flash-attn package, a CUDA device and unpadded, "
                    "uncached input; use attn_backend=auto to fall back to SDPA where it cannot run"
                )
            return True
        return (
            self.backend == "auto"
            and plain
            and flash_attn_func is not None
            and q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        slot: int | None = None,
    ) -> torch.Tensor:
        """Attend over `hidden_states` [B, S, hidden].

        `attn_mask` is a boolean [B, 1, S, K] mask from `build_attn_mask` (None = plain causal or full
        attention over S); with `cache` (a transformers `Cache`) the new keys/values go to its layer `slot`
        (this call's (segment, H cycle, L cycle, level, layer) slot) and K covers the cache.
        """
        batch, seq, _ = hidden_states.shape
        n_q, n_kv = self.num_heads, self.num_key_value_heads
        qkv = self.qkv_proj(hidden_states).view(batch, seq, n_q + 2 * n_kv, self.head_dim)
        q, k, v = qkv.split([n_q, n_kv, n_kv], dim=2)
        if cos_sin is not None:
            q, k = apply_rotary_pos_emb(q, k, *cos_sin)
        if self._use_flash(q, attn_mask is None and cache is None):
            out = flash_attn_func(q, k, v, causal=self.causal)  # type: ignore[misc]
        else:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
            if cache is not None:
                if slot is None:
                    raise ValueError("a cached attention call needs its slot (segment, H, L, level, layer)")
                k, v = cache.update(k, v, slot)
            # Grouped-query attention over a cache: SDPA reads each key-value head for its query heads
            # (enable_gqa) instead of a copy of the whole cache per step; elsewhere the heads are repeated.
            gqa = n_kv != n_q and cache is not None and self.backend != "eager"
            if n_kv != n_q and not gqa:
                k, v = k.repeat_interleave(n_q // n_kv, dim=1), v.repeat_interleave(n_q // n_kv, dim=1)
            if attn_mask is None and cache is not None:
                raise ValueError("a cached step needs an explicit attn_mask (over the cache's keys)")
            is_causal = self.causal and attn_mask is None and cache is None
            if self.backend == "eager":
                out = self._eager(q, k, v, attn_mask, is_causal)
            else:
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_mask, is_causal=is_causal, **({"enable_gqa": True} if gqa else {})
                )
            out = out.transpose(1, 2)
        return self.o_proj(out.reshape(batch, seq, n_q * self.head_dim))

    def _eager(self, q, k, v, attn_mask, is_causal):
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if is_causal:
            ones = torch.ones(q.shape[0], k.shape[2], dtype=torch.bool, device=q.device)
            attn_mask = build_attn_mask(ones, q.shape[2], causal=True)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


class SwiGLU(nn.Module):
    """Gated MLP with a fused gate/up projection: down(silu(gate) * up).

    Its width is `intermediate_size` when given, else upstream's round(expansion * hidden * 2/3) rounded up
    to a multiple of 256.
    """

    def __init__(self, hidden_size: int, expansion: float, intermediate_size: int | None = None):
        super().__init__()
        inter = intermediate_size or _find_multiple(round(expansion * hidden_size * 2 / 3), 256)
        self.gate_up_proj = CastedLinear(hidden_size, inter * 2, bias=False)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
