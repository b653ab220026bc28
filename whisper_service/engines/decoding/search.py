"""The search over tokens: greedy and beam search of whisper.decode, for all windows at
once, as tensor updates of a fixed-shape state.

A search holds one row per window (greedy) or `beam_size` rows per window (beam search),
windows first. `first()` takes the logits of the first sampled position (from the
decoder's pass over the initial tokens) and runs once, eagerly; `update()` takes one step's
logits and changes the state in place: no tensor is reallocated, no value is read on the
host, and the step count is a device tensor, so a decoder step followed by `update()` can be
captured in a CUDA graph and replayed. `still_decoding()` is the one host synchronisation,
which the caller runs every few steps; `results()` reads everything once at the end.

Windows past `n_windows` (the padding of a fixed-size batch) are inactive from the start;
a window that has finished keeps its state while the others go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from whisper_service.engines.window_progress import seconds_reached
from whisper_service.engines.decoding.filters import NO_TIMESTAMP, VocabularyFilters
from whisper_service.engines.decoding.plan import DecodePlan

DEFAULT_PATIENCE = 1.0  # BeamSearchDecoder: `patience or 1.0`
LENGTH_PENALTY_BASE = 5  # Google NMT length penalty ((5 + length) / 6) ** alpha
LENGTH_PENALTY_DIVISOR = 6

# (tokens per window, sum of log-probabilities per window, no-speech probability per window)
SearchResults = Tuple[List[List[int]], List[float], List[float]]


@dataclass(frozen=True)
class WindowInputs:
    """The per-window values a search starts from, padded to the batch's windows."""

    initial: Tensor  # (windows, longest initial) initial tokens, right-padded with EOT
    lengths: Tensor  # (windows,) initial tokens per window
    limits: Tensor  # (windows,) tokens sampled at most; 0 for padding windows
    last_initial: Tensor  # (windows,) the last initial token (GreedyDecoder looks at it)
    prefill_outputs: Tensor  # (windows, 2) positions read after the initial pass: SOT, last
    n_windows: int  # real windows; the rest is padding

    @classmethod
    def create(cls, plan: DecodePlan, windows: int, device: torch.device) -> "WindowInputs":
        eot = plan.tokenizer.eot
        padding = windows - plan.n_windows
        initial = list(plan.initial_tokens) + [plan.initial_tokens[0]] * padding
        lengths = [len(tokens) for tokens in initial]
        longest = max(lengths)
        limits = [plan.step_limit(i) for i in range(plan.n_windows)] + [0] * padding
        sot_indices = list(plan.sot_indices) + [plan.sot_indices[0]] * padding

        def on_device(values) -> Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        return cls(
            initial=on_device([list(t) + [eot] * (longest - len(t)) for t in initial]),
            lengths=on_device(lengths),
            limits=on_device(limits),
            last_initial=on_device([t[-1] for t in initial]),
            prefill_outputs=on_device([[sot, n - 1] for sot, n in zip(sot_indices, lengths)]),
            n_windows=plan.n_windows,
        )


