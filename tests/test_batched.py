"""decode_batch gives, window by window, exactly what whisper.decode gives for that window alone."""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest
import torch
import whisper
from whisper.audio import N_FRAMES, SAMPLE_RATE
from whisper.tokenizer import get_tokenizer

from whisper_service.engines.decoding import decode_batch, runner, steps
from whisper_service.synthetic import make_checkpoint

SECONDS = 30
FLOAT_TOLERANCE = 1e-4  # CPU float32: batched and single-window matmuls round differently
EOT_LOGIT_BOOST = 0.55  # added to EOT's logit so that random weights end sequences early
EOT_MODEL_SEED = 5  # with this boost: lengths from 1 to 32 across the cases below
N_TEXT_CTX = 64  # of the "test-tiny" shape: sample_len is 32, prompts keep their last 31 tokens


def _signals() -> List[np.ndarray]:
    """Six different 30 s inputs: noise at several levels, tones, silence, a short clip."""
    rng = np.random.default_rng(1234)
    t = np.arange(SAMPLE_RATE * SECONDS) / SAMPLE_RATE
    short = rng.normal(0, 0.2, SAMPLE_RATE * 5)
    return [
        rng.normal(0, 0.1, t.size),
        0.3 * np.sin(2 * np.pi * 440 * t),
        np.zeros(t.size),
        0.2 * np.sin(2 * np.pi * (200 + 40 * t) * t),  # a chirp
        rng.normal(0, 0.3, t.size) * (np.sin(2 * np.pi * 1.5 * t) > 0),  # bursts
        short,  # padded to 30 s with silence
    ]


@pytest.fixture(scope="module")
def mels() -> torch.Tensor:
    audio = [whisper.pad_or_trim(torch.tensor(s, dtype=torch.float32)) for s in _signals()]
    mel = torch.stack([whisper.log_mel_spectrogram(a) for a in audio])
    assert mel.shape == (6, 80, N_FRAMES)
    return mel


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Dict[str, whisper.Whisper]:
    folder = tmp_path_factory.mktemp("batched-models")
    plain = whisper.load_model(make_checkpoint(str(folder / "plain.pt"), seed=0), device="cpu")
    early = whisper.load_model(
        make_checkpoint(str(folder / "eot.pt"), seed=EOT_MODEL_SEED), device="cpu"
    )
    eot = get_tokenizer(True, num_languages=early.num_languages).eot
    with torch.no_grad():
        # logits are decoder.ln(x) @ embedding.T: shifting the final LayerNorm's bias along
        # EOT's embedding raises EOT's logit by exactly the boost at every step (and moves
        # the other logits only a little)
        eot_embedding = early.decoder.token_embedding.weight[eot]
        early.decoder.ln.bias += EOT_LOGIT_BOOST * eot_embedding / eot_embedding.dot(eot_embedding)
    return {"plain": plain, "eot": early}


@pytest.fixture(scope="module")
def prompts() -> List[Optional[Sequence[int]]]:
    """Mixed initial lengths in one batch, including a prompt longer than n_ctx // 2 - 1
    (whisper keeps its tail, and the context then limits the sampled tokens to fewer than 32)."""
    tokenizer = get_tokenizer(True, num_languages=99)
    words = tokenizer.encode(" the quick brown fox jumps over the lazy dog")
    return [
        None,
        words[:5],
        list(range(1000, 1050)),  # truncated to its last 31 tokens
        [],
        words[:5],  # same length as window 1
        list(range(2000, 2020)),
    ]


def _options(**fields) -> whisper.DecodingOptions:
    return whisper.DecodingOptions(language="en", fp16=False, **fields)


def _assert_matches(model, mel, options, prompts=None) -> List[whisper.DecodingResult]:
    results = decode_batch(model, mel, options, prompts)
    assert len(results) == mel.shape[0]
    for i, result in enumerate(results):
        window_options = options if prompts is None else replace(options, prompt=prompts[i])
        expected = whisper.decode(model, mel[i], window_options)
        assert result.tokens == expected.tokens, f"window {i}"
        assert result.text == expected.text
        assert result.language == expected.language
        assert result.avg_logprob == pytest.approx(expected.avg_logprob, abs=FLOAT_TOLERANCE)
        assert result.no_speech_prob == pytest.approx(expected.no_speech_prob, abs=FLOAT_TOLERANCE)
        assert result.compression_ratio == pytest.approx(expected.compression_ratio)
        assert result.temperature == expected.temperature
        torch.testing.assert_close(
            result.audio_features, expected.audio_features, atol=FLOAT_TOLERANCE, rtol=0
        )
    return results


