"""The decoder runners: whisper.model.TextDecoder's forward over the model's own modules,
for `windows` windows x `group` rows each (beams), with the same math (scaled dot-product
attention, LayerNorm in float32, weights cast to the compute dtype once rather than at
every call).

Both runners compute the cross-attention keys/values of each window once and share them
among its rows: the queries of a window's rows are stacked along the query axis,
(windows, heads, group, d_head), so nothing is expanded per beam or per step. Both keep
the self-attention cache preallocated as (layers, 2, rows, n_text_ctx, width) and write
each step's keys/values in place, and both run the initial tokens the same way
(`prefill`). They differ in the step:

- EagerDecoder, the reference (and the CPU's): attends to cache positions [0, longest
  position], a slice that grows every step; a beam reorder gathers the selected rows'
  used positions into a second buffer, and the buffers swap.
- StaticDecoder: every tensor has the same shape at every step, so a step can be captured
  in a CUDA graph. Each row attends to the whole cache of its window's rows under a mask;
  the cache is never reordered: a table `history` (rows, n_text_ctx) says which physical
  row holds the key of each position of a row's sequence, and a beam reorder gathers that
  small table only. A row writes its key at its own position in its own physical row, a
  slot no sequence has used before, since positions only grow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.model import Whisper

Weights = Tuple[Tensor, Optional[Tensor]]


@dataclass(frozen=True)
class LayerWeights:
    """One residual block's linear layers, cast to the compute dtype."""

    query: Weights
    key: Weights
    value: Weights
    out: Weights
    cross_query: Weights
    cross_out: Weights
    mlp_in: Weights
    mlp_out: Weights


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(batch, length, d) -> (batch, heads, length, d_head), as MultiHeadAttention does."""
    return x.view(*x.shape[:2], n_head, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(batch, heads, length, d_head) -> (batch, length, d)."""
    return x.transpose(1, 2).flatten(start_dim=2)


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> Weights:
    bias = None if module.bias is None else module.bias.to(dtype)
    return module.weight.to(dtype), bias