class Search:
    """State and update shared by greedy and beam search."""

    group = 1  # rows per window

    def __init__(self, filters: VocabularyFilters, windows: int, max_steps: int, n_ctx: int,
                 device: torch.device):
        self.filters = filters
        self.n_ctx = n_ctx
        self.eot = filters.eot
        self.timestamp_begin = filters.timestamp_begin
        self.windows = windows
        self.max_steps = max_steps
        rows = windows * self.group
        self.rows = torch.arange(rows, device=device)

        def longs(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=torch.long, device=device)

        self.step = longs(1)  # tokens sampled so far
        self.row_lengths = longs(rows)  # initial tokens of each row's window
        self.limits = longs(windows)
        self.last = longs(rows)
        self.penultimate = longs(rows)
        self.last_timestamp = longs(rows)
        self.sampled = longs(rows, max_steps)
        self.sum_logprobs = torch.zeros(rows, device=device)
        self.no_speech_probs = torch.zeros(windows, device=device)
        self.active = torch.zeros(windows, dtype=torch.bool, device=device)

    def start(self, inputs: WindowInputs) -> None:
        """Reset the state, in place, for a new batch of windows."""
        self.step.zero_()
        self.row_lengths.copy_(inputs.lengths.repeat_interleave(self.group))
        self.limits.copy_(inputs.limits)
        self.last.copy_(inputs.last_initial.repeat_interleave(self.group))
        self.penultimate.fill_(self.eot)
        self.last_timestamp.fill_(NO_TIMESTAMP)
        self.sampled.fill_(self.eot)
        self.sum_logprobs.zero_()
        self.active.copy_(inputs.limits > 0)

    def positions(self) -> Tensor:
        """Each row's position for the token fed at this step (>= 1). Finished rows may
        run past the context; they are clamped (and their results ignored)."""
        return (self.row_lengths + self.step - 1).clamp_(max=self.n_ctx - 1)

    def first(self, logits: Tensor, sot_logits: Tensor, no_speech: Optional[int]) -> None:
        """The first sampled position, from the logits after the initial tokens (windows,
        vocab); sot_logits: the logits at <|startoftranscript|>, for the no-speech
        probability."""
        if no_speech is None:
            self.no_speech_probs.fill_(float("nan"))
        else:
            self.no_speech_probs.copy_(sot_logits.float().softmax(dim=-1)[:, no_speech])
        self.filters.apply_first(logits)
        self._advance(logits, first=True)

    def update(self, logits: Tensor) -> Tensor:
        """One later step from its logits (rows, vocab), in place; returns, for each row,
        the row its sequence continues (the cache must follow)."""
        self.filters.apply(logits, self.step, self.last, self.penultimate, self.last_timestamp)
        return self._advance(logits, first=False)

    def still_decoding(self) -> bool:
        return bool(self.active.any())  # a host synchronisation

    def seconds_reached(self, n_windows: int) -> List[float]:
        """How far into its audio each real window is (window_progress.seconds_reached: its
        latest timestamp, then the text tokens since), its furthest row; math.inf once it
        has finished. Host synchronisations: for progress reports, now and then."""
        steps = int(self.step)
        sampled = self.sampled[:, :steps]
        at = torch.arange(steps, device=sampled.device)
        last_stamp_at = torch.where(sampled >= self.timestamp_begin, at, -1).amax(
            dim=1, keepdim=True) if steps else self.step.new_full((len(self.rows), 1), -1)
        text_after = ((at > last_stamp_at) & (sampled < self.eot)).sum(dim=1)
        rows = [seconds_reached(stamp, text, self.timestamp_begin)
                for stamp, text in zip(self.last_timestamp.tolist(), text_after.tolist())]
        active = self.active.tolist()
        return [max(rows[w * self.group:(w + 1) * self.group]) if active[w] else math.inf
                for w in range(n_windows)]

    def _advance(self, logits: Tensor, first: bool) -> Tensor:
        raise NotImplementedError

    def _record(self, active_rows: Tensor, tokens: Tensor, source_rows: Tensor) -> None:
        """Append each active row's token after the sequence of its source row."""
        eot, step = self.eot, self.step
        self.sampled.index_copy_(1, step, torch.where(active_rows, tokens, eot)[:, None])
        self.penultimate.copy_(torch.where(active_rows, self.last[source_rows], self.penultimate))
        self.last_timestamp.copy_(torch.where(
            active_rows & (tokens >= self.timestamp_begin), tokens,
            self.last_timestamp[source_rows],
        ))
        self.last.copy_(torch.where(active_rows, tokens, self.last))