def _assert_same_results(static, eager) -> None:
    assert [r.tokens for r in static] == [r.tokens for r in eager]
    for s, e in zip(static, eager):
        assert s.text == e.text
        assert s.avg_logprob == pytest.approx(e.avg_logprob, abs=FLOAT_TOLERANCE)
        assert s.no_speech_prob == pytest.approx(e.no_speech_prob, abs=FLOAT_TOLERANCE)


CASES = {
    "greedy": _options(),
    "greedy-notimestamps": _options(without_timestamps=True),
    "greedy-translate": _options(task="translate"),
    "beam5": _options(beam_size=5),
    "beam5-notimestamps": _options(beam_size=5, without_timestamps=True),
    "beam5-patience2": _options(beam_size=5, patience=2.0),
    "beam5-patience2-translate-notimestamps": _options(
        beam_size=5, patience=2.0, task="translate", without_timestamps=True
    ),
    "beam3-lengthpenalty": _options(beam_size=3, length_penalty=0.5),
    "beam5-patience0.6": _options(beam_size=5, patience=0.6),  # fewer finished than beams
}


# the EOT model covers every case (sequences end at different steps); the plain one, whose
# sequences run to the length limit, the paths where unfinished beams are ranked
PLAIN_MODEL_CASES = [
    "greedy",
    "beam5",
    "beam3-lengthpenalty",
    "beam5-patience2-translate-notimestamps",
]


# where the fixed-shape step is checked too (the task token changes nothing in a step;
# the plain model's long sequences cross key buckets in test_static_step_across_...)
STATIC_CASES = {
    ("eot", case) for case in CASES if "translate" not in case
} | {("plain", "beam5")}


@pytest.mark.parametrize(
    "model_name, case",
    [("eot", case) for case in CASES] + [("plain", case) for case in PLAIN_MODEL_CASES],
)
def test_batch_with_mixed_prompts_matches_whisper_decode(models, mels, prompts, model_name, case):
    eager = _assert_matches(models[model_name], mels, CASES[case], prompts)
    if (model_name, case) in STATIC_CASES:
        # the fixed-shape step (the one a CUDA graph captures) gives the same: six windows
        # in a shape of 8, two of them padding; attention over the cache under a mask,
        # beams followed through the history table
        static = decode_batch(models[model_name], mels, CASES[case], prompts, static=True)
        _assert_same_results(static, eager)


@pytest.mark.parametrize("case", ["greedy", "beam5-patience2", "beam3-lengthpenalty"])
def test_single_window_with_options_prompt(models, mels, case):
    options = replace(CASES[case], prompt=list(range(500, 510)))
    eager = _assert_matches(models["eot"], mels[3:4], options)
    _assert_same_results(decode_batch(models["eot"], mels[3:4], options, static=True), eager)


def test_text_prompt_and_prefix(models, mels):
    options = _options(beam_size=5, prompt="previous words", prefix="and then")
    _assert_matches(models["eot"], mels[:2], options)
    _assert_matches(models["eot"], mels[2:4], options, prompts=["a longer previous text", None])


def test_boosted_eot_ends_sequences_at_different_steps(models, mels, prompts):
    """The EOT model really exercises the finished-sequence logic (random weights alone
    almost never end a sequence), and the plain one the context limit of a long prompt."""
    for case in ("greedy", "beam5", "beam5-patience2"):
        lengths = [len(r.tokens) for r in decode_batch(models["eot"], mels, CASES[case], prompts)]
        assert max(lengths) < N_TEXT_CTX // 2, case  # every window ended with EOT
        assert len(set(lengths)) >= 2, case  # at different steps
    lengths = [len(r.tokens) for r in decode_batch(models["plain"], mels, CASES["beam5"], prompts)]
    # <|startofprev|> + 31 prompt tokens + 3 SOT tokens = 35: room for 64 - 35 + 1 = 30 tokens
    assert lengths == [32, 32, 30, 32, 32, 32]


def test_language_detection(models, mels, prompts):
    options = whisper.DecodingOptions(language=None, fp16=False, beam_size=3)
    results = _assert_matches(models["plain"], mels[:3], options, prompts[:3])
    assert all(r.language in whisper.tokenizer.LANGUAGES for r in results)


