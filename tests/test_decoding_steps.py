"""The fixed-shape decoder step is capturable: it compiles as one graph with no host
synchronisation, calls no hooked module, and a cancel lands within one step."""

from __future__ import annotations

from typing import Dict

import pytest
import torch
import whisper
from whisper.audio import N_FRAMES

from whisper_service import cancel
from whisper_service.engines.decoding import decode_batch, steps
from whisper_service.engines.decoding.plan import DecodePlan
from whisper_service.engines.decoding.search import WindowInputs
from whisper_service.synthetic import make_checkpoint

WINDOWS = 3  # a bucket of 4: one padding window
SAMPLE_LEN = 8  # a few steps are all these tests need
OPTIONS = {
    "greedy": whisper.DecodingOptions(language="en", fp16=False, sample_len=SAMPLE_LEN),
    "beam5-patience2": whisper.DecodingOptions(language="en", fp16=False, beam_size=5,
                                               patience=2.0, sample_len=SAMPLE_LEN),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> whisper.Whisper:
    path = make_checkpoint(str(tmp_path_factory.mktemp("steps") / "tiny.pt"), seed=3)
    return whisper.load_model(path, device="cpu")


@pytest.fixture(scope="module")
def mels() -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    return torch.randn((WINDOWS, 80, N_FRAMES), generator=generator) * 0.5


def _started_session(model, mels, options) -> steps.StaticSession:
    """A session after the initial pass and the first sampled position: ready to step."""
    plan = DecodePlan.create(model, options, [None, [1, 2, 3], None])
    shape = steps.StepShape.create(plan, steps.window_bucket(WINDOWS), torch.float32)
    session = steps.StaticSession(model, plan, shape, torch.device("cpu"))
    with torch.no_grad():
        session.filters.load(plan)
        session.runner.load(model.encoder(mels))
        session.runner.start()
        inputs = WindowInputs.create(plan, shape.windows, torch.device("cpu"))
        search = session.search
        search.start(inputs)
        prefill = session.runner.prefill(inputs.initial, search.rows[:: search.group],
                                         inputs.prefill_outputs)
        search.first(prefill[:, 1], prefill[:, 0], plan.tokenizer.no_speech)
    return session


def _state(session: steps.StaticSession) -> Dict[str, torch.Tensor]:
    tensors = {"kv": session.runner.kv, "history": session.runner.history}
    tensors.update({name: value for name, value in vars(session.search).items()
                    if isinstance(value, torch.Tensor)})
    return {name: tensor.clone() for name, tensor in tensors.items()}


@pytest.mark.parametrize("case", list(OPTIONS))
def test_static_step_compiles_as_one_graph_without_host_syncs(model, mels, case):
    """fullgraph=True fails on any graph break: .item(), .tolist(), nonzero, boolean
    indexing with a data-dependent shape, a Python branch on a tensor's value. The compiled
    step then changes the state exactly as the plain one does."""
    torch._dynamo.reset()
    plain, compiled = (_started_session(model, mels, OPTIONS[case]) for _ in range(2))
    step = torch.compile(compiled.step, fullgraph=True, dynamic=False, backend="eager")
    key_length = model.dims.n_text_ctx
    with torch.no_grad():
        for _ in range(3):
            plain.step(key_length)
            step(key_length)
    assert int(plain.search.step) == 4
    before, after = _state(plain), _state(compiled)
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], msg=name)


def test_window_buckets():
    assert [steps.window_bucket(n) for n in (1, 2, 3, 5, 8, 9, 17, 56, 64, 65)] == [
        1, 2, 4, 8, 8, 16, 24, 56, 64, 72]


@pytest.mark.parametrize("static", [False, True])
def test_no_decoder_hook_runs_inside_a_step(model, mels, static):
    """cancel.install's hooks sit on model.decoder: the steps call its blocks directly, so a
    hook there never lands inside a captured graph (the encoder is called outside it)."""
    calls = {"encoder": 0, "decoder": 0}
    handles = [
        part.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        for name, part in (("encoder", model.encoder), ("decoder", model.decoder))
    ]
    try:
        decode_batch(model, mels, OPTIONS["beam5-patience2"], static=static)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"encoder": 1, "decoder": 0}


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("case", list(OPTIONS))
def test_a_cancel_lands_within_one_step(model, mels, monkeypatch, static, case):
    """The search calls cancel.checkpoint() before every step; once the job is cancelled
    not one more step runs."""
    runner_class = steps.StaticDecoder if static else steps.EagerDecoder
    original_step = runner_class.step
    counts = {"checks": 0, "steps": 0}

    def counting_step(self, *args, **kwargs):
        counts["steps"] += 1
        return original_step(self, *args, **kwargs)

    def cancelled() -> bool:
        counts["checks"] += 1
        return counts["checks"] > 5

    monkeypatch.setattr(runner_class, "step", counting_step)
    with cancel.stop_when(cancelled), pytest.raises(cancel.Cancelled):
        decode_batch(model, mels, OPTIONS[case], static=static)
    assert counts == {"checks": 6, "steps": 5}
