"""A word error rate for Japanese, which is written without spaces: the normalised texts
split into words by MeCab (fugashi with the unidic-lite dictionary, optional packages)
before jiwer aligns them, as Japanese fine-tuning recipes report it beside the CER."""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

import jiwer

from whisper_service.cli.evaluate import Scored

SPLIT_LANGUAGES = ("ja",)  # MeCab's dictionaries are Japanese


@lru_cache(maxsize=1)
def _tagger():
    try:
        import fugashi

        return fugashi.Tagger()
    except (ImportError, RuntimeError):  # no fugashi, or no dictionary for it
        return None


def available() -> bool:
    return _tagger() is not None


def split(text: str) -> str:
    """'東京都に住んでいます' -> '東京 都 に 住ん で い ます'."""
    tagger = _tagger()
    return " ".join(word.surface for word in tagger(text.replace(" ", "")))


def word_error_rate(results: Sequence[Scored], language: Optional[str]) -> Optional[float]:
    """The corpus WER over MeCab's words of the normalised texts; None when the language
    is not split this way or fugashi is not installed."""
    if language not in SPLIT_LANGUAGES or not available() or not results:
        return None
    references = [split(r.reference) for r in results]
    hypotheses = [split(r.hypothesis) for r in results]
    kept = [(ref, hyp) for ref, hyp in zip(references, hypotheses) if ref]
    if not kept:
        return None
    return jiwer.wer([ref for ref, _ in kept], [hyp for _, hyp in kept])
