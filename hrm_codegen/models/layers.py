"""Building blocks of the HRM: casted linear/embedding, RoPE, causal attention with a KV cache, SwiGLU."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

try:  # FlashAttention is optional and GPU-only.
    from flash_attn import flash_attn_func  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001 - any import failure (missing, wrong CUDA build) means "not available"
    flash_attn_func = None

ATTN_BACKENDS = ("auto", "sdpa", "eager", "flash_attn")


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

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


class RotaryEmbedding(nn.Module):
    """1-D rotary position tables (rotate-half convention, emb = cat(freqs, freqs)), non-persistent."""

    def __init__(self, dim: int, max_position_embeddings: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        t = torch.arange(max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos_cached: torch.Tensor
        self.sin_cached: torch.Tensor
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

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


CacheKey = tuple  # (segment, H cycle, L cycle or None, level "H"/"L", layer): one attention call of a step


class KVCache:
    """Dynamic (growing) key/value cache: one slot per attention call of a step, keyed explicitly.

    With causal attention each (segment, H cycle, L cycle, level, layer) call sees only earlier positions, so
    each call keeps its own slot, addressed by the key the model passes (`cache_key`). The first step
    (prefill) records the order of the keys; every later step must call the same keys in the same order, or
    `update` raises (a model that skipped or reordered a call would otherwise read another call's keys).
    `begin_step()` starts a step (the model's `lm_forward` calls it); each call appends its new keys and
    values to its slot with `torch.cat`. This is the reference the `StaticKVCache` must match.
    """

    def __init__(self) -> None:
        self.slots: dict[CacheKey, tuple[torch.Tensor, torch.Tensor]] = {}
        self.order: list[CacheKey] = []  # the keys of a step, in call order (fixed by the first step)
        self._key_mask: torch.Tensor | None = None  # [B, T] bool, True where the cached position is real
        self.cursor = 0  # calls made in the current step
        self._frozen = False  # True once a step has run: the key order is fixed

    def _begin(self) -> None:
        if self.order:  # a step has run (Python state only, so a compiled step keeps constant guards)
            if self.cursor != len(self.order):
                raise RuntimeError(
                    f"KV cache: the previous step made {self.cursor} attention calls, the prefill made "
                    f"{len(self.order)}; every step must call the same (segment, cycle, level, layer) keys"
                )
            self._frozen = True
        self.cursor = 0

    def _check_key(self, key: CacheKey | None) -> None:
        """Record `key` (first step) or check it is the next one of the first step's order."""
        if key is None:
            raise ValueError("a cached attention call needs its cache_key (segment, H, L, level, layer)")
        if not self._frozen:
            if key in self.order:
                raise RuntimeError(f"KV cache: key {key} called twice in one step")
            self.order.append(key)
        else:
            expected = self.order[self.cursor] if self.cursor < len(self.order) else None
            if key != expected:
                raise RuntimeError(
                    f"KV cache: attention call {self.cursor} of this step has key {key}, but the prefill "
                    f"{'called ' + str(expected) if expected is not None else 'made no such call'} there; "
                    "a step must call the layers in the prefill's order"
                )
        self.cursor += 1

    def begin_step(self, new_key_mask: torch.Tensor) -> None:
        """Start a step: record which of the new positions [B, S] are real tokens."""
        self._begin()
        old = self._key_mask
        self._key_mask = new_key_mask if old is None else torch.cat([old, new_key_mask], 1)

    @property
    def key_mask(self) -> torch.Tensor | None:
        """[B, T] bool over the cached positions (including the current step's), True on real tokens."""
        return self._key_mask

    @property
    def seq_len(self) -> int:
        """Number of positions cached so far (including the ones of the current step)."""
        return 0 if self.key_mask is None else self.key_mask.shape[1]

    def widen_mask(self, attn_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The step's attention mask over the keys `update` returns (here: the cached positions, as is)."""
        return attn_mask

    def update(
        self, key: CacheKey | None, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v ([B, S, H, D]) to slot `key`; return its full keys and values [B, T, H, D]."""
        self._check_key(key)
        assert key is not None
        if key in self.slots:
            old_k, old_v = self.slots[key]
            k, v = torch.cat([old_k, k], dim=1), torch.cat([old_v, v], dim=1)
        self.slots[key] = (k, v)
        return k, v

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (e.g. to expand prompts for several samples, or drop finished ones)."""
        self.slots = {
            key: (k.index_select(0, index), v.index_select(0, index)) for key, (k, v) in self.slots.items()
        }
        if self._key_mask is not None:
            self._key_mask = self._key_mask.index_select(0, index)


class StaticKVCache(KVCache):
    """Preallocated cache of `max_len` positions: slots are allocated at prefill, later steps write in place.

    Every attention call attends over the whole buffer ([B, H, max_len, D], zero-initialised) with a mask
    that hides the positions not written yet, so a one-token step has the same shapes at every position:
    that step keeps its state in tensors (the next column to write, `position`) and can be compiled once
    (`torch.compile`, CUDA graphs). Slots are keyed like `KVCache`'s; a step that calls a key the prefill did
    not allocate, or calls the keys in another order, raises. `reset()` empties it for the next prompts
    (same batch size), keeping its buffers (and their addresses) and its key order.
    """

    def __init__(self, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.buffers: dict[CacheKey, tuple[torch.Tensor, torch.Tensor]] = {}
        self.mask_buffer: torch.Tensor | None = None  # [B, max_len] bool
        self.position: torch.Tensor | None = None  # 0-d long: the next column to write
        self.columns: torch.Tensor | None = None  # [S] long: the columns of the current step
        self.length = 0  # columns written, as a Python int (kept by multi-token steps only)
        self._one_token = False

    def begin_step(self, new_key_mask: torch.Tensor) -> None:
        """Start a step: write the new positions' mask at the next columns (tensor-only for one token)."""
        self._begin()
        batch, width = new_key_mask.shape
        if self.mask_buffer is None:
            self.mask_buffer = torch.zeros(batch, self.max_len, dtype=torch.bool, device=new_key_mask.device)
            self.position = torch.zeros((), dtype=torch.long, device=new_key_mask.device)
        assert self.position is not None
        if not torch.compiler.is_compiling():
            start = int(self.position)
            if start + width > self.max_len:
                raise ValueError(f"StaticKVCache holds {self.max_len} positions; step needs {start + width}")
            if batch != self.mask_buffer.shape[0]:
                raise ValueError(f"StaticKVCache holds {self.mask_buffer.shape[0]} rows; step has {batch}")
            self.length = start + width
        self._one_token = width == 1
        self.columns = self.position + torch.arange(width, device=new_key_mask.device)
        self.mask_buffer.index_copy_(1, self.columns, new_key_mask.bool())
        self.position.add_(width)

    @property
    def key_mask(self) -> torch.Tensor | None:
        """The mask of the written positions (multi-token steps), or of the whole buffer (one-token steps)."""
        if self.mask_buffer is None:
            return None
        return self.mask_buffer if self._one_token else self.mask_buffer[:, : self.length]

    @property
    def seq_len(self) -> int:
        return self.length

    def widen_mask(self, attn_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The mask over the whole buffer: a one-token step (a decoded token, causal) sees every written real
        position and itself; a multi-token step's mask over the written positions is padded with False."""
        assert self.mask_buffer is not None and self.columns is not None
        if self._one_token:
            own = torch.arange(self.max_len, device=self.mask_buffer.device) == self.columns
            return (self.mask_buffer | own)[:, None, None, :]
        assert attn_mask is not None, "a cached step always has a mask"
        return F.pad(attn_mask, (0, self.max_len - attn_mask.shape[-1]), value=False)

    def update(
        self, key: CacheKey | None, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v ([B, S, H, D]) at the step's columns of slot `key`; return the buffers as [B, max_len, H, D]."""
        self._check_key(key)
        assert key is not None and self.columns is not None
        if key not in self.buffers:
            shape = (k.shape[0], k.shape[2], self.max_len, k.shape[3])
            self.buffers[key] = (k.new_zeros(shape), v.new_zeros(shape))
        key_buf, value_buf = self.buffers[key]
        key_buf.index_copy_(2, self.columns, k.transpose(1, 2))
        value_buf.index_copy_(2, self.columns, v.transpose(1, 2))
        return key_buf.transpose(1, 2), value_buf.transpose(1, 2)

    def reset(self) -> None:
        """Empty the cache for new prompts of the same batch size (buffers, their addresses and key order kept)."""
        for key_buf, value_buf in self.buffers.values():
            key_buf.zero_()
            value_buf.zero_()
        if self.mask_buffer is not None and self.position is not None:
            self.mask_buffer.zero_()
            self.position.zero_()
        self.length, self.cursor = 0, len(self.order)

    def tensors(self) -> list[torch.Tensor]:
        """Every buffer the steps write in place (for `torch._dynamo.mark_static_address`)."""
        out = [t for pair in self.buffers.values() for t in pair]
        return out + [t for t in (self.mask_buffer, self.position) if t is not None]

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (new buffers: do it before compiling a step over the cache)."""
        self.buffers = {
            key: (k.index_select(0, index), v.index_select(0, index)) for key, (k, v) in self.buffers.items()
        }
        if self.mask_buffer is not None:
            self.mask_buffer = self.mask_buffer.index_select(0, index)


def build_attn_mask(
    key_mask: torch.Tensor,
    query_len: int,
    causal: bool,
    segment_ids: torch.Tensor | None = None,
    prefix_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean [B, 1, Q, K] mask (True = attend) for the last `query_len` of K key positions.

    `key_mask` [B, K] hides padding keys; `segment_ids` [B, K] (packed batches) hides keys of other
    examples. `prefix_mask` [B, K] (PrefixLM, True on prompt tokens) lets a prompt query also see the
    later prompt keys of its own example: the prompt is bidirectional, everything else stays causal.
    A query always sees itself, so no row is empty and padding rows stay finite.
    """
    k_len = key_mask.shape[1]
    q_pos = torch.arange(k_len - query_len, k_len, device=key_mask.device)[:, None]
    k_pos = torch.arange(k_len, device=key_mask.device)[None, :]
    allowed = key_mask.bool()[:, None, :]
    if causal:
        visible = (k_pos <= q_pos)[None]
        if prefix_mask is not None:
            prefix = prefix_mask.bool()
            visible = visible | (prefix[:, -query_len:, None] & prefix[:, None, :])
        allowed = allowed & visible
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, -query_len:, None] == segment_ids[:, None, :])
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
        kv_cache: KVCache | None = None,
        cache_key: CacheKey | None = None,
    ) -> torch.Tensor:
        """Attend over `hidden_states` [B, S, hidden].

        `attn_mask` is a boolean [B, 1, S, K] mask from `build_attn_mask` (None = plain causal or full
        attention over S); with `kv_cache` the new keys/values go to its slot `cache_key` (this call's
        (segment, H cycle, L cycle, level, layer)) and K covers the cache.
        """
        batch, seq, _ = hidden_states.shape
        n_q, n_kv = self.num_heads, self.num_key_value_heads
        qkv = self.qkv_proj(hidden_states).view(batch, seq, n_q + 2 * n_kv, self.head_dim)
        q, k, v = qkv.split([n_q, n_kv, n_kv], dim=2)
        if cos_sin is not None:
            q, k = apply_rotary_pos_emb(q, k, *cos_sin)
        if kv_cache is not None:
            k, v = kv_cache.update(cache_key, k, v)
        if self._use_flash(q, attn_mask is None and kv_cache is None):
            out = flash_attn_func(q, k, v, causal=self.causal)  # type: ignore[misc]
        else:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
            if n_kv != n_q:
                k, v = k.repeat_interleave(n_q // n_kv, dim=1), v.repeat_interleave(n_q // n_kv, dim=1)
            if attn_mask is None and kv_cache is not None and (self.causal and seq > 1):
                raise ValueError("a cached multi-token step needs an explicit attn_mask")
            is_causal = self.causal and attn_mask is None and kv_cache is None
            if self.backend == "eager":
                out = self._eager(q, k, v, attn_mask, is_causal)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
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
