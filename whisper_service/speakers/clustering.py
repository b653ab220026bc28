"""Voice embeddings (and pitch) -> speakers.

The unit clustered is a piece: a few consecutive windows of one stretch of speech, whose
mean voice is steadier than one 1.6 s window's. Two pieces are apart by the cosine distance
of their mean voices plus PITCH_WEIGHT times the difference of their median pitch in octaves
(pitch.py): on short turns the encoder alone scatters one voice's pieces as far as two
voices lie apart (measured on tests/conversations.py's dialogues: one voice's pieces 0.14-0.20
apart at the median, two voices' as close as 0.11), and pitch is what separates them.

Two passes:
1. Average-linkage clustering of the pieces that hold at least SURE_WINDOWS windows (the
   short ones are the scattered ones), cut at DISTANCE_THRESHOLD unless the caller says how
   many speakers there are; it gives each speaker's mean voice and pitch.
2. Every piece joins its nearest speaker, the speakers' means are recomputed (weighted by
   windows), and two speakers that come closer than MERGE_DISTANCE are one voice that the
   first pass split; a few rounds until nothing moves.
Long audio has thousands of pieces; the linkage runs on at most MAX_LINKED of them, spread
evenly, and the second pass places every piece.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from whisper_service.speakers.base import SpeakerHints

# Distance (cosine + pitch) between the mean voices of two groups of pieces above which the
# first pass keeps them apart. Measured with bench/diarize.py on its dialogues and
# conversations (2-4 espeak-ng voices, turns of 1-5 s and of 3-4 s, bench/RESULTS.md): 0.26
# splits one of four voices in short turns (DER 0.115 with three), 0.30 merges a voice with
# no pitch (espeak-ng's whisper) into the man it sounds like (DER 0.112 with four); 0.28
# keeps every mean under 0.10.
DISTANCE_THRESHOLD = 0.28
# Two speakers whose means lie closer than this after the second pass are one voice.
MERGE_DISTANCE = 0.2
# Cosine distance per octave of median pitch: an octave (a man's and a woman's voice) adds
# 0.5, a fifth of an octave (two men) 0.1, one voice's spread (0.05-0.15 octave) 0.03-0.08.
PITCH_WEIGHT = 0.5
SURE_WINDOWS = 4  # pieces with fewer windows (1.6 s of speech) are placed in the second pass
MAX_LINKED = 1500  # pieces clustered pairwise at most: (1500^2 / 2) distances, 9 MB
# a "speaker" holding less than this share of the windows is the blur of a change between
# two voices (a window half one, half the other), not a person: it joins its nearest one
MIN_SHARE = 0.05
MIN_WINDOWS = 3
ROUNDS = 10  # of the second pass at most


def cluster(embeddings: np.ndarray, hints: SpeakerHints = SpeakerHints(),
            pieces: Optional[np.ndarray] = None, pitch: Optional[np.ndarray] = None,
            threshold: float = DISTANCE_THRESHOLD) -> np.ndarray:
    """A speaker number (0..k-1) for each row of `embeddings` ((windows, 256) unit vectors).

    pieces: a group number for each window (consecutive windows of one stretch of speech;
        default: each window alone); a piece's windows always get one speaker.
    pitch: the median log2 F0 of each window's speech, NaN where unvoiced (default: none,
        the voices alone decide)."""
    count = len(embeddings)
    if count == 0:
        return np.zeros(0, dtype=int)
    pieces = np.arange(count) if pieces is None else pieces
    pitch = np.full(count, np.nan) if pitch is None else pitch
    groups, member = np.unique(pieces, return_inverse=True)
    weights = np.bincount(member).astype(float)
    voices = _unit(np.stack([embeddings[member == g].mean(axis=0) for g in range(len(groups))]))
    tones = np.array([_nanmean(pitch[member == g]) for g in range(len(groups))])
    low = hints.num_speakers or hints.min_speakers or 1
    high = hints.num_speakers or hints.max_speakers or len(groups)
    centres = _first_pass(voices, tones, weights, hints, threshold, low, high)
    labels = _second_pass(voices, tones, weights, centres, merge=not hints.num_speakers, keep=low)
    return np.unique(labels, return_inverse=True)[1][member]


def distances(voices_a: np.ndarray, tones_a: np.ndarray, voices_b: np.ndarray,
              tones_b: np.ndarray) -> np.ndarray:
    """(len a, len b): cosine distance of the voices plus PITCH_WEIGHT x |octaves| between
    the pitches (no pitch term where either is unknown)."""
    octaves = np.abs(tones_a[:, None] - tones_b[None, :])
    return 1 - voices_a @ voices_b.T + PITCH_WEIGHT * np.nan_to_num(octaves, nan=0.0)


def _first_pass(voices, tones, weights, hints: SpeakerHints, threshold: float, low: int,
                high: int) -> Tuple[np.ndarray, np.ndarray]:
    """Each speaker's mean voice and pitch, from the linkage of the longer pieces."""
    sure = weights >= SURE_WINDOWS
    if sure.sum() < 2:
        sure = np.ones(len(voices), dtype=bool)
    step = max(1, -(-int(sure.sum()) // MAX_LINKED))
    chosen = np.flatnonzero(sure)[::step]
    x, t, w = voices[chosen], tones[chosen], weights[chosen]
    if len(x) == 1 or high == 1:
        return _means(x, t, w, np.zeros(len(x), dtype=int))
    apart = distances(x, t, x, t)
    np.fill_diagonal(apart, 0.0)
    tree = linkage(squareform((apart + apart.T) / 2, checks=False), method="average")
    if hints.num_speakers:
        labels = fcluster(tree, t=min(hints.num_speakers, len(x)), criterion="maxclust")
    else:
        labels = fcluster(tree, t=threshold, criterion="distance")
        if len(set(labels)) > high:
            labels = fcluster(tree, t=high, criterion="maxclust")
        elif len(set(labels)) < low:
            labels = fcluster(tree, t=min(low, len(x)), criterion="maxclust")
    return _means(x, t, w, labels - 1)


def _second_pass(voices, tones, weights, centres, merge: bool, keep: int) -> np.ndarray:
    """Every piece to its nearest speaker; means recomputed; speakers too close (when the
    count is not given) or too small merged; until nothing moves."""
    labels = np.argmin(distances(voices, tones, *centres), axis=1)
    for _ in range(ROUNDS):
        centres = _means(voices, tones, weights, labels)
        if merge:
            centres = _merged(voices, tones, weights, centres, keep)
        updated = np.argmin(distances(voices, tones, *centres), axis=1)
        if np.array_equal(updated, labels):
            break
        labels = updated
    return labels


def _merged(voices, tones, weights, centres, keep: int):
    """Speakers without those closer than MERGE_DISTANCE to another or holding fewer than
    MIN_SHARE of the windows: the smaller one's pieces join the others."""
    while len(centres[0]) > max(1, keep):
        labels = np.argmin(distances(voices, tones, *centres), axis=1)
        sizes = np.bincount(labels, weights=weights, minlength=len(centres[0]))
        apart = distances(*centres, *centres)
        np.fill_diagonal(apart, np.inf)
        first, second = np.unravel_index(np.argmin(apart), apart.shape)
        smallest = int(np.argmin(sizes))
        if apart[first, second] < MERGE_DISTANCE:
            drop = first if sizes[first] < sizes[second] else second
        elif sizes[smallest] < max(MIN_WINDOWS, MIN_SHARE * weights.sum()):
            drop = smallest
        else:
            break
        kept = np.delete(np.arange(len(centres[0])), drop)
        labels = np.argmin(distances(voices, tones, centres[0][kept], centres[1][kept]), axis=1)
        centres = _means(voices, tones, weights, labels)
    return centres


def _means(voices, tones, weights, labels) -> Tuple[np.ndarray, np.ndarray]:
    """Each label's window-weighted mean voice (unit length) and mean pitch."""
    present = np.unique(labels)
    mean_voices = np.stack([(voices[labels == k] * weights[labels == k, None]).sum(axis=0)
                            for k in present])
    mean_tones = np.array([_nanmean(tones[labels == k], weights[labels == k]) for k in present])
    return _unit(mean_voices), mean_tones


def _nanmean(values: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    known = ~np.isnan(values)
    if not known.any():
        return float("nan")
    w = np.ones(len(values)) if weights is None else weights
    return float(np.sum(values[known] * w[known]) / np.sum(w[known]))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)
