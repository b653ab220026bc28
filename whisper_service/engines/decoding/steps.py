"""The decoding loop, and the two ways a step runs: eagerly (the reference, and the CPU's)
or as one fixed-shape step, captured once per (model, shape) in a CUDA graph and replayed.

A step is: the decoder over one token per row, the vocabulary filters, the search update
and, for beams, the cache following the chosen beams. The loop calls
`cancel.checkpoint()` before every step, so a cancelled job stops within one, and tells
a watcher how far each window has come (window_progress) now and then; the captured
step calls the decoder's blocks, never `model.decoder` itself, so hooks on the decoder
module (cancel.install) stay outside the graph.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional

import torch
from torch import Tensor
from whisper.model import Whisper

from whisper_service import cancel
from whisper_service.engines import window_progress
from whisper_service.engines.decoding.filters import VocabularyFilters
from whisper_service.engines.decoding.plan import DecodePlan
from whisper_service.engines.decoding.runner import DecoderRunner, EagerDecoder, StaticDecoder
from whisper_service.engines.decoding.search import BeamSearch, GreedySearch, Search, SearchResults, WindowInputs

CHECK_EVERY_STEPS = 8  # fixed-shape steps between two looks at whether any window decodes
WARMUP_STEPS = 2  # eager runs of a step before its capture (kernels chosen, memory pooled)
WINDOW_BUCKET = 8  # fixed-shape batches hold a multiple of this many windows (or 1, 2, 4)
SESSIONS_PER_MODEL = 2  # captured steps kept per model; each holds its cache and state
KEY_BUCKET = 64  # a fixed-shape step attends to a multiple of this many cache positions


def window_bucket(windows: int) -> int:
    """Windows a fixed-shape step holds for a batch of `windows`: 1, 2, 4, then multiples
    of WINDOW_BUCKET, so few shapes are ever captured."""
    if windows <= WINDOW_BUCKET:
        return 1 << (windows - 1).bit_length()
    return -(-windows // WINDOW_BUCKET) * WINDOW_BUCKET


def key_bucket(key_length: int, n_ctx: int) -> int:
    """Cache positions a fixed-shape step attends to when `key_length` are in use."""
    return min(-(-key_length // KEY_BUCKET) * KEY_BUCKET, n_ctx)


def new_search(plan: DecodePlan, filters: VocabularyFilters, windows: int, max_steps: int,
               device: torch.device) -> Search:
    options = plan.options
    if options.beam_size is None:
        return GreedySearch(filters, windows, max_steps, plan.n_ctx, device)
    return BeamSearch(filters, windows, max_steps, plan.n_ctx, device,
                      options.beam_size, options.patience)


def run_search(plan: DecodePlan, runner: DecoderRunner, search: Search, inputs: WindowInputs,
               step: Callable[[int], None], check_every: int, no_speech: Optional[int]
               ) -> SearchResults:
    """The initial pass, the first sampled position, then `step(n)` for n = 1, 2, ... until
    no window decodes (looked at every `check_every` steps) or the longest limit."""
    search.start(inputs)
    first_rows = search.rows[:: search.group]  # all beams of a window start as its first row
    prefill = runner.prefill(inputs.initial, first_rows, inputs.prefill_outputs)
    search.first(prefill[:, 1], prefill[:, 0], no_speech)
    if search.group > 1:
        runner.expand_first_rows(int(inputs.lengths.max()))
    max_steps = max(plan.step_limit(i) for i in range(plan.n_windows))
    for number in range(1, max_steps):
        if (number - 1) % check_every == 0 and not search.still_decoding():
            break
        cancel.checkpoint()
        watch = window_progress.current()
        if watch is not None and watch.due():
            watch.report(search.seconds_reached(plan.n_windows))
        step(number)
    return search.results(plan)


def decode_eager(model: Whisper, plan: DecodePlan, audio_features: Tensor,
                 no_speech: Optional[int]) -> SearchResults:
    """The reference: steps whose attention covers the used cache, one host check a step."""
    device, windows = audio_features.device, plan.n_windows
    inputs = WindowInputs.create(plan, windows, device)
    filters = VocabularyFilters(plan, model.dims.n_vocab, device)
    max_steps = max(plan.step_limit(i) for i in range(windows))
    search = new_search(plan, filters, windows, max_steps, device)
    runner = EagerDecoder(model, windows, search.group, audio_features.dtype, device)
    runner.load(audio_features)
    longest = int(inputs.lengths.max())
    uniform = bool((inputs.lengths == longest).all())  # no per-row key mask needed
    context = torch.arange(plan.n_ctx, device=device)

    def step(number: int) -> None:
        positions = search.positions()
        key_length = min(longest + number, plan.n_ctx)
        key_mask = None if uniform else context[None, :key_length] <= positions[:, None]
        source_rows = search.update(runner.step(search.last, positions, key_length, key_mask))
        if search.group > 1:
            runner.reorder(source_rows, key_length)

    return run_search(plan, runner, search, inputs, step, 1, no_speech)


@dataclass(frozen=True)
class StepShape:
    """What a captured step's tensors and operations depend on."""

    windows: int  # windows per batch (a bucket; the rest of a batch is padding)
    group: int  # rows per window: 1 (greedy) or the beam size
    max_candidates: int  # finished sequences kept per window (beam search); 0 for greedy
    timestamps: bool  # timestamp rules on
    dtype: torch.dtype

    @classmethod
    def create(cls, plan: DecodePlan, windows: int, dtype: torch.dtype) -> "StepShape":
        options = plan.options
        beam = options.beam_size
        candidates = 0 if beam is None else round(beam * (options.patience or 1.0))
        return cls(windows, beam or 1, candidates, plan.timestamps, dtype)


