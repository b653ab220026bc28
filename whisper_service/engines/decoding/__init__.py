"""Batched greedy and beam-search decoding of many 30-second windows at once.

`decode_batch(model, mel, options)` returns, for every window, the result that
`whisper.decode(model, mel[i], options)` returns for that window alone (same tokens, text,
avg_logprob and no_speech_prob up to float rounding), but decodes all windows together.

Modules, one job each:
- plan.py: what whisper's DecodingTask derives from the options, per window (initial
  tokens with prompt and prefix, suppressed tokens, step limits).
- runner.py: the decoder's forward over the model's own modules, cross-attention
  keys/values once per window and shared by its beams, a preallocated self-attention
  cache; the eager reference step and the fixed-shape step.
- filters.py: SuppressBlank, SuppressTokens and ApplyTimestampRules as tensor operations
  over all rows, with no host synchronisation.
- search.py: greedy and beam search (BeamSearchDecoder's candidates, stable ranking,
  finished sequences, patience) as in-place updates of a fixed-shape state;
  finalisation and MaximumLikelihoodRanker on the host, once.
- steps.py: the loop, and how a step runs: eagerly (CPU), or fixed-shape and captured once
  per (model, shape) in a CUDA graph that each step replays.
- batch.py: decode_batch itself: encoder, language detection, results.

Every window gets its initial tokens exactly as `DecodingTask._get_initial_tokens` builds
them. Windows may have prompts of different lengths: the initial tokens are right-padded
to the longest and run through the decoder in one causal pass; afterwards every row
carries its own position and attends only to cache positions up to it, so one batch holds
any mix of prompt lengths and each row computes what it would compute alone.

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

from whisper_service.engines.decoding.batch import decode_batch

__all__ = ["decode_batch"]
