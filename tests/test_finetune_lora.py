"""LoRA fine-tuning with real words: the bundled tiny.en with `--method lora` learns the
made-up names of tests/finetune_speech.py (adapters on the decoder's linear layers, a few
percent of the weights, at the method's own default learning rate) and its held-out WER falls
by at least half; the folder it writes has the adapters merged into the weights (no adapter
files, no LoRA weight names) and is served through WHISPER_MODELS without peft. A stopped
LoRA fine-tune resumes from its checkpoint (the adapter and the trainer's state), its step
count going on. `auto` picks LoRA for a small-shaped model and full fine-tuning for base's."""

from __future__ import annotations

import io
import json
import os
import sys

import pytest

from conftest import make_app
from finetune_speech import (FAST, halved_report, run_finetune,  # noqa: F401 (a fixture)
                             speech, transcribe_held_out)
from whisper_service.checkpoints import BUNDLED, load_checkpoint
from whisper_service.training import lora
from whisper_service.training.trainer import REPORT_FILE

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

NAME = "tiny-names-lora"
# 10 steps of 8 clips at LoRA's default 1e-3: measured on the CPU, the held-out WER goes from
# 97 % to about 9 % (full fine-tuning needs 1e-4 for as much in as many steps)
STEPS = 10


@pytest.fixture(scope="module")
def lora_tuned(speech, tmp_path_factory):
    """The command run once with --method lora: (exit code, stdout, stderr, output folder)."""
    train, held = speech
    output = tmp_path_factory.mktemp("models") / NAME
    code, out, err = run_finetune([
        str(train), "--eval", str(held), "--model", BUNDLED, "--output", str(output),
        "--method", "lora", "--max-steps", str(STEPS), "--language", "en", "--quiet", *FAST])
    return code, out, err, output


def adapter_weights(dims) -> int:
    """What rank-32 adapters on every linear layer of the decoder's blocks add: A (r x in)
    and B (out x r) for q, k, v, out of self- and cross-attention and for fc1 and fc2."""
    d, r = dims.n_text_state, 32
    attention = 8 * r * (d + d)
    feed_forward = 2 * r * (d + 4 * d)
    return dims.n_text_layer * (attention + feed_forward)


def test_lora_halves_the_held_out_wer_training_a_few_percent_of_the_weights(lora_tuned):
    _, out, err, _ = lora_tuned
    report = halved_report(lora_tuned)
    before, after = report["before"], report["after"]
    assert report["steps"] == STEPS and report["losses"][-1][1] < report["losses"][0][1]
    # the method and its default learning rate are what the report says was used
    assert report["options"]["method"] == "lora"
    assert report["options"]["learning_rate"] == lora.LEARNING_RATES["lora"] == 1e-3
    tiny = load_checkpoint(BUNDLED, "")
    assert report["trained_parameters"] == adapter_weights(tiny.dims) == 1_277_952
    assert report["parameters"] == 39_038_208  # transformers' tiny.en and the adapters
    assert report["trained_parameters"] / report["parameters"] < 0.05
    assert ("lora fine-tuning trained 1,277,952 of 39,038,208 weights (3.3%) at learning rate "
            "0.001; the adapters are merged into the saved weights") in err
    table = out.splitlines()
    assert [line.split()[:2] for line in table[1:3]] == [
        [BUNDLED, f"{before['wer']:.1%}"], [NAME, f"{after['wer']:.1%}"]]