class DecoderRunner:
    """What both runners share: weights, cross-attention keys/values, cache, prefill."""

    def __init__(self, model: Whisper, windows: int, group: int, dtype: torch.dtype,
                 device: torch.device):
        self.decoder = model.decoder
        self.blocks = list(model.decoder.blocks)
        self.dtype, self.device = dtype, device
        self.n_head = model.dims.n_text_head
        self.n_ctx = model.dims.n_text_ctx
        self.windows, self.group = windows, group
        self.n_rows = windows * group
        self.rows = torch.arange(self.n_rows, device=device)
        # whisper's Linear casts its weights to the activations' dtype on every call; cast
        # once instead (a no-op when the dtypes already agree)
        self.layers: List[LayerWeights] = [
            LayerWeights(
                *(_cast(m, dtype) for m in (block.attn.query, block.attn.key, block.attn.value,
                                            block.attn.out, block.cross_attn.query,
                                            block.cross_attn.out, block.mlp[0], block.mlp[2]))
            )
            for block in self.blocks
        ]
        self.output_weight = self.decoder.token_embedding.weight.to(dtype)
        d_head = model.dims.n_text_state // self.n_head
        cross = (len(self.blocks), windows, self.n_head, model.dims.n_audio_ctx, d_head)
        self.cross_keys = torch.zeros(cross, dtype=dtype, device=device)
        self.cross_values = torch.zeros(cross, dtype=dtype, device=device)
        # zeros, not empty: masked positions are multiplied by zero weights, and garbage
        # (NaN) there would poison the attention output
        self.kv = torch.zeros(self._cache_shape(model.dims.n_text_state), dtype=dtype,
                              device=device)

    def _cache_shape(self, width: int) -> Tuple[int, ...]:
        """(layers, keys/values, rows, positions, width): a row's positions are contiguous."""
        return (len(self.blocks), 2, self.n_rows, self.n_ctx, width)

    def _store_initial(self, layer: int, cache_rows: Tensor, key: Tensor, value: Tensor) -> None:
        """Keep the initial tokens' keys/values (windows, L, width) in rows `cache_rows`."""
        length = key.shape[1]
        self.kv[layer, 0, :, :length].index_copy_(0, cache_rows, key)
        self.kv[layer, 1, :, :length].index_copy_(0, cache_rows, value)

    def load(self, audio_features: Tensor) -> None:
        """The cross-attention keys/values of a batch's windows (windows, frames, width);
        fewer windows than the runner holds leave the rest as they were (padding)."""
        count = audio_features.shape[0]
        for layer, block in enumerate(self.blocks):
            attn = block.cross_attn
            key = F.linear(audio_features, attn.key.weight.to(self.dtype))
            value = F.linear(audio_features, *_cast(attn.value, self.dtype))
            self.cross_keys[layer, :count] = split_heads(key, self.n_head)
            self.cross_values[layer, :count] = split_heads(value, self.n_head)

    def _embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        # summed in float32, then cast, like TextDecoder.forward
        x = F.embedding(tokens, self.decoder.token_embedding.weight)
        return (x + self.decoder.positional_embedding[positions]).to(self.dtype)

    def _cross_attention_and_mlp(self, layer: int, x: Tensor, group: int) -> Tensor:
        block, weights = self.blocks[layer], self.layers[layer]
        n_rows, length, n_state = x.shape
        query = F.linear(block.cross_attn_ln(x), *weights.cross_query)
        # a window's rows (beams) become extra query positions against its keys/values
        query = query.reshape(n_rows // group, group * length, n_state)
        out = F.scaled_dot_product_attention(
            split_heads(query, self.n_head), self.cross_keys[layer], self.cross_values[layer]
        )
        x = x + F.linear(merge_heads(out).reshape(n_rows, length, n_state), *weights.cross_out)
        hidden = block.mlp[1](F.linear(block.mlp_ln(x), *weights.mlp_in))
        return x + F.linear(hidden, *weights.mlp_out)

    def _self_attention_input(self, layer: int, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        weights = self.layers[layer]
        h = self.blocks[layer].attn_ln(x)
        return tuple(F.linear(h, *w) for w in (weights.query, weights.key, weights.value))

    def _logits(self, x: Tensor) -> Tensor:
        return (self.decoder.ln(x) @ self.output_weight.T).float()

    def prefill(self, tokens: Tensor, cache_rows: Tensor, outputs: Tensor) -> Tensor:
        """Run the (right-padded) initial tokens (windows, L) of each window, store their
        keys and values in `cache_rows`, and return the logits at positions `outputs`
        (windows, P). Causality means no real position ever sees a pad."""
        length = tokens.shape[1]
        x = self._embed(tokens, torch.arange(length, device=self.device))
        for layer in range(len(self.blocks)):
            query, key, value = self._self_attention_input(layer, x)
            self._store_initial(layer, cache_rows, key, value)
            out = F.scaled_dot_product_attention(
                *(split_heads(t, self.n_head) for t in (query, key, value)), is_causal=length > 1
            )
            x = x + F.linear(merge_heads(out), *self.layers[layer].out)
            x = self._cross_attention_and_mlp(layer, x, group=1)
        x = x.gather(1, outputs[..., None].expand(-1, -1, x.shape[-1]))
        return self._logits(x)


class EagerDecoder(DecoderRunner):
    """The reference step: attention over the used part of the cache only."""

    def __init__(self, model: Whisper, windows: int, group: int, dtype: torch.dtype,
                 device: torch.device):
        super().__init__(model, windows, group, dtype, device)
        self._spare_kv = torch.zeros_like(self.kv)  # a beam reorder gathers into it

    def step(self, tokens: Tensor, positions: Tensor, key_length: int,
             key_mask: Optional[Tensor]) -> Tensor:
        """One token per row (N,) at its position (N,); attends to cache positions
        [0, key_length) where key_mask (N, key_length) allows (None: all). Logits (N, vocab)."""
        x = self._embed(tokens, positions)[:, None]
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        for layer in range(len(self.blocks)):
            query, key, value = self._self_attention_input(layer, x)
            keys, values = self.kv[layer, 0], self.kv[layer, 1]
            keys[self.rows, positions] = key[:, 0]
            values[self.rows, positions] = value[:, 0]
            out = F.scaled_dot_product_attention(
                split_heads(query, self.n_head),
                split_heads(keys[:, :key_length], self.n_head),
                split_heads(values[:, :key_length], self.n_head),
                attn_mask=attn_mask,
            )
            x = x + F.linear(merge_heads(out), *self.layers[layer].out)
            x = self._cross_attention_and_mlp(layer, x, group=self.group)
        return self._logits(x[:, 0])

    def expand_first_rows(self, length: int) -> None:
        """Every row takes its window's first row's cache (the initial tokens'), for
        positions [0, length)."""
        self.reorder(self.rows // self.group * self.group, length)

    def reorder(self, source_rows: Tensor, length: int) -> None:
        """Row r of the cache becomes row source_rows[r], for positions [0, length)."""
        # seen as (layers * 2, rows, positions * width), a row's used positions are one
        # contiguous run, so the gather is a few block copies into the spare buffer
        layers, pairs, rows, n_ctx, width = self.kv.shape
        used = slice(0, length * width)
        torch.index_select(
            self.kv.view(layers * pairs, rows, n_ctx * width)[:, :, used], 1, source_rows,
            out=self._spare_kv.view(layers * pairs, rows, n_ctx * width)[:, :, used],
        )
        self.kv, self._spare_kv = self._spare_kv, self.kv


class StaticDecoder(DecoderRunner):
    """The fixed-shape step: attention over a fixed length of its window's cache under a mask.

    The cache is laid out window-major, (layers, 2, windows, positions, group, width), so
    the first `key_length` positions of all of a window's rows are one contiguous block,
    read as (windows, key_length * group, width) keys with no copy. `key_length` is a
    constant of each captured step (a multiple of KEY_BUCKET): positions past it are never
    read, so a step costs what the context used so far costs, not the whole context.
    """

    def __init__(self, model: Whisper, windows: int, group: int, dtype: torch.dtype,
                 device: torch.device):
        super().__init__(model, windows, group, dtype, device)
        self.history = torch.zeros((self.n_rows, self.n_ctx), dtype=torch.long, device=device)
        self.context = torch.arange(self.n_ctx, device=device)
        self.row_windows = self.rows // group  # each row's window
        self.row_beams = self.rows % group  # each row's place in its window
        # for row q of window w, the physical rows it may read: w * group + (0 .. group-1)
        self.window_rows = self.rows.view(windows, 1, 1, group)

    def _cache_shape(self, width: int) -> Tuple[int, ...]:
        return (len(self.blocks), 2, self.windows, self.n_ctx, self.group, width)

    def _store_initial(self, layer: int, cache_rows: Tensor, key: Tensor, value: Tensor) -> None:
        # cache_rows are the windows' first rows (place 0 in each window)
        length = key.shape[1]
        self.kv[layer, 0, :, :length, 0] = key
        self.kv[layer, 1, :, :length, 0] = value

    def start(self) -> None:
        """Every row's sequence begins with its window's initial tokens, which the prefill
        writes in the window's first row."""
        self.history.copy_((self.row_windows * self.group)[:, None].expand_as(self.history))

    def key_mask(self, positions: Tensor, key_length: int) -> Tensor:
        """Additive mask (windows, 1, group, key_length * group): row q of window w reads
        position p of physical row w * group + g when its sequence's key at p lives there,
        for p up to its position."""
        windows, group = self.windows, self.group
        owner = self.history[:, :key_length].view(windows, group, key_length, 1) == self.window_rows
        causal = self.context[None, :key_length] <= positions[:, None]
        allowed = owner & causal.view(windows, group, key_length, 1)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, float("-inf"))
        return mask.view(windows, 1, group, key_length * group)

    def step(self, tokens: Tensor, positions: Tensor, key_length: int) -> Tensor:
        """One token per row (rows,) at its position (rows,), attending to cache positions
        [0, key_length) (every position must be below it); logits (rows, vocab)."""
        windows, group = self.windows, self.group
        x = self._embed(tokens, positions)[:, None]
        self.history.scatter_(1, positions[:, None], self.rows[:, None])
        mask = self.key_mask(positions, key_length)
        for layer in range(len(self.blocks)):
            query, key, value = self._self_attention_input(layer, x)
            keys, values = self.kv[layer, 0], self.kv[layer, 1]
            keys[self.row_windows, positions, self.row_beams] = key[:, 0]
            values[self.row_windows, positions, self.row_beams] = value[:, 0]
            out = F.scaled_dot_product_attention(
                split_heads(query.view(windows, group, -1), self.n_head),
                split_heads(keys[:, :key_length].flatten(1, 2), self.n_head),
                split_heads(values[:, :key_length].flatten(1, 2), self.n_head),
                attn_mask=mask,
            )
            out = merge_heads(out).reshape(self.n_rows, 1, -1)
            x = x + F.linear(out, *self.layers[layer].out)
            x = self._cross_attention_and_mlp(layer, x, group=group)
        return self._logits(x[:, 0])

    def expand_first_rows(self, length: int) -> None:
        """Nothing to copy: `start` points every row's history at its window's first row."""

    def reorder(self, source_rows: Tensor) -> None:
        """Row r continues the sequence of row source_rows[r]: its history follows."""
        self.history.copy_(self.history[source_rows])
