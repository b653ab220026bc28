"""Dataset -> training examples: log-Mel features as the service computes them, labels as
the service's decoder would emit them.

Features: openai-whisper's `log_mel_spectrogram` of the clip padded with 30 s of silence and
cut to one 30 s window (what `whisper.transcribe` feeds the encoder for a short file), from
audio decoded by the service's own ffmpeg pipeline (audio.decode_file).

Labels: the prefix the service decodes with (<|startoftranscript|>, then the language and
task tokens of a multilingual model), the text, <|endoftext|>. With timestamps kept (the
default: the service decodes with timestamps) the text sits between <|0.00|> and the clip's
end, as Whisper's long-form decoding expects a segment; without them <|notimestamps|>
follows the prefix. The collator shifts once: the decoder reads [sot, ..., last text token]
and is scored on [..., <|endoftext|>], so the start token is never doubled; labels are
padded with -100, which the loss ignores.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from whisper.audio import N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram, pad_or_trim
from whisper.tokenizer import Tokenizer

from whisper_service.audio import DecodeLimits, decode_file
from whisper_service.cli.evaluate import Dataset, DatasetError, Utterance
from whisper_service.errors import MediaError

IGNORED = -100  # label id the cross-entropy loss skips
TIMESTAMP_STEP = 0.02  # seconds per timestamp token
MAX_CLIP_SECONDS = N_SAMPLES / SAMPLE_RATE  # one window: longer clips cannot be one label


@dataclass(frozen=True)
class Example:
    """One clip ready for the model."""

    audio: str  # the clip's path
    features: torch.Tensor  # (n_mels, 3000) float32 log-Mel, one 30 s window
    tokens: Tuple[int, ...]  # prefix + text (+ timestamps) + <|endoftext|>


@dataclass(frozen=True)
class Split:
    train: Dataset
    held_out: Dataset


def split(dataset: Dataset, held_out: Optional[Dataset], fraction: float, seed: int) -> Split:
    """The held-out set: the one given (its clips taken out of training), else `fraction`
    of the clips, chosen with `seed`. The two never share a clip."""
    if held_out is not None:
        evaluated = {os.path.realpath(u.audio) for u in held_out.utterances}
        train = tuple(u for u in dataset.utterances if os.path.realpath(u.audio) not in evaluated)
        if not train:
            raise DatasetError("every training clip is also in the held-out set: nothing is "
                               "left to train on")
        return Split(Dataset(train, dataset.missing), held_out)
    if not 0 < fraction < 1:
        raise DatasetError(f"the held-out fraction must be between 0 and 1; got {fraction}")
    order = list(range(len(dataset.utterances)))
    random.Random(seed).shuffle(order)
    count = max(1, round(fraction * len(order)))
    if count >= len(order):
        raise DatasetError(f"{len(order)} clips cannot be split into training and held-out "
                           "clips: give more, or a held-out set with --eval")
    chosen = set(order[:count])
    pick = lambda inside: tuple(u for i, u in enumerate(dataset.utterances) if (i in chosen) == inside)
    return Split(Dataset(pick(False), dataset.missing), Dataset(pick(True)))


def labels(tokenizer: Tokenizer, text: str, seconds: float, timestamps: bool) -> Tuple[int, ...]:
    """The tokens the service's decoder should emit for this clip, prefix included."""
    words = tokenizer.encode(" " + text.strip())
    if not timestamps:
        return (*tokenizer.sot_sequence_including_notimestamps, *words, tokenizer.eot)
    end = tokenizer.timestamp_begin + round(min(seconds, MAX_CLIP_SECONDS) / TIMESTAMP_STEP)
    return (*tokenizer.sot_sequence, tokenizer.timestamp_begin, *words, end, tokenizer.eot)


def features(audio: np.ndarray, n_mels: int) -> torch.Tensor:
    """(n_mels, 3000): the first window whisper.transcribe computes for this audio."""
    mel = log_mel_spectrogram(torch.from_numpy(audio), n_mels, padding=N_SAMPLES)
    return pad_or_trim(mel[:, :N_FRAMES], N_FRAMES).contiguous()


def prepare(utterances: Sequence[Utterance], tokenizer: Tokenizer, n_mels: int,
            limits: DecodeLimits, timestamps: bool, max_tokens: int) -> Tuple[List[Example], List[str]]:
    """Every clip that can be a training example, and why the others cannot ("name: why")."""
    examples, refused = [], []
    for utterance in utterances:
        name = os.path.basename(utterance.audio)
        if not utterance.reference.strip():
            refused.append(f"{name}: its text is empty")
            continue
        try:
            audio = decode_file(utterance.audio, limits, name)
        except MediaError as error:
            refused.append(f"{name}: {error}")
            continue
        seconds = len(audio) / SAMPLE_RATE
        if seconds > MAX_CLIP_SECONDS:
            refused.append(f"{name}: {seconds:.1f} s is longer than one 30 s window")
            continue
        tokens = labels(tokenizer, utterance.reference, seconds, timestamps)
        if len(tokens) > max_tokens:
            refused.append(f"{name}: its text is {len(tokens)} tokens; the decoder holds {max_tokens}")
            continue
        examples.append(Example(utterance.audio, features(audio, n_mels), tokens))
    return examples, refused


class Collator:
    """A batch of examples -> the model's inputs: features stacked, the decoder's input
    and its targets one token apart, targets padded with -100, inputs with `pad`."""

    def __init__(self, pad: int):
        self.pad = pad

    def __call__(self, batch: Sequence[Dict[str, object]]) -> Dict[str, torch.Tensor]:
        longest = max(len(item["tokens"]) for item in batch) - 1
        inputs = torch.full((len(batch), longest), self.pad, dtype=torch.long)
        targets = torch.full((len(batch), longest), IGNORED, dtype=torch.long)
        for row, item in enumerate(batch):
            tokens = torch.tensor(item["tokens"], dtype=torch.long)
            inputs[row, :len(tokens) - 1] = tokens[:-1]
            targets[row, :len(tokens) - 1] = tokens[1:]
        out = {"decoder_input_ids": inputs, "labels": targets,
               "decoder_attention_mask": (targets != IGNORED).long()}
        if "encoder_hidden_states" in batch[0]:
            out["encoder_outputs"] = (torch.stack([item["encoder_hidden_states"] for item in batch]),)
        else:
            out["input_features"] = torch.stack([item["features"] for item in batch])
        return out


class ExampleSet(torch.utils.data.Dataset):
    """The examples as the Trainer's dataset: dicts the Collator batches. With a frozen
    encoder its outputs are computed once per clip (`encoded`), not at every step."""

    def __init__(self, examples: Sequence[Example], encoded: Optional[Sequence[torch.Tensor]] = None):
        self.examples = list(examples)
        self.encoded = list(encoded) if encoded is not None else None

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Dict[str, object]:
        example = self.examples[index]
        item: Dict[str, object] = {"tokens": example.tokens}
        if self.encoded is not None:
            item["encoder_hidden_states"] = self.encoded[index]
        else:
            item["features"] = example.features
        return item