class GreedySearch(Search):
    """GreedyDecoder at temperature 0."""

    def _advance(self, logits: Tensor, first: bool) -> Tensor:
        next_tokens = logits.argmax(dim=-1)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        current = logprobs.gather(1, next_tokens[:, None])[:, 0]
        ended = self.last == self.eot
        active = self.active
        self.sum_logprobs.copy_(
            torch.where(active, self.sum_logprobs + current * ~ended, self.sum_logprobs)
        )
        next_tokens = torch.where(ended, self.eot, next_tokens)
        self._record(active, next_tokens, self.rows)
        self.active.copy_(active & (next_tokens != self.eot) & (self.step + 1 < self.limits))
        self.step.add_(1)
        return self.rows

    def results(self, plan: DecodePlan) -> SearchResults:
        n = plan.n_windows
        sampled = self.sampled[:n].tolist()
        tokens = [plan.full_sequence_tokens(i, sampled[i]) for i in range(n)]
        return tokens, self.sum_logprobs[:n].tolist(), self.no_speech_probs[:n].tolist()


class BeamSearch(Search):
    """BeamSearchDecoder: per window the beam*(beam+1) candidates (top beam+1 of every live
    beam, beam-major as whisper inserts them in its dict) are stably sorted by score; EOT
    candidates ranked before the beam-th non-EOT one finish (kept while fewer than
    round(beam*patience) have), the first beam non-EOT candidates become the new beams.
    On the first step all beams of a window are one sequence, which whisper's dict
    collapses: there only the window's first row is expanded."""

    def __init__(self, filters: VocabularyFilters, windows: int, max_steps: int, n_ctx: int,
                 device: torch.device, beam_size: int, patience: Optional[float]):
        max_candidates = round(beam_size * (patience or DEFAULT_PATIENCE))
        if max_candidates <= 0:
            raise ValueError(f"Invalid beam size ({beam_size}) or patience ({patience})")
        self.group = beam_size
        self.max_candidates = max_candidates
        super().__init__(filters, windows, max_steps, n_ctx, device)
        self.window_first_rows = torch.arange(windows, device=device) * beam_size
        self.steps_done = torch.zeros(windows, dtype=torch.long, device=device)
        # finished sequences per window, in whisper's insertion order; the extra slot
        # (index max_candidates) swallows writes that are not accepted
        slots = (windows, max_candidates + 1)
        self.finished_scores = torch.zeros(slots, device=device)
        self.finished_lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.finished_tokens = torch.zeros((*slots, max_steps), dtype=torch.long, device=device)
        self.finished_count = torch.zeros(windows, dtype=torch.long, device=device)
        self._zero_scores = torch.zeros(windows, device=device)

    def start(self, inputs: WindowInputs) -> None:
        super().start(inputs)
        self.steps_done.zero_()
        self.finished_scores.zero_()
        self.finished_lengths.zero_()
        self.finished_tokens.fill_(self.eot)
        self.finished_count.zero_()

    def _advance(self, logits: Tensor, first: bool) -> Tensor:
        beam, eot, windows = self.group, self.eot, self.windows
        if first:  # one row per window
            state_rows, previous_scores = self.window_first_rows, self._zero_scores
        else:
            state_rows, previous_scores = self.rows, self.sum_logprobs
        active, step = self.active, self.step

        # STEP 1 of BeamSearchDecoder.update: candidates, beam-major then by rank
        logprobs = F.log_softmax(logits.float(), dim=-1)
        top_logprobs, top_tokens = logprobs.topk(beam + 1, dim=-1)
        scores = (previous_scores[:, None] + top_logprobs).view(windows, -1)
        tokens = top_tokens.view(windows, -1)
        sources = state_rows[:, None].expand_as(top_tokens).reshape(windows, -1)

        # STEP 2: stable sort (whisper's sorted() over an insertion-ordered dict)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        scores, tokens, sources = (
            scores.gather(1, order), tokens.gather(1, order), sources.gather(1, order)
        )
        is_eot = tokens == eot
        continuing_so_far = (~is_eot).cumsum(dim=1)
        # the first beam non-EOT candidates become the beams (there always are enough:
        # each beam has at most one EOT among its beam + 1 candidates)
        chosen = ~is_eot & (continuing_so_far <= beam)
        slot = torch.where(chosen, continuing_so_far - 1, beam)

        def chosen_in_order(values: Tensor) -> Tensor:  # column `beam` is scratch
            scattered = values.new_zeros(windows, beam + 1).scatter_(1, slot, values)
            return scattered[:, :beam]

        new_scores, new_tokens, new_sources = map(chosen_in_order, (scores, tokens, sources))

        # EOT candidates seen before the loop filled the beams finish, best first, while
        # the window has fewer than max_candidates
        finishing = is_eot & (continuing_so_far < beam) & active[:, None]
        finished_slot = self.finished_count[:, None] + finishing.cumsum(dim=1) - 1
        accepted = finishing & (finished_slot < self.max_candidates)
        finished_slot = torch.where(accepted, finished_slot, self.max_candidates)
        self.finished_scores.scatter_(1, finished_slot, scores)
        self.finished_lengths.scatter_(1, finished_slot, step.expand_as(finished_slot))
        self.finished_tokens.scatter_(
            1, finished_slot[..., None].expand(-1, -1, self.max_steps), self.sampled[sources]
        )
        self.finished_count.add_(accepted.sum(dim=1))

        # the new beams, for windows still decoding; frozen windows keep theirs
        active_rows = active[:, None].expand(-1, beam).reshape(-1)
        source_rows = torch.where(active_rows, new_sources.reshape(-1), self.rows)
        new_tokens = new_tokens.reshape(-1)
        self.sum_logprobs.copy_(
            torch.where(active_rows, new_scores.reshape(-1), self.sum_logprobs)
        )
        self.sampled.copy_(self.sampled[source_rows])
        self._record(active_rows, new_tokens, source_rows)

        self.steps_done.copy_(torch.where(active, step + 1, self.steps_done))
        self.active.copy_(
            active & (self.finished_count < self.max_candidates) & (step + 1 < self.limits)
        )
        self.step.add_(1)
        return source_rows

    def results(self, plan: DecodePlan) -> SearchResults:
        """BeamSearchDecoder.finalize, then MaximumLikelihoodRanker, per window."""
        n, beam = plan.n_windows, self.group
        finished_count = self.finished_count[:n].tolist()
        finished_scores = self.finished_scores[:n].tolist()
        finished_lengths = self.finished_lengths[:n].tolist()
        finished_tokens = self.finished_tokens[:n].tolist()
        sum_logprobs = self.sum_logprobs[: n * beam].tolist()
        sampled = self.sampled[: n * beam].tolist()
        steps_done = self.steps_done[:n].tolist()
        all_tokens, all_logprobs = [], []
        for window in range(n):
            candidates = [
                (finished_tokens[window][k][: finished_lengths[window][k]],
                 finished_scores[window][k])
                for k in range(finished_count[window])
            ]
            if len(candidates) < beam:  # not enough finished: add the best live beams
                first = window * beam
                scores = sum_logprobs[first : first + beam]
                # whisper walks np.argsort(scores)[::-1]: best first, ties by higher index
                for j in sorted(range(beam), key=lambda j: (scores[j], j), reverse=True):
                    candidates.append((sampled[first + j][: steps_done[window]], scores[j]))
                    if len(candidates) >= beam:
                        break
            sequences = [plan.full_sequence_tokens(window, tokens) for tokens, _ in candidates]
            logprobs = [score for _, score in candidates]
            best = rank(sequences, logprobs, plan.options.length_penalty)
            all_tokens.append(sequences[best])
            all_logprobs.append(logprobs[best])
        return all_tokens, all_logprobs, self.no_speech_probs[:n].tolist()


def rank(sequences: Sequence[Sequence[int]], sum_logprobs: Sequence[float],
         length_penalty: Optional[float]) -> int:
    """MaximumLikelihoodRanker.rank for one window (an empty sequence divides by zero, which
    raises in whisper; here it scores -inf or NaN as numpy divides)."""
    scores = []
    for tokens, logprob in zip(sequences, sum_logprobs):
        length = len(tokens)
        if length_penalty is None:
            penalty = length
        else:
            penalty = ((LENGTH_PENALTY_BASE + length) / LENGTH_PENALTY_DIVISOR) ** length_penalty
        with np.errstate(divide="ignore", invalid="ignore"):
            scores.append(np.float64(logprob) / penalty)
    return int(np.argmax(scores))
