"""Voice embeddings -> speakers: average-linkage agglomerative clustering on cosine
distance, cut at a measured threshold unless the caller says how many speakers there are.

Long audio has thousands of windows; the linkage runs on at most MAX_LINKED of them,
spread evenly, and every window then joins the speaker whose mean voice is nearest, which
is also the refinement step for the linked ones.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

from whisper_service.speakers.base import SpeakerHints

# Cosine distance between the mean voices of two groups of 1.6 s windows above which they
# are different speakers. Measured on espeak-ng conversations (tests/conversations.py,
# bench/diarize.py): windows of one voice sit at 0.05-0.25 from their speaker's others on
# average, different voices at 0.35-0.6; 0.3 splits them with a margin both ways. GE2E's own
# verification threshold on real speech lies in the same range (same speaker > 0.75 similar).
DISTANCE_THRESHOLD = 0.25
MAX_LINKED = 1500  # windows clustered pairwise at most: (1500^2 / 2) distances, 4.5 MB
# a "speaker" holding less than this share of the windows is the blur of a change between
# two voices (a window half one, half the other), not a person: it joins its nearest one
MIN_SHARE = 0.05
MIN_WINDOWS = 3
REFINE_STEPS = 3


def cluster(embeddings: np.ndarray, hints: SpeakerHints = SpeakerHints(),
            threshold: float = DISTANCE_THRESHOLD, pieces: Optional[np.ndarray] = None) -> np.ndarray:
    """A speaker number (0..k-1) for each row of `embeddings` (unit vectors).

    pieces: a group number for each row, consecutive windows of one stretch of speech; the
    groups' mean voices are what is clustered (a mean over a few seconds is a steadier voice
    than one 1.6 s window), then every window joins its nearest speaker."""
    if pieces is not None and len(embeddings):
        groups = np.unique(pieces)
        means = np.stack([embeddings[pieces == g].mean(axis=0) for g in groups])
        means /= np.linalg.norm(means, axis=1, keepdims=True).clip(1e-12)
        weights = np.bincount(np.searchsorted(groups, pieces))
        centroids = _speakers(means, hints, threshold, weights)
        return _refine(embeddings, centroids)
    return _refine(embeddings, _speakers(embeddings, hints, threshold, np.ones(len(embeddings))))


def _speakers(embeddings: np.ndarray, hints: SpeakerHints, threshold: float,
              weights: np.ndarray) -> np.ndarray:
    """The mean voice of each speaker found among the rows."""
    count = len(embeddings)
    low = hints.num_speakers or hints.min_speakers or 1
    high = hints.num_speakers or hints.max_speakers or count
    if count == 1 or high == 1:
        return _centroids(embeddings, np.zeros(count, dtype=int))
    step = max(1, -(-count // MAX_LINKED))
    linked, weights = embeddings[::step], weights[::step]
    tree = linkage(linked.astype(np.float64), method="average", metric="cosine")
    if hints.num_speakers:
        labels = fcluster(tree, t=min(hints.num_speakers, len(linked)), criterion="maxclust")
    else:
        labels = fcluster(tree, t=threshold, criterion="distance")
        found = len(set(labels))
        if found > high:
            labels = fcluster(tree, t=high, criterion="maxclust")
        elif found < low:
            labels = fcluster(tree, t=min(low, len(linked)), criterion="maxclust")
    centroids = _centroids(linked, labels - 1)
    if not hints.num_speakers:
        centroids = _drop_small(linked, weights, centroids, low)
    return centroids


def _centroids(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    means = np.stack([x[labels == k].mean(axis=0) for k in np.unique(labels)])
    return means / np.linalg.norm(means, axis=1, keepdims=True).clip(1e-12)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.argmax(x @ centroids.T, axis=1)


def _drop_small(x: np.ndarray, weights: np.ndarray, centroids: np.ndarray,
                keep_at_least: int) -> np.ndarray:
    """Centroids without those that would hold fewer than MIN_SHARE of the windows."""
    while len(centroids) > max(1, keep_at_least):
        sizes = np.bincount(_nearest(x, centroids), weights=weights, minlength=len(centroids))
        smallest = int(np.argmin(sizes))
        if sizes[smallest] >= max(MIN_WINDOWS, MIN_SHARE * weights.sum()):
            break
        centroids = np.delete(centroids, smallest, axis=0)
    return centroids


def _refine(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each window to its nearest mean voice, the means recomputed, a few times."""
    labels = _nearest(x, centroids)
    for _ in range(REFINE_STEPS):
        present = np.unique(labels)
        centroids = _centroids(x, np.searchsorted(present, labels))
        updated = _nearest(x, centroids)
        if np.array_equal(updated, np.searchsorted(present, labels)):
            return updated
        labels = updated
    return labels
