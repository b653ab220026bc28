"""The peer: Hugging Face transformers' `generate()` on WhisperForConditionalGeneration (the
engine under insanely-fast-whisper and SageMaker's Hugging Face container) against
`decode_batch`, side by side in one process, on the same windows with the same number of
tokens per window.

    python bench/peer.py                                        # CPU: the tests' 64-wide model
    python bench/peer.py --shape large-v3 --device cuda --windows 48 --tokens 160 --batch 48

Both models have the dimensions of the named shape and random weights (ours a seeded
synthetic checkpoint, theirs transformers' own initialisation), so nothing is downloaded.
Random weights say gibberish and rarely stop, so both sides produce exactly --tokens
tokens a window: transformers with min_new_tokens = max_new_tokens, decode_batch with EOT
suppressed and sample_len = --tokens. Both start from <|startoftranscript|><|en|>
<|transcribe|><|notimestamps|>, run their encoder in the timing, and use fp16 on CUDA
(transformers with its default SDPA attention and default cache). transformers runs at
batch 24 (insanely-fast-whisper's default) and at ours; decode_batch at both. Needs
`pip install -r bench/requirements.txt`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import whisper
from whisper.audio import N_FRAMES, N_SAMPLES, SAMPLE_RATE
from whisper.tokenizer import get_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decode_windows import speech_windows, timed  # noqa: E402  (same windows, same clock)
from whisper_service.engines.decoding import decode_batch  # noqa: E402
from whisper_service.synthetic import DIMENSIONS, make_checkpoint  # noqa: E402

PEER_BATCH = 24  # insanely-fast-whisper's default batch size
DECODINGS = {"greedy": None, "beam 5": 5}


def peer_model(shape: str, tokenizer, device: torch.device, dtype: torch.dtype):
    """WhisperForConditionalGeneration with the shape's dimensions and random weights."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    # it warns that a batch without an encoder attention mask may be ambiguous: whisper's
    # encoder takes none, every window is a full 30 s
    transformers_logging.set_verbosity_error()

    dims = DIMENSIONS[shape]
    config = WhisperConfig(
        vocab_size=dims.n_vocab, num_mel_bins=dims.n_mels, d_model=dims.n_text_state,
        encoder_layers=dims.n_audio_layer, encoder_attention_heads=dims.n_audio_head,
        decoder_layers=dims.n_text_layer, decoder_attention_heads=dims.n_text_head,
        encoder_ffn_dim=4 * dims.n_audio_state, decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx, max_target_positions=dims.n_text_ctx,
        decoder_start_token_id=tokenizer.sot, bos_token_id=tokenizer.sot,
        eos_token_id=tokenizer.eot, pad_token_id=tokenizer.eot,
        suppress_tokens=None, begin_suppress_tokens=None,
    )
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(config).to(device=device, dtype=dtype).eval()


def run_peer(model, mels: torch.Tensor, prefix: torch.Tensor, tokens: int, beams, batch: int):
    """generate() over the windows `batch` at a time: exactly `tokens` new tokens each."""
    from transformers import GenerationMixin

    out = []
    with torch.no_grad():
        for start in range(0, len(mels), batch):
            features = mels[start:start + batch]
            # GenerationMixin.generate: what WhisperForConditionalGeneration.generate hands
            # a short-form batch to, without its language / timestamp handling
            decoder_input_ids = prefix.expand(len(features), -1)
            generated = GenerationMixin.generate(
                model, input_features=features, decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=torch.ones_like(decoder_input_ids),
                max_new_tokens=tokens, min_new_tokens=tokens,
                num_beams=beams or 1, do_sample=False,
            )
            out.extend(generated[:, prefix.shape[1]:].tolist())
    return out


def run_ours(model, mels: torch.Tensor, options, batch: int):
    return [r.tokens for start in range(0, len(mels), batch)
            for r in decode_batch(model, mels[start:start + batch], options)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="test-tiny", help="checkpoint dimensions (synthetic.DIMENSIONS)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--windows", type=int, default=16, help="30 s windows of speech")
    parser.add_argument("--tokens", type=int, default=24, help="new tokens per window, both sides")
    parser.add_argument("--batch", type=int, default=16, help="our batch (windows at once)")
    parser.add_argument("--decodings", default=",".join(DECODINGS),
                        help=f"comma-separated, from {','.join(DECODINGS)}")
    args = parser.parse_args()

    device = torch.device(args.device)
    fp16 = device.type == "cuda"
    dtype = torch.float16 if fp16 else torch.float32
    with tempfile.TemporaryDirectory() as folder:
        ours = whisper.load_model(make_checkpoint(os.path.join(folder, "m.pt"), args.shape),
                                  device=device)
    tokenizer = get_tokenizer(ours.is_multilingual, num_languages=ours.num_languages,
                              language="en", task="transcribe")
    peer = peer_model(args.shape, tokenizer, device, dtype)
    windows = speech_windows(args.windows, seed=0)
    mels = torch.stack([whisper.log_mel_spectrogram(w, ours.dims.n_mels) for w in windows])
    mels = whisper.pad_or_trim(mels, N_FRAMES).to(device=device, dtype=dtype)
    prefix = torch.tensor([tokenizer.sot_sequence_including_notimestamps], device=device)
    audio_seconds = args.windows * N_SAMPLES / SAMPLE_RATE
    batches = sorted({PEER_BATCH, args.batch})

    print(f"model {args.shape} on {device} ({'fp16' if fp16 else 'fp32'}), random weights, "
          f"{args.windows} windows of speech = {audio_seconds:.0f} s, {args.tokens} new tokens "
          "a window on both sides")
    print("| decoding | engine | batch | wall s | x real time | vs transformers at batch 24 "
          "| vs transformers at the same batch | tokens a window |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.decodings.split(","):
        beams = DECODINGS[name.strip()]
        options = whisper.DecodingOptions(
            language="en", fp16=fp16, beam_size=beams, without_timestamps=True,
            sample_len=args.tokens, suppress_tokens=[-1, tokenizer.eot],  # never stops early
        )
        # warm up both (kernels, allocator, the captured steps of our batch sizes)
        run_peer(peer, mels[:2], prefix, 2, beams, 2)
        for batch in batches:
            run_ours(ours, mels[:batch], options, batch)
        peer_runs = {batch: timed(device, lambda: run_peer(peer, mels, prefix, args.tokens,
                                                            beams, batch))
                     for batch in batches}
        peer_seconds = {batch: seconds for batch, (seconds, _) in peer_runs.items()}
        for batch, (seconds, out) in peer_runs.items():
            print_row(name, "transformers generate", batch, seconds, audio_seconds,
                      peer_seconds, out)
        for batch in batches:
            seconds, out = timed(device, lambda: run_ours(ours, mels, options, batch))
            print_row(name, "decode_batch", batch, seconds, audio_seconds, peer_seconds, out)


def print_row(name, engine, batch, seconds, audio_seconds, peer_seconds, out) -> None:
    lengths = sorted({len(tokens) for tokens in out})
    vs_24 = peer_seconds[PEER_BATCH] / seconds
    vs_same = peer_seconds[batch] / seconds
    print(f"| {name} | {engine} | {batch} | {seconds:.2f} | {audio_seconds / seconds:,.0f} | "
          f"{vs_24:.2f} | {vs_same:.2f} | {'-'.join(map(str, lengths))} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
