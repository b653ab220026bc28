"""A fine-tune from start to end: base model -> Hugging Face model -> Seq2SeqTrainer ->
save_pretrained folder, with the held-out error rates before, during and after.

Training uses transformers' Seq2SeqTrainer, full fine-tuning or LoRA (lora.py: PEFT's
adapters, the default from small's size on, merged into the weights before the folder is
written, so the result is an ordinary checkpoint every tool reads either way), with AdamW, a
linear schedule after `warmup_steps`, gradient accumulation, fp16 and gradient checkpointing
on a GPU, a checkpoint every `save_steps` (`resume` continues from the last one, its step
count going on). With the encoder frozen (the default on a CPU) the encoder's outputs are
computed once per clip and only the decoder trains.

The error rates come from the service's own decoding (scoring.py): the base model before,
the model in training every `eval_steps`, and the written folder after, loaded through the
service's model registry as a job would load it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, List, Optional, Tuple

import torch

from whisper_service.audio import DecodeLimits
from whisper_service.checkpoints import load_checkpoint
from whisper_service.cli.evaluate import Dataset, DatasetError, ModelScore
from whisper_service.config import Settings, split_alias
from whisper_service.errors import BadOption, ModelUnavailable
from whisper_service.models import ModelRegistry, pick_device
from whisper_service.options import TranscribeOptions
from whisper_service.training import convert, curves, examples, lora, scoring
from whisper_service.training.options import FineTuneOptions

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"  # inside the output folder, until training ends
REPORT_FILE = "finetune.json"  # next to the model: options, before/after, the curves' points
# encoder outputs kept in memory when the encoder is frozen, at most (bytes)
MAX_CACHED_ENCODINGS = 2 * 1024 ** 3
ENCODE_BATCH = 8
PAUSE_POLL_SECONDS = 0.2  # how often a paused fine-tune looks whether it may go on


@dataclass(frozen=True)
class StepReport:
    """Where training stands, for a progress bar or a job's status."""

    step: int
    total_steps: int
    loss: Optional[float]  # the last logged training loss
    wer: Optional[float]  # the last held-out WER measured
    eta_seconds: Optional[float]


@dataclass(frozen=True)
class FineTuneReport:
    output: str  # the folder written
    name: str  # the model's name (the folder's)
    before: ModelScore
    after: ModelScore
    losses: Tuple[Tuple[int, float], ...]  # (step, training loss)
    wers: Tuple[Tuple[int, float], ...]  # (step, held-out WER), step 0 = the base model
    steps: int
    train_clips: int
    refused: Tuple[str, ...]  # training clips that could not be used: "name: why"
    seconds: float
    method: str = lora.FULL  # how it trained: full or lora (auto resolved)
    learning_rate: float = 0.0  # the peak learning rate used
    trained_parameters: int = 0  # weights that trained (LoRA: the adapters')
    parameters: int = 0  # weights in all while training (LoRA: the adapters' included)


class Stopped(Exception):
    """Training was told to stop (a cancelled job); the last checkpoint stays."""


