"""Batched greedy and beam-search decoding of many 30-second windows at once.

`decode_batch(model, mel, options)` returns, for every window, the result that
`whisper.decode(model, mel[i], options)` returns for that window alone (same tokens, text,
avg_logprob and no_speech_prob up to float rounding), but decodes all windows together.

Algorithm
---------
1. The encoder runs once on the whole batch: (B, n_mels, 3000) -> (B, 1500, d).
2. Every window gets its initial tokens exactly as `DecodingTask._get_initial_tokens` builds
   them (<|startofprev|> + the last n_ctx//2 - 1 prompt tokens, the SOT sequence, a prefix).
   Windows may have prompts of different lengths: the initial tokens are right-padded to the
   longest and run through the decoder in one causal pass; causality means no real position
   ever sees a pad. Afterwards every row carries its own position (its prompt length plus the
   number of sampled tokens) and attends only to cache positions up to it, so one batch holds
   any mix of prompt lengths and each row computes what it would compute alone.
3. The decoder forward is our own, over the model's modules, with the same math as
   `whisper.model.TextDecoder` (scaled_dot_product_attention, LayerNorm in float32, weights
   cast to the compute dtype once per call rather than once per layer and step):
   - cross-attention keys/values are computed once per window and shared by its beams: the
     queries of a window's beams are stacked along the query axis, (B, heads, beams, d_head),
     so nothing is expanded or recomputed per beam or per step;
   - the self-attention cache is preallocated as (layers, 2, B*beams, n_text_ctx, d) and
     written in place at each row's position; reordering beams gathers the selected rows
     (over the used positions only) into a second buffer of the same size, and the two
     buffers swap roles, so nothing is allocated or grown while decoding.
4. Logit filters are those of `whisper.decode`, vectorised over rows: SuppressBlank (first
   sampled position), SuppressTokens and ApplyTimestampRules (the per-row loop becomes
   per-row state: last and penultimate sampled token and last sampled timestamp).
5. Greedy: argmax, cumulative log-probability as GreedyDecoder accumulates it.
   Beam search reproduces `BeamSearchDecoder` on the device: per window the beam*(beam+1)
   candidates (top beam+1 of every live beam, ordered beam-major as whisper inserts them in
   its dict) are stably sorted by score; candidates ending in EOT that rank before the
   beam-th non-EOT candidate are finished (kept while fewer than round(beam*patience) are),
   the first beam non-EOT candidates become the new beams. On the first step all beams of a
   window are the same sequence, which whisper's dict collapses: there only one row per
   window is expanded. A window stops when it has enough finished sequences or reaches its
   length limit; its state then stays frozen while others continue.
6. At the end (on the host, once) the finished sequences are completed with the best live
   beams when fewer than beam_size finished (as `BeamSearchDecoder.finalize` does) and
   `MaximumLikelihoodRanker` picks the result.

The only host synchronisation inside the loop is one check per step of whether any window
is still decoding.

Supported: temperature 0 greedy (beam_size None) and beam search (beam_size with any
patience and length_penalty; like whisper, beam search ignores the temperature), prompts
(options.prompt or per-window `prompts`), prefix, task transcribe/translate, language given
or detected (options.language None), with or without timestamps, max_initial_timestamp,
suppress_blank, suppress_tokens, sample_len. Sampling (temperature > 0 without beam_size,
i.e. best_of) and task "lang_id" fall back to `whisper.decode` one window at a time.

Precision: with options.fp16 on CUDA the computation is in float16 like whisper's; on CPU
it is always float32 (whisper.decode would run the model in float16 on the CPU if asked;
transcribe() turns fp16 off there), so on CPU the results equal whisper.decode with
fp16=False.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
import whisper
from torch import Tensor
from whisper.audio import CHUNK_LENGTH
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer, get_tokenizer
from whisper.utils import compression_ratio

__all__ = ["decode_batch"]

Prompt = Union[str, Sequence[int], None]

NEG_INF = float("-inf")
DEFAULT_PATIENCE = 1.0  # BeamSearchDecoder: `patience or 1.0`
SUPPRESS_ALL_NON_SPEECH = -1  # in suppress_tokens: tokenizer.non_speech_tokens
NO_TIMESTAMP = -1  # "no timestamp sampled yet" in the per-row timestamp state
LENGTH_PENALTY_BASE = 5  # Google NMT length penalty ((5 + length) / 6) ** alpha
LENGTH_PENALTY_DIVISOR = 6


@torch.no_grad()
def decode_batch(
    model: Whisper,
    mel: Tensor,
    options: DecodingOptions = DecodingOptions(),
    prompts: Optional[Sequence[Prompt]] = None,
) -> List[DecodingResult]:
    """Decode every 30-second window of `mel` at once; one DecodingResult per window.

    mel: (B, n_mels, 3000) log-Mel spectrograms (a 2-D mel is a batch of one), or already
        encoded audio features (B, n_audio_ctx, n_audio_state).
    options: as for whisper.decode.
    prompts: one prompt per window (token ids or text), replacing options.prompt for that
        window; None or empty means no prompt for that window. Without it every window uses
        options.prompt.

    Result i equals whisper.decode(model, mel[i], replace(options, prompt=prompts[i])) up to
    float rounding (on CPU compare with fp16=False; see the module docstring).
    """
    if mel.ndim == 2:
        mel = mel.unsqueeze(0)
    n_audio = mel.shape[0]
    if prompts is not None and len(prompts) != n_audio:
        raise ValueError(f"got {len(prompts)} prompts for {n_audio} windows")
    window_prompts: List[Prompt] = (
        list(prompts) if prompts is not None else [options.prompt] * n_audio
    )
    _verify_options(options)
    if n_audio == 0:
        return []
    if _needs_stock_decoder(options):
        return [
            whisper.decode(model, mel[i], replace(options, prompt=window_prompts[i]))
            for i in range(n_audio)
        ]

    plan = _Plan.create(model, options, window_prompts)
    audio_features = _encode(model, mel, options)

    languages = [options.language] * n_audio
    if options.language is None:
        # as DecodingTask._detect_language: detect, then overwrite the language token
        language_tokens, language_probs = model.detect_language(audio_features, plan.tokenizer)
        languages = [max(probs, key=probs.get) for probs in language_probs]
        for initial, sot_index, token in zip(
            plan.initial_tokens, plan.sot_indices, language_tokens.tolist()
        ):
            initial[sot_index + 1] = token

    search = _Search(model, plan, audio_features)
    if options.beam_size is None:
        tokens, sum_logprobs, no_speech_probs = search.greedy()
    else:
        tokens, sum_logprobs, no_speech_probs = search.beam(options.beam_size, options.patience)

    results = []
    for i in range(n_audio):
        text = plan.tokenizer.decode(tokens[i]).strip()
        results.append(
            DecodingResult(
                audio_features=audio_features[i],
                language=languages[i],
                tokens=tokens[i],
                text=text,
                avg_logprob=sum_logprobs[i] / (len(tokens[i]) + 1),
                no_speech_prob=no_speech_probs[i],
                temperature=options.temperature,
                compression_ratio=compression_ratio(text),
            )
        )
    return results


def _verify_options(options: DecodingOptions) -> None:
    """The checks of DecodingTask._verify_options, with the same messages."""
    if options.beam_size is not None and options.best_of is not None:
        raise ValueError("beam_size and best_of can't be given together")
    if options.temperature == 0 and options.best_of is not None:
        raise ValueError("best_of with greedy sampling (T=0) is not compatible")
    if options.patience is not None and options.beam_size is None:
        raise ValueError("patience requires beam_size to be given")
    if options.length_penalty is not None and not (0 <= options.length_penalty <= 1):
        raise ValueError("length_penalty (alpha) should be a value between 0 and 1")


def _needs_stock_decoder(options: DecodingOptions) -> bool:
    """Sampling (random, nothing to batch exactly) and language identification only."""
    sampling = options.beam_size is None and options.temperature > 0
    return sampling or options.task == "lang_id"


def _encode(model: Whisper, mel: Tensor, options: DecodingOptions) -> Tensor:
    device = model.device
    dtype = torch.float16 if options.fp16 and device.type == "cuda" else torch.float32
    mel = mel.to(device=device, dtype=dtype)
    if mel.shape[-2:] == (model.dims.n_audio_ctx, model.dims.n_audio_state):
        return mel  # already encoded, as whisper.decode accepts
    return model.encoder(mel)


@dataclass
class _Plan:
    """Everything DecodingTask derives from the options, per window where it differs."""

    tokenizer: Tokenizer
    options: DecodingOptions
    n_ctx: int
    sample_len: int
    initial_tokens: List[List[int]]  # per window
    sot_indices: List[int]  # per window: position of <|startoftranscript|>
    suppress_tokens: Optional[Tuple[int, ...]]  # None: no SuppressTokens filter
    blank_tokens: Optional[List[int]]  # None: no SuppressBlank filter
    timestamps: bool  # ApplyTimestampRules on
    max_initial_timestamp_index: Optional[int]

    @classmethod
    def create(cls, model: Whisper, options: DecodingOptions, prompts: Sequence[Prompt]) -> "_Plan":
        tokenizer = get_tokenizer(
            model.is_multilingual,
            num_languages=model.num_languages,
            language=options.language or "en",
            task=options.task,
        )
        n_ctx = model.dims.n_text_ctx
        sample_len = options.sample_len or n_ctx // 2
        sot_sequence = (
            tokenizer.sot_sequence_including_notimestamps
            if options.without_timestamps
            else tokenizer.sot_sequence
        )
        initial_tokens = [
            _initial_tokens(tokenizer, sot_sequence, options.prefix, prompt, n_ctx, sample_len)
            for prompt in prompts
        ]
        for tokens in initial_tokens:
            if len(tokens) > n_ctx:
                raise ValueError(
                    f"{len(tokens)} initial tokens do not fit the text context of {n_ctx}"
                )
        max_initial_timestamp_index = None
        if options.max_initial_timestamp:
            precision = CHUNK_LENGTH / model.dims.n_audio_ctx  # usually 0.02 seconds
            max_initial_timestamp_index = round(options.max_initial_timestamp / precision)
        return cls(
            tokenizer=tokenizer,
            options=options,
            n_ctx=n_ctx,
            sample_len=sample_len,
            initial_tokens=initial_tokens,
            sot_indices=[tokens.index(tokenizer.sot) for tokens in initial_tokens],
            suppress_tokens=(
                _suppress_tokens(tokenizer, options.suppress_tokens)
                if options.suppress_tokens
                else None
            ),
            blank_tokens=(
                tokenizer.encode(" ") + [tokenizer.eot] if options.suppress_blank else None
            ),
            timestamps=not options.without_timestamps,
            max_initial_timestamp_index=max_initial_timestamp_index,
        )

    def step_limit(self, window: int) -> int:
        """Tokens whisper samples at most for this window: sample_len, or fewer when the
        context fills up (its loop stops once the sequence is longer than n_ctx)."""
        return min(self.sample_len, self.n_ctx - len(self.initial_tokens[window]) + 1)


def _initial_tokens(
    tokenizer: Tokenizer,
    sot_sequence: Sequence[int],
    prefix: Prompt,
    prompt: Prompt,
    n_ctx: int,
    sample_len: int,
) -> List[int]:
    """DecodingTask._get_initial_tokens, for one window's prompt."""
    tokens = list(sot_sequence)
    if prefix:
        prefix_tokens = (
            tokenizer.encode(" " + prefix.strip()) if isinstance(prefix, str) else prefix
        )
        max_prefix_len = n_ctx // 2 - sample_len
        tokens = tokens + list(prefix_tokens[-max_prefix_len:])
    if prompt:
        prompt_tokens = (
            tokenizer.encode(" " + prompt.strip()) if isinstance(prompt, str) else prompt
        )
        tokens = [tokenizer.sot_prev] + list(prompt_tokens[-(n_ctx // 2 - 1) :]) + tokens
    return [int(t) for t in tokens]


def _suppress_tokens(tokenizer: Tokenizer, suppress_tokens) -> Tuple[int, ...]:
    """DecodingTask._get_suppress_tokens (without mutating the caller's list)."""
    if isinstance(suppress_tokens, str):
        suppress_tokens = [int(t) for t in suppress_tokens.split(",")]
    suppress_tokens = list(suppress_tokens)
    if SUPPRESS_ALL_NON_SPEECH in suppress_tokens:
        suppress_tokens = [t for t in suppress_tokens if t >= 0]
        suppress_tokens.extend(tokenizer.non_speech_tokens)
    suppress_tokens.extend(
        [
            tokenizer.transcribe,
            tokenizer.translate,
            tokenizer.sot,
            tokenizer.sot_prev,
            tokenizer.sot_lm,
        ]
    )
    if tokenizer.no_speech is not None:
        suppress_tokens.append(tokenizer.no_speech)  # its probability is reported separately
    return tuple(sorted(set(suppress_tokens)))


def _split_heads(x: Tensor, n_head: int) -> Tensor:
    """(batch, length, d) -> (batch, heads, length, d_head), as MultiHeadAttention does."""
    return x.view(*x.shape[:2], n_head, -1).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """(batch, heads, length, d_head) -> (batch, length, d)."""
    return x.transpose(1, 2).flatten(start_dim=2)


class _DecoderRunner:
    """whisper.model.TextDecoder's forward for B windows x `group` rows each, with the
    cross-attention keys/values of each window computed once and a preallocated
    self-attention cache written in place."""

    def __init__(self, model: Whisper, audio_features: Tensor, group: int):
        self.decoder = model.decoder
        self.dtype = audio_features.dtype
        self.device = audio_features.device
        self.n_head = model.dims.n_text_head
        self.n_ctx = model.dims.n_text_ctx
        self.group = group
        n_rows = audio_features.shape[0] * group
        self.rows = torch.arange(n_rows, device=self.device)
        # whisper's Linear casts its weights to the activations' dtype on every call; cast
        # once per decode instead (a no-op when the dtypes already agree)
        self._weights: Dict[torch.nn.Module, Tuple[Tensor, Optional[Tensor]]] = {}
        self.output_weight = self.decoder.token_embedding.weight.to(self.dtype)

        self.cross_kv: List[Tuple[Tensor, Tensor]] = []
        for block in self.decoder.blocks:
            attn = block.cross_attn
            key = F.linear(audio_features, attn.key.weight.to(self.dtype))
            value = F.linear(
                audio_features, attn.value.weight.to(self.dtype), attn.value.bias.to(self.dtype)
            )
            self.cross_kv.append((_split_heads(key, self.n_head), _split_heads(value, self.n_head)))

        # zeros, not empty: masked positions are multiplied by zero weights, and garbage
        # (NaN) there would poison the attention output. Two buffers: a beam reorder
        # gathers the rows of one into the other, which then becomes the cache.
        shape = (len(self.decoder.blocks), 2, n_rows, self.n_ctx, model.dims.n_text_state)
        self.kv = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self._spare_kv = torch.zeros_like(self.kv)

    def _linear(self, module: torch.nn.Module, x: Tensor) -> Tensor:
        weights = self._weights.get(module)
        if weights is None:
            bias = None if module.bias is None else module.bias.to(self.dtype)
            weights = self._weights[module] = (module.weight.to(self.dtype), bias)
        return F.linear(x, *weights)

    def _embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        # summed in float32, then cast, like TextDecoder.forward
        x = F.embedding(tokens, self.decoder.token_embedding.weight)
        return (x + self.decoder.positional_embedding[positions]).to(self.dtype)

    def _cross_attention_and_mlp(
        self, layer: int, block: torch.nn.Module, x: Tensor, group: int
    ) -> Tensor:
        attn = block.cross_attn
        n_rows, length, n_state = x.shape
        query = self._linear(attn.query, block.cross_attn_ln(x))
        # a window's rows (beams) become extra query positions against its keys/values
        query = query.reshape(n_rows // group, group * length, n_state)
        key, value = self.cross_kv[layer]
        out = F.scaled_dot_product_attention(_split_heads(query, self.n_head), key, value)
        x = x + self._linear(attn.out, _merge_heads(out).reshape(n_rows, length, n_state))
        hidden = block.mlp[1](self._linear(block.mlp[0], block.mlp_ln(x)))
        return x + self._linear(block.mlp[2], hidden)

    def _logits(self, x: Tensor) -> Tensor:
        return (self.decoder.ln(x) @ self.output_weight.T).float()

    def prefill(self, tokens: Tensor, cache_rows: Tensor, outputs: Tensor) -> Tensor:
        """Run the (right-padded) initial tokens (B, L) of each window, store their keys and
        values in `cache_rows`, and return the logits at positions `outputs` (B, P)."""
        length = tokens.shape[1]
        x = self._embed(tokens, torch.arange(length, device=self.device))
        for layer, block in enumerate(self.decoder.blocks):
            attn = block.attn
            h = block.attn_ln(x)
            query, key, value = (self._linear(m, h) for m in (attn.query, attn.key, attn.value))
            self.kv[layer, 0, :, :length].index_copy_(0, cache_rows, key)
            self.kv[layer, 1, :, :length].index_copy_(0, cache_rows, value)
            out = F.scaled_dot_product_attention(
                *(_split_heads(t, self.n_head) for t in (query, key, value)), is_causal=length > 1
            )
            x = x + self._linear(attn.out, _merge_heads(out))
            x = self._cross_attention_and_mlp(layer, block, x, group=1)
        x = x.gather(1, outputs[..., None].expand(-1, -1, x.shape[-1]))
        return self._logits(x)

    def step(
        self, tokens: Tensor, positions: Tensor, key_length: int, key_mask: Optional[Tensor]
    ) -> Tensor:
        """One token per row (N,) at its position (N,); attends to cache positions
        [0, key_length) where key_mask (N, key_length) allows (None: all). Logits (N, vocab)."""
        x = self._embed(tokens, positions)[:, None]
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        for layer, block in enumerate(self.decoder.blocks):
            attn = block.attn
            h = block.attn_ln(x)
            query, key, value = (self._linear(m, h) for m in (attn.query, attn.key, attn.value))
            keys, values = self.kv[layer, 0], self.kv[layer, 1]
            keys[self.rows, positions] = key[:, 0]
            values[self.rows, positions] = value[:, 0]
            out = F.scaled_dot_product_attention(
                _split_heads(query, self.n_head),
                _split_heads(keys[:, :key_length], self.n_head),
                _split_heads(values[:, :key_length], self.n_head),
                attn_mask=attn_mask,
            )
            x = x + self._linear(attn.out, _merge_heads(out))
            x = self._cross_attention_and_mlp(layer, block, x, group=self.group)
        return self._logits(x[:, 0])

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


class _Search:
    """The decoding loop over all windows, with whisper's logit filters vectorised."""

    def __init__(self, model: Whisper, plan: _Plan, audio_features: Tensor):
        self.model = model
        self.plan = plan
        self.audio_features = audio_features
        self.device = audio_features.device
        tokenizer = plan.tokenizer
        self.eot = tokenizer.eot
        self.timestamp_begin = tokenizer.timestamp_begin
        self.no_timestamps = tokenizer.no_timestamps
        self.no_speech = tokenizer.no_speech
        self.n_audio = audio_features.shape[0]
        self.n_vocab = model.dims.n_vocab
        self.columns = torch.arange(self.n_vocab, device=self.device)

        lengths = [len(tokens) for tokens in plan.initial_tokens]
        self.max_initial_length = max(lengths)
        self.uniform_lengths = len(set(lengths)) == 1  # no per-row key mask needed
        self.step_limits = [plan.step_limit(i) for i in range(self.n_audio)]
        self.max_steps = max(self.step_limits)

        def on_device(values) -> Tensor:
            return torch.tensor(values, dtype=torch.long, device=self.device)

        self.lengths_tensor = on_device(lengths)
        self.limits_tensor = on_device(self.step_limits)
        padded = [
            tokens + [self.eot] * (self.max_initial_length - len(tokens))
            for tokens in plan.initial_tokens
        ]
        self.padded_initial = on_device(padded)
        # GreedyDecoder looks at the last token of the whole sequence, prompt included
        self.last_initial = on_device([tokens[-1] for tokens in plan.initial_tokens])
        # logits read after the initial pass: at <|startoftranscript|> (no-speech) and last
        self.prefill_outputs = on_device(
            [[sot, n - 1] for sot, n in zip(plan.sot_indices, lengths)]
        )
        self.suppress_index = (
            None if plan.suppress_tokens is None else on_device(list(plan.suppress_tokens))
        )
        self.blank_index = None if plan.blank_tokens is None else on_device(plan.blank_tokens)

    # -- logit filters --------------------------------------------------------------

    def _apply_filters(
        self, logits: Tensor, step: int, last: Tensor, penultimate: Tensor, last_timestamp: Tensor
    ) -> None:
        """SuppressBlank, SuppressTokens, ApplyTimestampRules, in whisper's order, in place."""
        if self.blank_index is not None and step == 0:
            logits.index_fill_(1, self.blank_index, NEG_INF)
        if self.suppress_index is not None:
            logits.index_fill_(1, self.suppress_index, NEG_INF)
        if self.plan.timestamps:
            self._apply_timestamp_rules(logits, step, last, penultimate, last_timestamp)

    def _apply_timestamp_rules(
        self, logits: Tensor, step: int, last: Tensor, penultimate: Tensor, last_timestamp: Tensor
    ) -> None:
        begin = self.timestamp_begin
        if self.no_timestamps is not None:
            logits[:, self.no_timestamps] = NEG_INF
        if step == 0:
            # the first sampled token is a timestamp, no later than max_initial_timestamp
            logits[:, :begin] = NEG_INF
            if self.plan.max_initial_timestamp_index is not None:
                logits[:, begin + self.plan.max_initial_timestamp_index + 1 :] = NEG_INF
        else:
            last_was_timestamp = last >= begin
            if step >= 2:
                penultimate_was_timestamp = penultimate >= begin
            else:  # whisper: `len(seq) < 2 or seq[-2] >= timestamp_begin`
                penultimate_was_timestamp = torch.ones_like(last_was_timestamp)
            # a lone timestamp opens a segment: its closing timestamp (or EOT) must follow
            segment_open = last_was_timestamp & ~penultimate_was_timestamp
            # two timestamps in a row: text must follow
            pair_closed = last_was_timestamp & penultimate_was_timestamp
            text_end = torch.where(segment_open, self.eot, 0)
            # timestamps must not decrease (and must advance after a closed segment)
            timestamp_end = torch.where(
                last_timestamp == NO_TIMESTAMP, begin, last_timestamp + (~segment_open).long()
            )
            timestamp_end = torch.where(pair_closed, self.n_vocab, timestamp_end)
            columns = self.columns[None, :]
            banned = (columns < text_end[:, None]) | (
                (columns >= begin) & (columns < timestamp_end[:, None])
            )
            logits.masked_fill_(banned, NEG_INF)
        # if the timestamps together are likelier than any text token, sample a timestamp
        logprobs = F.log_softmax(logits.float(), dim=-1)
        timestamp_logprob = logprobs[:, begin:].logsumexp(dim=-1)
        max_text_logprob = logprobs[:, :begin].max(dim=-1).values
        logits[:, :begin].masked_fill_((timestamp_logprob > max_text_logprob)[:, None], NEG_INF)

    # -- shared pieces ---------------------------------------------------------------

    def _positions(self, row_lengths: Tensor, step: int) -> Tuple[Tensor, int, Optional[Tensor]]:
        """Positions of the tokens fed at `step` (>= 1), the cache length to attend to and
        the per-row key mask. Frozen rows may run past the context; they are clamped (and
        their results ignored)."""
        positions = (row_lengths + (step - 1)).clamp_(max=self.plan.n_ctx - 1)
        key_length = min(self.max_initial_length + step, self.plan.n_ctx)
        key_mask = None
        if not self.uniform_lengths:
            key_mask = self.columns[None, :key_length] <= positions[:, None]
        return positions, key_length, key_mask

    def _no_speech_probs(self, sot_logits: Tensor) -> Tensor:
        if self.no_speech is None:
            return torch.full((self.n_audio,), float("nan"), device=self.device)
        return sot_logits.float().softmax(dim=-1)[:, self.no_speech]

    def _full_sequence_tokens(self, window: int, sampled: List[int]) -> List[int]:
        """As DecodingTask.run slices: from the first sampled position to the first EOT."""
        sequence = self.plan.initial_tokens[window] + sampled + [self.eot]
        return sequence[len(self.plan.initial_tokens[window]) : sequence.index(self.eot)]

    # -- greedy ------------------------------------------------------------------------

    def greedy(self) -> Tuple[List[List[int]], List[float], List[float]]:
        runner = _DecoderRunner(self.model, self.audio_features, group=1)
        n = self.n_audio
        sum_logprobs = torch.zeros(n, device=self.device)
        sampled = torch.full((n, self.max_steps), self.eot, dtype=torch.long, device=self.device)
        # per-row state for ApplyTimestampRules (the penultimate token only matters once
        # two tokens have been sampled)
        last, penultimate = self.last_initial.clone(), torch.full_like(self.last_initial, self.eot)
        last_timestamp = torch.full((n,), NO_TIMESTAMP, dtype=torch.long, device=self.device)
        active = torch.ones(n, dtype=torch.bool, device=self.device)
        no_speech_probs = None

        for step in range(self.max_steps):
            if step == 0:
                prefill = runner.prefill(self.padded_initial, runner.rows, self.prefill_outputs)
                no_speech_probs = self._no_speech_probs(prefill[:, 0])
                logits = prefill[:, 1]
            else:
                positions, key_length, key_mask = self._positions(self.lengths_tensor, step)
                logits = runner.step(last, positions, key_length, key_mask)
            self._apply_filters(logits, step, last, penultimate, last_timestamp)

            # GreedyDecoder.update at temperature 0
            next_tokens = logits.argmax(dim=-1)
            logprobs = F.log_softmax(logits.float(), dim=-1)
            current = logprobs.gather(1, next_tokens[:, None])[:, 0]
            ended = last == self.eot
            sum_logprobs = torch.where(active, sum_logprobs + current * ~ended, sum_logprobs)
            next_tokens = torch.where(ended, self.eot, next_tokens)

            sampled[:, step] = torch.where(active, next_tokens, self.eot)
            penultimate = torch.where(active, last, penultimate)
            last = torch.where(active, next_tokens, last)
            is_timestamp = active & (next_tokens >= self.timestamp_begin)
            last_timestamp = torch.where(is_timestamp, next_tokens, last_timestamp)

            active = active & (next_tokens != self.eot) & (step + 1 < self.limits_tensor)
            if not bool(active.any()):  # the one host sync per step
                break

        sampled_rows = sampled.tolist()
        tokens = [self._full_sequence_tokens(i, sampled_rows[i]) for i in range(n)]
        return tokens, sum_logprobs.tolist(), no_speech_probs.tolist()

    # -- beam search -----------------------------------------------------------------

    def beam(
        self, beam_size: int, patience: Optional[float]
    ) -> Tuple[List[List[int]], List[float], List[float]]:
        max_candidates = round(beam_size * (patience or DEFAULT_PATIENCE))
        if max_candidates <= 0:
            raise ValueError(f"Invalid beam size ({beam_size}) or patience ({patience})")
        device, eot, n_audio = self.device, self.eot, self.n_audio
        n_rows = n_audio * beam_size
        runner = _DecoderRunner(self.model, self.audio_features, group=beam_size)
        rows = runner.rows
        window_first_rows = torch.arange(n_audio, device=device) * beam_size
        row_lengths = self.lengths_tensor.repeat_interleave(beam_size)

        sum_logprobs = torch.zeros(n_rows, device=device)
        sampled = torch.full((n_rows, self.max_steps), eot, dtype=torch.long, device=device)
        last = self.last_initial.repeat_interleave(beam_size)
        penultimate = torch.full_like(last, eot)
        last_timestamp = torch.full((n_rows,), NO_TIMESTAMP, dtype=torch.long, device=device)
        active = torch.ones(n_audio, dtype=torch.bool, device=device)
        steps_done = torch.zeros(n_audio, dtype=torch.long, device=device)
        # finished sequences per window, in whisper's insertion order; the extra slot
        # (index max_candidates) swallows writes that are not accepted
        finished_scores = torch.zeros(n_audio, max_candidates + 1, device=device)
        finished_lengths = torch.zeros(n_audio, max_candidates + 1, dtype=torch.long, device=device)
        finished_tokens = torch.full(
            (n_audio, max_candidates + 1, self.max_steps), eot, dtype=torch.long, device=device
        )
        finished_count = torch.zeros(n_audio, dtype=torch.long, device=device)
        no_speech_probs = None

        for step in range(self.max_steps):
            if step == 0:
                # all beams of a window hold the same sequence: run and expand one row
                prefill = runner.prefill(
                    self.padded_initial, window_first_rows, self.prefill_outputs
                )
                no_speech_probs = self._no_speech_probs(prefill[:, 0])
                logits = prefill[:, 1]
                state_rows, previous_scores = window_first_rows, torch.zeros(n_audio, device=device)
            else:
                positions, key_length, key_mask = self._positions(row_lengths, step)
                logits = runner.step(last, positions, key_length, key_mask)
                state_rows, previous_scores = rows, sum_logprobs
            state = (last[state_rows], penultimate[state_rows], last_timestamp[state_rows])
            self._apply_filters(logits, step, *state)

            # STEP 1 of BeamSearchDecoder.update: candidates, beam-major then by rank
            logprobs = F.log_softmax(logits.float(), dim=-1)
            top_logprobs, top_tokens = logprobs.topk(beam_size + 1, dim=-1)
            scores = (previous_scores[:, None] + top_logprobs).view(n_audio, -1)
            tokens = top_tokens.view(n_audio, -1)
            sources = state_rows[:, None].expand_as(top_tokens).reshape(n_audio, -1)

            # STEP 2: stable sort (whisper's sorted() over an insertion-ordered dict)
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices
            scores, tokens, sources = (
                scores.gather(1, order),
                tokens.gather(1, order),
                sources.gather(1, order),
            )
            is_eot = tokens == eot
            continuing_so_far = (~is_eot).cumsum(dim=1)
            # the first beam_size non-EOT candidates become the beams (there always are enough:
            # each beam has at most one EOT among its beam_size + 1 candidates)
            chosen = ~is_eot & (continuing_so_far <= beam_size)
            slot = torch.where(chosen, continuing_so_far - 1, beam_size)

            def chosen_in_order(values: Tensor) -> Tensor:  # column beam_size is scratch
                scattered = values.new_empty(n_audio, beam_size + 1).scatter_(1, slot, values)
                return scattered[:, :beam_size]

            new_scores, new_tokens, new_sources = map(chosen_in_order, (scores, tokens, sources))

            # EOT candidates seen before the loop filled the beams finish, best first, while
            # the window has fewer than max_candidates
            finishing = is_eot & (continuing_so_far < beam_size) & active[:, None]
            finished_slot = finished_count[:, None] + finishing.cumsum(dim=1) - 1
            accepted = finishing & (finished_slot < max_candidates)
            finished_slot = torch.where(accepted, finished_slot, max_candidates)
            finished_scores.scatter_(1, finished_slot, scores)
            finished_lengths.scatter_(1, finished_slot, step)
            if step > 0:
                finished_tokens[:, :, :step].scatter_(
                    1, finished_slot[..., None].expand(-1, -1, step), sampled[sources, :step]
                )
            finished_count += accepted.sum(dim=1)

            # the new beams, for windows still decoding; frozen windows keep theirs
            active_rows = active.repeat_interleave(beam_size)
            source_rows = torch.where(active_rows, new_sources.reshape(n_rows), rows)
            new_tokens = new_tokens.reshape(n_rows)
            sum_logprobs = torch.where(active_rows, new_scores.reshape(n_rows), sum_logprobs)
            if step > 0:
                sampled[:, :step] = sampled[source_rows, :step]
            sampled[:, step] = torch.where(active_rows, new_tokens, eot)
            penultimate = torch.where(active_rows, last[source_rows], penultimate)
            last_timestamp = torch.where(
                active_rows & (new_tokens >= self.timestamp_begin),
                new_tokens,
                last_timestamp[source_rows],
            )
            last = torch.where(active_rows, new_tokens, last)
            runner.reorder(source_rows, min(self.max_initial_length + step, self.plan.n_ctx))

            steps_done = torch.where(active, step + 1, steps_done)
            active = active & (finished_count < max_candidates) & (step + 1 < self.limits_tensor)
            if not bool(active.any()):  # the one host sync per step
                break

        return self._finalize_beams(
            beam_size,
            finished_count.tolist(),
            finished_scores.tolist(),
            finished_lengths.tolist(),
            finished_tokens.tolist(),
            sum_logprobs.tolist(),
            sampled.tolist(),
            steps_done.tolist(),
            no_speech_probs.tolist(),
        )

    def _finalize_beams(
        self,
        beam_size: int,
        finished_count: List[int],
        finished_scores: List[List[float]],
        finished_lengths: List[List[int]],
        finished_tokens: List[List[List[int]]],
        sum_logprobs: List[float],
        sampled: List[List[int]],
        steps_done: List[int],
        no_speech_probs: List[float],
    ) -> Tuple[List[List[int]], List[float], List[float]]:
        """BeamSearchDecoder.finalize, then MaximumLikelihoodRanker, per window."""
        all_tokens, all_logprobs = [], []
        for window in range(self.n_audio):
            candidates = [
                (
                    finished_tokens[window][k][: finished_lengths[window][k]],
                    finished_scores[window][k],
                )
                for k in range(finished_count[window])
            ]
            if len(candidates) < beam_size:  # not enough finished: add the best live beams
                first = window * beam_size
                scores = sum_logprobs[first : first + beam_size]
                # whisper walks np.argsort(scores)[::-1]: best first, ties by higher index
                for j in sorted(range(beam_size), key=lambda j: (scores[j], j), reverse=True):
                    candidates.append((sampled[first + j][: steps_done[window]], scores[j]))
                    if len(candidates) >= beam_size:
                        break
            sequences = [self._full_sequence_tokens(window, tokens) for tokens, _ in candidates]
            logprobs = [score for _, score in candidates]
            best = _rank(sequences, logprobs, self.plan.options.length_penalty)
            all_tokens.append(sequences[best])
            all_logprobs.append(logprobs[best])
        return all_tokens, all_logprobs, no_speech_probs


def _rank(
    sequences: List[List[int]], sum_logprobs: List[float], length_penalty: Optional[float]
) -> int:
    """MaximumLikelihoodRanker.rank for one window (an empty sequence divides by zero, which
    raises in whisper; here it scores -inf or NaN as numpy divides)."""
    scores = []
    for tokens, logprob in zip(sequences, sum_logprobs):
        length = len(tokens)
        if length_penalty is None:
            penalty = length
        else:
            penalty = ((LENGTH_PENALTY_BASE + length) / LENGTH_PENALTY_DIVISOR) ** length_penalty
        with np.errstate(divide="ignore", invalid="ignore"):
            scores.append(np.float64(logprob) / penalty)
    return int(np.argmax(scores))
