"""Word and character error rates of models on a dataset of your own, side by side.

    python -m whisper_service evaluate DATASET --model a,b [--language ja] [decoding options]

DATASET is a Common Voice-style folder (a .tsv with `path` and `sentence` columns, the clips
under `clips/`) or a manifest: a .csv with `audio` and `text` columns, or a .jsonl with those
keys on every line (audio paths relative to the manifest). Each model transcribes every clip
through the same service the server runs; transcripts and references are normalised as
openai-whisper's own evaluation does (its English normaliser for English, its basic one
otherwise) and aligned word by word, and character by character, with jiwer.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import jiwer
from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

from whisper_service.config import Settings
from whisper_service.errors import ServiceError
from whisper_service.options import TranscribeOptions
from whisper_service.service import WhisperService

log = logging.getLogger(__name__)

# languages written without spaces between words: their headline is the character error rate
# and their characters are compared with the spaces left out
UNSPACED_LANGUAGES = ("ja", "zh", "yue", "th", "lo", "my", "km", "bo")
COMMON_VOICE_COLUMNS = ("path", "sentence")
COMMON_VOICE_CLIPS = "clips"
MANIFEST_COLUMNS = ("audio", "text")
# the Common Voice release's tables, in the order one is picked when several are there
COMMON_VOICE_TABLES = ("test.tsv", "dev.tsv", "validated.tsv", "train.tsv")
CSV_FIELDS = ("model", "audio", "reference", "hypothesis", "wer", "cer", "substitutions",
              "deletions", "insertions", "audio_seconds", "seconds")


class DatasetError(ServiceError):
    """The dataset cannot be read: no such folder, no table, missing columns."""


@dataclass(frozen=True)
class Utterance:
    audio: str  # path of the clip
    reference: str  # what is said in it, as the dataset writes it


@dataclass(frozen=True)
class Dataset:
    utterances: Tuple[Utterance, ...]
    missing: Tuple[str, ...] = ()  # clips the table names that are not there, skipped


@dataclass(frozen=True)
class ErrorRates:
    """Errors after normalisation, for a clip or summed over clips (jiwer's corpus rates)."""

    words: int  # in the reference
    substitutions: int
    deletions: int
    insertions: int
    characters: int  # in the reference (without spaces for unspaced languages)
    character_errors: int
    audio_seconds: float
    seconds: float  # decoding audio and transcribing it

    @property
    def wer(self) -> float:
        return (self.substitutions + self.deletions + self.insertions) / max(self.words, 1)

    @property
    def cer(self) -> float:
        return self.character_errors / max(self.characters, 1)


@dataclass(frozen=True)
class Scored(ErrorRates):
    """One clip transcribed by one model."""

    model: str = ""
    audio: str = ""
    reference: str = ""  # normalised
    hypothesis: str = ""  # normalised


@dataclass(frozen=True)
class ModelScore(ErrorRates):
    """A model's totals over the dataset: errors summed over clips, then divided."""

    model: str = ""
    utterances: int = 0  # transcribed and scored
    skipped: Tuple[str, ...] = ()  # clips that could not be read: "name: why"
    results: Tuple[Scored, ...] = field(default=(), repr=False)

    @property
    def real_time_factor(self) -> float:
        """Seconds of work per second of audio: under 1 is faster than real time."""
        return self.seconds / self.audio_seconds if self.audio_seconds else 0.0


# --- datasets ------------------------------------------------------------------------------


def read_dataset(path: str) -> Dataset:
    """The utterances of a Common Voice-style folder or a CSV / JSONL manifest."""
    if os.path.isdir(path):
        table = next((os.path.join(path, name) for name in COMMON_VOICE_TABLES
                      if os.path.isfile(os.path.join(path, name))), None)
        table = table or next(iter(sorted(
            os.path.join(path, n) for n in os.listdir(path) if n.endswith(".tsv"))), None)
        if table is None:
            raise DatasetError(f"{path!r} has no .tsv table with {' and '.join(COMMON_VOICE_COLUMNS)} "
                               "columns (a Common Voice folder)")
        clips = os.path.join(path, COMMON_VOICE_CLIPS)
        rows = _rows(table, csv.DictReader(_open(table), delimiter="\t", quoting=csv.QUOTE_NONE),
                     COMMON_VOICE_COLUMNS)
        return _dataset(clips if os.path.isdir(clips) else path, rows)
    if path.endswith(".csv"):
        return _dataset(os.path.dirname(path), _rows(path, csv.DictReader(_open(path)), MANIFEST_COLUMNS))
    if path.endswith((".jsonl", ".json")):
        return _dataset(os.path.dirname(path), _rows(path, _json_lines(path), MANIFEST_COLUMNS))
    if not os.path.exists(path):
        raise DatasetError(f"there is no dataset at {path!r}")
    raise DatasetError(f"{path!r} is not a dataset: give a Common Voice folder, a .csv or a .jsonl "
                       f"manifest with {' and '.join(MANIFEST_COLUMNS)}")


def _open(path: str):
    try:
        return open(path, encoding="utf-8", newline="")
    except OSError as error:
        raise DatasetError(f"{path!r} cannot be read: {error.strerror}") from None


def _json_lines(path: str) -> Iterable[dict]:
    with _open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError:
                raise DatasetError(f"{path!r} line {number} is not JSON") from None


def _rows(path: str, rows: Iterable[dict], columns: Tuple[str, str]) -> List[Tuple[str, str]]:
    audio, text = columns
    found = []
    for row in rows:
        if audio not in row or text not in row:
            raise DatasetError(f"{path!r} needs {audio!r} and {text!r} columns; it has "
                               f"{', '.join(map(repr, row)) or 'none'}")
        found.append((str(row[audio]), str(row[text] or "")))
    if not found:
        raise DatasetError(f"{path!r} lists no clips")
    return found


def _dataset(folder: str, rows: List[Tuple[str, str]]) -> Dataset:
    utterances, missing = [], []
    for audio, reference in rows:
        clip = audio if os.path.isabs(audio) else os.path.join(folder, audio)
        if os.path.isfile(clip):
            utterances.append(Utterance(clip, reference))
        else:
            missing.append(audio)
    return Dataset(tuple(utterances), tuple(missing))


# --- scoring -------------------------------------------------------------------------------


def normalizer(language: Optional[str]) -> Callable[[str], str]:
    """openai-whisper's English normaliser for English, its basic one for other languages."""
    if language in (None, "en"):
        return EnglishTextNormalizer()
    return BasicTextNormalizer()


def score(model: str, audio: str, reference: str, hypothesis: str, language: Optional[str],
          audio_seconds: float, seconds: float) -> Scored:
    """One clip's word and character errors after normalisation."""
    normalise = normalizer(language)
    reference, hypothesis = normalise(reference).strip(), normalise(hypothesis).strip()
    words = jiwer.process_words(reference, hypothesis) if reference else None
    spaced = language not in UNSPACED_LANGUAGES
    chars_ref = reference if spaced else reference.replace(" ", "")
    chars_hyp = hypothesis if spaced else hypothesis.replace(" ", "")
    characters = jiwer.process_characters(chars_ref, chars_hyp) if chars_ref else None
    return Scored(
        model=model, audio=audio, reference=reference, hypothesis=hypothesis,
        words=len(reference.split()),
        substitutions=words.substitutions if words else 0,
        deletions=words.deletions if words else 0,
        insertions=words.insertions if words else len(hypothesis.split()),
        characters=len(chars_ref),
        character_errors=(characters.substitutions + characters.deletions + characters.insertions)
        if characters else len(chars_hyp),
        audio_seconds=audio_seconds, seconds=seconds,
    )


def total(model: str, results: Sequence[Scored], skipped: Sequence[str]) -> ModelScore:
    return ModelScore(
        model=model, utterances=len(results), skipped=tuple(skipped),
        words=sum(r.words for r in results),
        substitutions=sum(r.substitutions for r in results),
        deletions=sum(r.deletions for r in results),
        insertions=sum(r.insertions for r in results),
        characters=sum(r.characters for r in results),
        character_errors=sum(r.character_errors for r in results),
        audio_seconds=sum(r.audio_seconds for r in results),
        seconds=sum(r.seconds for r in results),
        results=tuple(results),
    )


# --- running -------------------------------------------------------------------------------


ProgressBar = Callable[[Iterable[Utterance], str], Iterable[Utterance]]


def evaluate_model(settings: Settings, model: str, dataset: Dataset, options: TranscribeOptions,
                   progress: Optional[ProgressBar] = None) -> ModelScore:
    """Transcribe every clip with one model; a clip that cannot be read is skipped by name."""
    service = WhisperService(replace(settings, model=model, models=(model,)))
    name = service.models.default
    options = options.with_changes(model=name)
    service.models.for_task(name, options.task, options.language)  # loaded before the clock starts
    results, skipped = [], [f"{clip}: there is no such file" for clip in dataset.missing]
    for utterance in (progress or (lambda items, _: items))(dataset.utterances, name):
        clip = os.path.basename(utterance.audio)
        started = time.monotonic()
        try:
            transcript = service.transcribe_file(utterance.audio, options, display_name=clip)
        except ServiceError as error:  # the model itself failing stops the run: it is raised
            if error.field == "model":
                raise
            log.info("skipped %s: %s", clip, error)
            skipped.append(f"{clip}: {error}")
            continue
        language = options.language or transcript.language
        results.append(score(name, utterance.audio, utterance.reference, transcript.text,
                             language, transcript.duration, time.monotonic() - started))
    return total(name, results, skipped)


def headline(language: Optional[str]) -> str:
    """The error rate a language is judged by: CER where words are not spaced apart."""
    return "CER" if language in UNSPACED_LANGUAGES else "WER"


def table(scores: Sequence[ModelScore], language: Optional[str]) -> str:
    """The models side by side, the headline rate first."""
    rates = ("CER", "WER") if headline(language) == "CER" else ("WER", "CER")
    header = ("model", *rates, "S", "D", "I", "RTF", "utterances", "skipped")
    rows = [header]
    for s in scores:
        value = {"WER": f"{s.wer:.1%}", "CER": f"{s.cer:.1%}"}
        rows.append((s.model, *(value[r] for r in rates), str(s.substitutions), str(s.deletions),
                     str(s.insertions), f"{s.real_time_factor:.2f}", str(s.utterances),
                     str(len(s.skipped))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
                     for row in rows)


def write_csv(path: str, scores: Sequence[ModelScore]) -> None:
    """Every clip of every model: the normalised texts, its errors and its time."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for s in scores:
            for r in s.results:
                writer.writerow((r.model, r.audio, r.reference, r.hypothesis, f"{r.wer:.4f}",
                                 f"{r.cer:.4f}", r.substitutions, r.deletions, r.insertions,
                                 f"{r.audio_seconds:.2f}", f"{r.seconds:.2f}"))