def fine_tune(settings: Settings, options: FineTuneOptions, train: Dataset, held_out: Dataset,
              decoding: TranscribeOptions,
              on_step: Optional[Callable[[StepReport], None]] = None,
              should_stop: Callable[[], bool] = lambda: False,
              pause: Callable[[], bool] = lambda: False) -> FineTuneReport:
    """Train, write options.output, measure; raises DatasetError / ModelUnavailable with a
    sentence before training when the data or the base model cannot be used. Between steps
    training waits while `pause()` is true (transcription jobs waiting for the device), and
    stops, its last checkpoint written, once `should_stop()` is (raising Stopped)."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint

    started = time.monotonic()
    device = pick_device(settings.device)
    name = os.path.basename(os.path.normpath(options.output))
    base_name, base_source = split_alias(options.base)
    limits = DecodeLimits(max_duration=settings.max_duration, timeout=settings.decode_timeout,
                          ffmpeg=settings.ffmpeg)
    base = load_checkpoint(base_source, settings.model_dir)
    tokenizer = convert.whisper_tokenizer(base, options.language, options.task)
    if options.language and not base.is_multilingual and options.language != "en":
        raise ModelUnavailable(f"{base_name!r} is an English-only model; it cannot learn "
                               f"language {options.language!r}")
    decoding = decoding.with_changes(task=options.task, language=options.language or decoding.language)

    # the data, checked before anything trains
    usable, refused = examples.prepare(train.utterances, tokenizer, base.dims.n_mels, limits,
                                       options.timestamps, base.dims.n_text_ctx)
    if not usable:
        raise DatasetError("no training clip can be used: " + "; ".join(refused[:3]))
    held = scoring.HeldOut.read(held_out, limits)
    if not held.clips:
        raise DatasetError("no held-out clip can be read: " + "; ".join(held.skipped[:3]))

    # full or LoRA (auto: by the base's size); a checkpoint to resume must be the same method's
    method = lora.choose(options.method, base)
    learning_rate = options.learning_rate_for(method)
    checkpoints = os.path.join(options.output, CHECKPOINTS)
    resume_from = get_last_checkpoint(checkpoints) if options.resume and os.path.isdir(checkpoints) else None
    if resume_from is not None and lora.checkpoint_method(resume_from) != method:
        written = lora.checkpoint_method(resume_from)
        raise BadOption("method", f"the checkpoint to resume was written by {written} fine-tuning, "
                                  f"not {method}: resume with --method {written}")

    # before: the base model as the service decodes it
    evaluated = copy.deepcopy(base)
    before = scoring.score_model(scoring.loaded(base_name, evaluated, device), held, decoding)
    log.info("before: WER %.3f CER %.3f on %d held-out clips", before.wer, before.cer, before.utterances)

    if should_stop():
        raise Stopped("stopped before the first step")
    hf = convert.to_huggingface(base)
    freeze = options.freeze_encoder if options.freeze_encoder is not None else device.type == "cpu"
    encoded = None
    if freeze:
        hf.model.encoder.requires_grad_(False)
        hf.model.encoder.embed_positions.requires_grad_(False)
        size = len(usable) * base.dims.n_audio_ctx * base.dims.n_audio_state * 4
        if size <= MAX_CACHED_ENCODINGS:
            encoded = _encode(hf, usable, device)
    dataset = examples.ExampleSet(usable, encoded)
    if method == lora.LORA:
        hf = lora.wrap(hf, options.lora_rank, options.lora_alpha, train_encoder=not freeze)
    trained, weights = lora.trainable(hf)
    log.info("%s fine-tuning: %d of %d weights train (%.2f%%), learning rate %g", method,
             trained, weights, 100 * trained / weights, learning_rate)

    steps_per_epoch = math.ceil(len(dataset) / (options.batch_size * options.gradient_accumulation))
    total_steps = options.max_steps or max(1, math.ceil(options.epochs * steps_per_epoch))
    gpu = device.type == "cuda"
    arguments = Seq2SeqTrainingArguments(
        output_dir=checkpoints,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.gradient_accumulation,
        learning_rate=learning_rate,
        warmup_steps=options.warmup_steps,
        lr_scheduler_type="linear",
        max_steps=total_steps,
        logging_steps=1,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=2,
        fp16=gpu,
        activation_checkpointing=gpu and not freeze,  # gradient checkpointing
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=options.seed,
        use_cpu=not gpu,
        eval_strategy="no",
    )
    progress = _Progress(total_steps, on_step, should_stop, before.wer, pause)
    if options.eval_steps:
        progress.evaluate_every(options.eval_steps, lambda model: scoring.score_model(
            scoring.loaded(name, convert.to_whisper(model, evaluated), device), held, decoding).wer)
    trainer = Seq2SeqTrainer(model=hf, args=arguments, train_dataset=dataset,
                             data_collator=examples.Collator(pad=tokenizer.eot),
                             callbacks=[progress.callback()])
    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    if options.resume and resume_from is None:
        log.info("no checkpoint in %s: starting from step 0", checkpoints)
    trainer.train(resume_from_checkpoint=resume_from)
    if progress.stopped:
        raise Stopped(f"stopped at step {progress.step}; {CHECKPOINTS}/ keeps the last checkpoint")

    # after: the written folder, loaded as a job loads a model
    # LoRA: the adapters folded into the weights, so the folder needs no peft to be served
    convert.save(lora.merged(trainer.model).to("cpu", torch.float32), base, options.output, base_source)
    registry = ModelRegistry(replace(settings, model=f"{name}={options.output}", models=()))
    after = scoring.score_model(registry.get(name), held, decoding)
    wers = progress.wers + [(total_steps, after.wer)]
    report = FineTuneReport(
        output=options.output, name=name, before=before, after=after,
        losses=tuple(progress.losses), wers=tuple(wers), steps=total_steps,
        train_clips=len(usable), refused=tuple(refused), seconds=time.monotonic() - started,
        method=method, learning_rate=learning_rate, trained_parameters=trained, parameters=weights)
    write_report(report, replace(options, method=method, learning_rate=learning_rate))
    curves.plot(os.path.join(options.output, curves.CURVES_FILE), report.losses, report.wers,
                f"{base_name} -> {name}")
    shutil.rmtree(checkpoints, ignore_errors=True)
    return report


def _encode(hf, usable, device) -> List[torch.Tensor]:
    """The frozen encoder's output for every clip, once: (n_audio_ctx, d_model) each."""
    encoder = hf.model.encoder.to(device).eval()
    out: List[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(usable), ENCODE_BATCH):
            batch = torch.stack([e.features for e in usable[start:start + ENCODE_BATCH]]).to(device)
            out.extend(encoder(batch).last_hidden_state.to("cpu"))
    return out