def test_english_only_model(tmp_path, mels):
    model = whisper.load_model(
        make_checkpoint(str(tmp_path / "en.pt"), shape="test-tiny.en", seed=2), device="cpu"
    )
    for options in (_options(), _options(beam_size=4, without_timestamps=True)):
        window_prompts = [None, [100, 200], [5] * 40]
        eager = _assert_matches(model, mels[:3], options, prompts=window_prompts)
        static = decode_batch(model, mels[:3], options, window_prompts, static=True)
        _assert_same_results(static, eager)


def test_sampling_falls_back_to_whisper_decode(models, mels, prompts):
    options = _options(temperature=0.8, best_of=2)
    torch.manual_seed(7)
    results = decode_batch(models["plain"], mels[:3], options, prompts[:3])
    torch.manual_seed(7)
    expected = [
        whisper.decode(models["plain"], mels[i], replace(options, prompt=prompts[i]))
        for i in range(3)
    ]
    assert [r.tokens for r in results] == [e.tokens for e in expected]


def test_invalid_arguments(models, mels):
    with pytest.raises(ValueError, match="prompts"):
        decode_batch(models["plain"], mels[:2], _options(), prompts=[None])
    with pytest.raises(ValueError, match="beam_size and best_of"):
        decode_batch(models["plain"], mels[:2], _options(beam_size=2, best_of=2))
    assert decode_batch(models["plain"], mels[:0], _options()) == []


def test_self_attention_cache_is_preallocated_and_written_in_place(
    models, mels, prompts, monkeypatch
):
    """No torch.cat growth: every step sees one of the two cache buffers allocated up front
    (a beam reorder gathers into the other), sized n_text_ctx, and nothing is concatenated
    anywhere in the decode."""
    seen = []
    original_step = runner.EagerDecoder.step

    def recording_step(self, *args, **kwargs):
        seen.append((self.kv.data_ptr(), tuple(self.kv.shape)))
        return original_step(self, *args, **kwargs)

    def forbidden_cat(*args, **kwargs):
        raise AssertionError("torch.cat called while decoding")

    model = models["plain"]
    monkeypatch.setattr(runner.EagerDecoder, "step", recording_step)
    monkeypatch.setattr(torch, "cat", forbidden_cat)
    results = decode_batch(model, mels, CASES["beam5-patience2"], prompts, static=False)
    monkeypatch.undo()

    assert len(seen) == max(len(r.tokens) for r in results) - 1 >= 10
    assert len(set(seen)) == 2  # the same two buffers, taking turns
    assert seen[0] != seen[1] and seen[0] == seen[2]
    n_layer, n_kv, n_rows, n_ctx, n_state = seen[0][1]
    assert (n_layer, n_kv, n_rows, n_ctx, n_state) == (
        model.dims.n_text_layer,
        2,
        6 * 5,
        model.dims.n_text_ctx,
        model.dims.n_text_state,
    )


# -- the fixed-shape step (the one a CUDA graph captures), proven on the CPU ----------------

def test_static_step_matches_whisper_decode_with_prompt_prefix_and_language_detection(
    models, mels
):
    options = whisper.DecodingOptions(language=None, fp16=False, beam_size=5, patience=2.0,
                                      prompt="previous words", prefix="and then")
    results = decode_batch(models["eot"], mels[:2], options, static=True)
    for i, result in enumerate(results):
        expected = whisper.decode(models["eot"], mels[i], options)
        assert (result.tokens, result.language) == (expected.tokens, expected.language)
        assert result.avg_logprob == pytest.approx(expected.avg_logprob, abs=FLOAT_TOLERANCE)


def test_static_step_across_key_length_buckets(models, mels, prompts, monkeypatch):
    """With buckets of 16 positions, sequences that run to the limit cross from one
    captured key length to the next (initial lengths 3 to 35, up to 64 positions)."""
    case = "beam5-patience2"  # beams followed through the history across buckets
    eager = decode_batch(models["plain"], mels, CASES[case], prompts, static=False)
    monkeypatch.setattr(steps, "KEY_BUCKET", 16)
    used = []
    original = steps.key_bucket
    monkeypatch.setattr(steps, "key_bucket", lambda *a: used.append(original(*a)) or used[-1])
    static = decode_batch(models["plain"], mels, CASES[case], prompts, static=True)
    _assert_same_results(static, eager)
    assert sorted(set(used)) == [48, 64]  # the longest initial tokens are 35
