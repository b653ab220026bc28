"""whisper's logit filters (SuppressBlank, SuppressTokens, ApplyTimestampRules) as tensor
operations over all rows at once, with no host synchronisation.

The first sampled position (right after the initial tokens) has rules of its own and runs
once, eagerly; every later step runs the same operations on tensors of fixed shape, with
the step count itself a device tensor, so a step can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from whisper_service.engines.decoding.plan import DecodePlan

NEG_INF = float("-inf")
NO_TIMESTAMP = -1  # "no timestamp sampled yet" in the per-row timestamp state


class VocabularyFilters:
    """The filters of one plan, over a vocabulary of n_vocab columns on `device`."""

    def __init__(self, plan: DecodePlan, n_vocab: int, device: torch.device):
        tokenizer = plan.tokenizer
        self.eot = tokenizer.eot
        self.timestamp_begin = tokenizer.timestamp_begin
        self.n_vocab = n_vocab
        self.timestamps = plan.timestamps
        self.columns = torch.arange(n_vocab, device=device)
        self.text_columns = self.columns < self.timestamp_begin
        self.always_banned = torch.zeros(n_vocab, dtype=torch.bool, device=device)
        self.first_banned = torch.zeros(n_vocab, dtype=torch.bool, device=device)
        self.load(plan)

    def load(self, plan: DecodePlan) -> None:
        """Take another plan's token lists, in place (same tokenizer, same timestamp mode),
        so a captured step keeps reading the same tensors."""
        if plan.timestamps != self.timestamps or plan.tokenizer.eot != self.eot:
            raise ValueError("a plan with other timestamp rules or another vocabulary")
        tokenizer, begin = plan.tokenizer, self.timestamp_begin
        # banned at every step: SuppressTokens, and <|notimestamps|> under timestamp rules
        always = torch.zeros_like(self.always_banned)
        if plan.suppress_tokens is not None:
            always[list(plan.suppress_tokens)] = True
        if plan.timestamps and tokenizer.no_timestamps is not None:
            always[tokenizer.no_timestamps] = True
        # banned at the first sampled position only: SuppressBlank, and under timestamp
        # rules every text token and every timestamp after max_initial_timestamp
        first = always.clone()
        if plan.blank_tokens is not None:
            first[list(plan.blank_tokens)] = True
        if plan.timestamps:
            first[:begin] = True
            if plan.max_initial_timestamp_index is not None:
                first[begin + plan.max_initial_timestamp_index + 1 :] = True
        self.always_banned.copy_(always)
        self.first_banned.copy_(first)

    def apply_first(self, logits: Tensor) -> None:
        """In place, for the first sampled position."""
        logits.masked_fill_(self.first_banned, NEG_INF)
        if self.timestamps:
            self._prefer_timestamps(logits)

    def apply(self, logits: Tensor, step: Tensor, last: Tensor, penultimate: Tensor,
              last_timestamp: Tensor) -> None:
        """In place, for a later position. step: (1,) tokens sampled so far (>= 1); last,
        penultimate: each row's last two sampled tokens (penultimate is read only from
        step 2 on); last_timestamp: each row's last sampled timestamp or NO_TIMESTAMP."""
        if not self.timestamps:
            logits.masked_fill_(self.always_banned, NEG_INF)
            return
        begin = self.timestamp_begin
        last_was_timestamp = last >= begin
        # whisper: `len(seq) < 2 or seq[-2] >= timestamp_begin`
        penultimate_was_timestamp = (penultimate >= begin) | (step < 2)
        # a lone timestamp opens a segment: its closing timestamp (or EOT) must follow
        segment_open = last_was_timestamp & ~penultimate_was_timestamp
        # two timestamps in a row: text must follow
        pair_closed = last_was_timestamp & penultimate_was_timestamp
        text_end = torch.where(segment_open, self.eot, 0)
        # timestamps must not decrease (and must advance after a closed segment)
        timestamp_end = torch.where(
            last_timestamp == NO_TIMESTAMP, begin, last_timestamp + (~segment_open).long()
        )
        timestamp_end = torch.where(pair_closed, self.n_vocab, timestamp_end)
        # text columns are banned below text_end, timestamp columns below timestamp_end
        columns = self.columns[None, :]
        banned = torch.where(self.text_columns, columns < text_end[:, None],
                             columns < timestamp_end[:, None])
        logits.masked_fill_(self.always_banned, NEG_INF)
        logits.masked_fill_(banned, NEG_INF)
        self._prefer_timestamps(logits)

    def _prefer_timestamps(self, logits: Tensor) -> None:
        """If the timestamps together are likelier than any text token, sample a timestamp."""
        begin = self.timestamp_begin
        logprobs = F.log_softmax(logits.float(), dim=-1)
        timestamp_logprob = logprobs[:, begin:].logsumexp(dim=-1)
        max_text_logprob = logprobs[:, :begin].max(dim=-1).values
        logits[:, :begin].masked_fill_((timestamp_logprob > max_text_logprob)[:, None], NEG_INF)