class _Progress:
    """The losses and WERs as training logs them; reports each step; stops when told."""

    def __init__(self, total_steps: int, on_step, should_stop, base_wer: float, pause):
        self.total_steps = total_steps
        self.pause = pause
        self.on_step = on_step
        self.should_stop = should_stop
        self.losses: List[Tuple[int, float]] = []
        self.wers: List[Tuple[int, float]] = [(0, base_wer)]
        self.step = 0
        self.stopped = False
        self.every = 0
        self.measure = None
        self.started = time.monotonic()
        self.first_step: Optional[int] = None

    def evaluate_every(self, steps: int, measure) -> None:
        self.every, self.measure = steps, measure

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    outer.losses.append((state.global_step, float(logs["loss"])))
                    outer.report(state.global_step)

            def on_step_end(self, args, state, control, model=None, **kwargs):
                outer.step = state.global_step
                if outer.first_step is None:
                    outer.first_step, outer.started = state.global_step - 1, time.monotonic()
                if outer.every and state.global_step % outer.every == 0 \
                        and state.global_step < outer.total_steps:
                    was_training = model.training
                    outer.wers.append((state.global_step, outer.measure(model)))
                    model.train(was_training)
                while outer.pause() and not outer.should_stop():
                    time.sleep(PAUSE_POLL_SECONDS)
                if outer.should_stop():
                    outer.stopped = True
                    control.should_save = True
                    control.should_training_stop = True

        return Callback()

    def report(self, step: int) -> None:
        if self.on_step is None:
            return
        done = step - (self.first_step or 0)
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (self.total_steps - step) if done > 0 else None
        self.on_step(StepReport(step, self.total_steps, self.losses[-1][1] if self.losses else None,
                                self.wers[-1][1] if self.wers else None, eta))


def write_report(report: FineTuneReport, options: FineTuneOptions) -> None:
    """finetune.json next to the model: what was asked, the totals before and after, the
    curves' points (the API and the Models page show it)."""

    from whisper_service.training import words

    def totals(s: ModelScore) -> dict:
        return {"model": s.model, "wer": s.wer, "cer": s.cer,
                "mecab_wer": words.word_error_rate(s.results, options.language),
                "substitutions": s.substitutions,
                "deletions": s.deletions, "insertions": s.insertions, "words": s.words,
                "utterances": s.utterances, "skipped": list(s.skipped)}

    document = {
        "name": report.name, "options": asdict(options), "steps": report.steps,
        "train_clips": report.train_clips, "refused": list(report.refused),
        "before": totals(report.before), "after": totals(report.after),
        "losses": [list(p) for p in report.losses], "wers": [list(p) for p in report.wers],
        "seconds": round(report.seconds, 1),
        "trained_parameters": report.trained_parameters, "parameters": report.parameters,
    }
    with open(os.path.join(report.output, REPORT_FILE), "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