class StaticSession:
    """Fixed-shape steps with their cache and search state, reused batch after batch; on
    CUDA each key-length bucket's step is captured once in a graph (all sharing one memory
    pool) and every step is one replay."""

    def __init__(self, model: Whisper, plan: DecodePlan, shape: StepShape,
                 device: torch.device):
        self.shape = shape
        self.n_ctx = plan.n_ctx
        self.filters = VocabularyFilters(plan, model.dims.n_vocab, device)
        self.search = new_search(plan, self.filters, shape.windows, plan.n_ctx, device)
        self.runner = StaticDecoder(model, shape.windows, shape.group, shape.dtype, device)
        self.graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        if device.type == "cuda":
            self._capture(device)

    def step(self, key_length: int) -> None:
        """One fixed-shape step: no host synchronisation, the same tensors every time."""
        search, runner = self.search, self.runner
        logits = runner.step(search.last, search.positions(), key_length)
        source_rows = search.update(logits)
        if search.group > 1:
            runner.reorder(source_rows)

    def _capture(self, device: torch.device) -> None:
        """Capture every key bucket's step. The state's contents are arbitrary until a
        batch starts, so the warm-up steps that precede the capture may change it freely."""
        buckets = sorted({key_bucket(n, self.n_ctx) for n in range(1, self.n_ctx + 1)})
        self.search.step.fill_(1)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                self.step(buckets[-1])
        torch.cuda.current_stream(device).wait_stream(stream)
        pool = None
        for key_length in reversed(buckets):  # the largest first: its pool serves the rest
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                self.step(key_length)
            pool = graph.pool()
            self.graphs[key_length] = graph
        self.runner.kv.zero_()  # no warm-up value (inf, NaN) may linger in an unread slot

    def decode(self, plan: DecodePlan, audio_features: Tensor,
               no_speech: Optional[int]) -> SearchResults:
        self.filters.load(plan)
        self.runner.load(audio_features)
        self.runner.start()
        inputs = WindowInputs.create(plan, self.shape.windows, audio_features.device)
        longest = max(len(tokens) for tokens in plan.initial_tokens)

        def step(number: int) -> None:
            key_length = key_bucket(longest + number, self.n_ctx)
            if self.graphs:
                self.graphs[key_length].replay()
            else:
                self.step(key_length)

        return run_search(plan, self.runner, self.search, inputs, step, CHECK_EVERY_STEPS,
                          no_speech)


_sessions: "weakref.WeakKeyDictionary[Whisper, Dict[StepShape, StaticSession]]" = (
    weakref.WeakKeyDictionary()
)
_sessions_lock = threading.Lock()


def decode_static(model: Whisper, plan: DecodePlan, audio_features: Tensor,
                  no_speech: Optional[int]) -> SearchResults:
    """Fixed-shape steps. On CUDA the session (cache, state, captured graph) is kept for
    the model and reused by every batch of the same shape, or of fewer windows; on the
    CPU it is built for the call (the tests' proof that it equals the eager step)."""
    device, dtype = audio_features.device, audio_features.dtype
    if device.type != "cuda":
        shape = StepShape.create(plan, window_bucket(plan.n_windows), dtype)
        return StaticSession(model, plan, shape, device).decode(plan, audio_features, no_speech)
    # callers hold the model's lock, so one decode per model runs at a time
    with _sessions_lock:
        sessions = _sessions.setdefault(model, {})
        wanted = StepShape.create(plan, window_bucket(plan.n_windows), dtype)
        # a session for more windows serves, unless padding would be most of its work
        fitting = [s for s in sessions if wanted.windows <= s.windows < 2 * wanted.windows
                   and s == replace(wanted, windows=s.windows)]
        if fitting:
            shape = min(fitting, key=lambda s: s.windows)
            session = sessions.pop(shape)  # re-inserted last: most recently used
        else:
            while len(sessions) >= SESSIONS_PER_MODEL:  # free the least recently used first
                sessions.pop(next(iter(sessions)))
            torch.cuda.empty_cache()
            shape, session = wanted, StaticSession(model, plan, wanted, device)
        sessions[shape] = session
    return session.decode(plan, audio_features, no_speech)