def test_the_folder_holds_merged_weights_and_no_adapter(lora_tuned):
    output = lora_tuned[3]
    names = set(os.listdir(output))
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= names
    assert not names & set(lora.ADAPTER_FILES) and "checkpoints" not in names
    from safetensors import safe_open
    from transformers import WhisperForConditionalGeneration

    with safe_open(str(output / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
        changed = weights.get_tensor("model.decoder.layers.0.encoder_attn.q_proj.weight")
    # the same weight names as a model that never had an adapter: nothing for peft to read
    assert not [k for k in keys if "lora_" in k or "base_layer" in k]
    plain = set(WhisperForConditionalGeneration.from_pretrained(output).state_dict())
    assert keys <= plain and "model.decoder.layers.3.fc2.weight" in keys
    # and the adapters' update is in them: an adapted layer differs from the base model's
    base = load_checkpoint(BUNDLED, "").decoder.blocks[0].cross_attn.query.weight
    assert (changed - base).abs().max() > 1e-4


def test_the_folder_is_served_without_peft_and_hears_the_new_words(lora_tuned, tmp_path, speech,
                                                                   monkeypatch):
    output = lora_tuned[3]
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` fails from here on
    clip = speech[1].parent / "held-00.wav"  # "Tarkimund repaired the Quellitron yesterday."
    text = transcribe_held_out(output, NAME, tmp_path, clip)
    assert "Tarkimund" in text and "Quellitron" in text, text


def test_a_stopped_lora_fine_tune_resumes_from_its_adapter_checkpoint(speech, tmp_path):
    from dataclasses import replace

    from whisper_service.cli.evaluate import Dataset, read_dataset
    from whisper_service.config import Settings
    from whisper_service.errors import BadOption
    from whisper_service.options import TranscribeOptions
    from whisper_service.training.options import FineTuneOptions
    from whisper_service.training.trainer import CHECKPOINTS, Stopped, fine_tune

    train, held = speech
    settings = Settings.from_env({"WHISPER_MODEL": BUNDLED, "WHISPER_MODELS": BUNDLED})
    # 8 clips and 1 held out: what is tested is where the step count goes, not the gain
    training = Dataset(read_dataset(str(train)).utterances[:8])
    held_out = Dataset(read_dataset(str(held)).utterances[:1])
    decoding = TranscribeOptions(language="en", beam_size=None, temperature=(0.0,))
    options = FineTuneOptions(base=BUNDLED, output=str(tmp_path / "resumed"), language="en",
                              method="lora", max_steps=4, batch_size=4, save_steps=2)
    steps = []
    with pytest.raises(Stopped, match="stopped at step 2"):
        # told to stop once step 1 is reported: step 2 ends with a checkpoint
        fine_tune(settings, options, training, held_out, decoding,
                  on_step=lambda report: steps.append(report.step), should_stop=lambda: bool(steps))
    checkpoint = tmp_path / "resumed" / CHECKPOINTS / "checkpoint-2"
    held = set(os.listdir(checkpoint))
    assert "adapter_model.safetensors" in held and "trainer_state.json" in held, held
    assert "model.safetensors" not in held  # the adapter only, not the whole model
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2

    with pytest.raises(BadOption, match="written by lora fine-tuning, not full"):
        fine_tune(settings, replace(options, resume=True, method="full"), training, held_out, decoding)

    steps.clear()
    report = fine_tune(settings, replace(options, resume=True), training, held_out, decoding,
                       on_step=lambda r: steps.append(r.step))
    assert [step for step, _ in report.losses] == [3, 4] and steps == [3, 4]  # it goes on
    assert report.steps == 4 and report.method == "lora"
    assert not (tmp_path / "resumed" / CHECKPOINTS).exists()
    assert not set(os.listdir(tmp_path / "resumed")) & set(lora.ADAPTER_FILES)


@pytest.mark.parametrize("shape, method", [("base", "full"), ("small", "lora")])
def test_auto_picks_lora_from_smalls_size_and_full_below(shape, method, tmp_path):
    from whisper_service.synthetic import make_checkpoint

    model = load_checkpoint(make_checkpoint(str(tmp_path / f"{shape}.pt"), shape), "")
    assert lora.choose("auto", model) == method
    assert lora.choose("full", model) == "full" and lora.choose("lora", model) == "lora"
    if method == "lora":  # small: 241 M weights, the threshold between it and base's 74 M
        assert lora.parameters(model) > lora.LORA_FROM_PARAMETERS > 100_000_000


def test_lora_targets_the_decoders_linear_layers_and_the_encoders_only_when_it_trains():
    import re

    decoder_only, both = lora.target_modules(False), lora.target_modules(True)
    for name in ("model.decoder.layers.3.self_attn.q_proj", "model.decoder.layers.0.encoder_attn.v_proj",
                 "model.decoder.layers.11.fc2", "model.decoder.layers.2.self_attn.out_proj"):
        assert re.fullmatch(decoder_only, name) and re.fullmatch(both, name)
    assert re.fullmatch(both, "model.encoder.layers.5.self_attn.k_proj")
    assert not re.fullmatch(decoder_only, "model.encoder.layers.5.self_attn.k_proj")
    for name in ("proj_out", "model.decoder.embed_tokens", "model.encoder.conv1",
                 "model.decoder.layers.0.self_attn_layer_norm"):
        assert not re.fullmatch(both, name)


def test_bad_method_options_are_refused_with_the_field_named(tmp_path, capsys):
    from whisper_service.errors import BadOption
    from whisper_service.training.options import FineTuneOptions

    with pytest.raises(BadOption, match="method must be one of auto, full, lora; got 'sgd'") as error:
        FineTuneOptions(base=BUNDLED, output="o", method="sgd")
    assert error.value.field == "method"
    with pytest.raises(BadOption, match="lora rank must be 1 or more"):
        FineTuneOptions(base=BUNDLED, output="o", lora_rank=0)
    assert FineTuneOptions(base=BUNDLED, output="o").learning_rate_for("full") == 1e-5
    assert FineTuneOptions(base=BUNDLED, output="o", learning_rate=3e-4).learning_rate_for("lora") == 3e-4
    with pytest.raises(SystemExit):
        run_finetune(["x.csv", "--model", BUNDLED, "--output", str(tmp_path / "o"), "--method", "sgd"])

    app = make_app(BUNDLED, tmp_path)
    try:
        client = app.test_client()
        for field, value, words in (("method", "sgd", "method must be one of auto, full, lora"),
                                    ("lora_rank", "0", "lora rank must be 1 or more"),
                                    ("lora_alpha", "x", "lora_alpha must be a whole number")):
            response = client.post("/api/v1/fine-tunes", data={
                "dataset": (io.BytesIO(b"PK\x05\x06" + bytes(18)), "names.zip"), "model": BUNDLED,
                "name": "refused", field: value})
            assert response.status_code == 400, response.get_data(as_text=True)
            body = response.get_json()["error"]
            assert body["field"] == field and words in body["message"], body
    finally:
        app.extensions["whisper_finetunes"].stop(10)
        app.extensions["whisper_jobs"].stop()


def test_with_the_encoder_trained_its_adapters_get_gradients_and_the_weights_none():
    """--train-encoder with LoRA (the GPU default): adapters in the encoder's blocks as well,
    and a backward pass reaches them through the frozen convolutions."""
    import torch

    from whisper_service.training import convert

    hf = lora.wrap(convert.to_huggingface(load_checkpoint(BUNDLED, "")), 8, 16, train_encoder=True)
    trained = {name for name, p in hf.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in name for name in trained)
    assert any(".encoder.layers.0.fc1.lora_B" in name for name in trained)
    loss = hf(input_features=torch.randn(1, 80, 3000), decoder_input_ids=torch.tensor([[50257, 50362, 440]]),
              labels=torch.tensor([[50362, 440, 50256]])).loss
    loss.backward()
    grads = {name: p.grad for name, p in hf.named_parameters() if p.requires_grad}
    assert grads["base_model.model.model.encoder.layers.0.self_attn.q_proj.lora_B.default.weight"].abs().sum() > 0
    assert all(p.grad is None for name, p in hf.named_parameters() if not p.requires_grad)
    # merged, the model has exactly transformers' names and no adapter left
    assert not [n for n in lora.merged(hf).state_dict() if "lora_" in n or "base_layer" in n]


def test_the_weights_measured_while_training_are_the_merged_ones_and_training_goes_on():
    """--eval-steps with LoRA: the held-out WER is measured on the weights merged in a copy
    (lora.merged_state), the adapters left in place for the steps after."""
    import copy

    import torch

    from whisper_service.training import convert

    tiny = load_checkpoint(BUNDLED, "")
    hf = lora.wrap(convert.to_huggingface(tiny), 8, 16, train_encoder=False)
    with torch.no_grad():  # as if trained: B is no longer zero
        for name, p in hf.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.01)
    state = lora.merged_state(hf)
    expected = copy.deepcopy(hf).merge_and_unload().state_dict()
    assert set(state) == set(expected)
    assert all(torch.allclose(state[k], expected[k], atol=1e-6) for k in expected)
    name = "model.decoder.layers.1.encoder_attn.v_proj.weight"
    assert not torch.allclose(state[name], convert.to_huggingface(tiny).state_dict()[name])
    assert lora.is_adapted(hf) and any(p.requires_grad for p in hf.parameters())  # still training
    evaluated = convert.to_whisper(hf, copy.deepcopy(tiny))
    assert torch.allclose(evaluated.decoder.blocks[1].cross_attn.value.weight, expected[name], atol=1e-6)


def test_the_api_takes_the_method_and_writes_a_merged_model(speech, tmp_path):
    import zipfile

    from conftest import wait_until

    train = speech[0]
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.write(train, train.name)
        for clip in sorted(train.parent.glob("train-*.wav")):
            archive.write(clip, clip.name)
    app = make_app(BUNDLED, tmp_path, WHISPER_MAX_UPLOAD_MB="50")
    try:
        client = app.test_client()
        response = client.post("/api/v1/fine-tunes", data={
            "dataset": (io.BytesIO(data.getvalue()), "names.zip"), "model": BUNDLED,
            "name": "names-lora-api", "method": "lora", "lora_rank": "8", "lora_alpha": "16",
            "max_steps": "2", "batch_size": "4", "eval_fraction": "0.1", "language": "en"})
        assert response.status_code == 202, response.get_data(as_text=True)
        job = response.headers["Location"]
        wait_until(lambda: client.get(job).get_json()["state"] in ("done", "failed", "cancelled"),
                   300, 0.5, "the fine-tune")
        state = client.get(job).get_json()
        assert state["state"] == "done", state
        assert state["options"]["method"] == "lora" and state["options"]["lora_rank"] == 8
        [written] = list((tmp_path / "jobs").rglob(REPORT_FILE))
        report = json.loads(written.read_text())
        assert report["options"]["method"] == "lora" and report["options"]["learning_rate"] == 1e-3
        assert report["trained_parameters"] == adapter_weights(load_checkpoint(BUNDLED, "").dims) // 4
        assert not set(os.listdir(written.parent)) & set(lora.ADAPTER_FILES)
        assert "names-lora-api" in client.get("/api/v1/models").get_json()["allowed"]
    finally:
        app.extensions["whisper_finetunes"].stop(60)
        app.extensions["whisper_jobs"].stop()
