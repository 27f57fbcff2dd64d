"""Batches of [prompt][completion] sequences and the log-probabilities of their completions.

Layout of a packed batch of B rows (P = longest prompt, C = longest completion):

    [pad .. pad prompt][completion pad .. pad]      input_ids [B, P + C]
     left-padded to P   right-padded to C

Every completion starts at column P, so the logits that score completions are the last
C + 1 positions of every row (`logits_to_keep`): prompt positions never reach the lm_head.
Position ids count real tokens only, so a left-padded row sees the same positions as
unpadded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, P + C]
    attention_mask: torch.Tensor  # [B, P + C]
    position_ids: torch.Tensor  # [B, P + C]
    completion_ids: torch.Tensor  # [B, C]
    completion_mask: torch.Tensor  # [B, C] bool


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int, device=None) -> PackedBatch:
    """Left-pad prompts and right-pad completions into one batch (see module docstring)."""
    p = max(len(x) for x in prompts)
    c = max(1, max(len(x) for x in completions))
    b = len(prompts)
    ids = torch.full((b, p + c), pad_id, dtype=torch.long)
    mask = torch.zeros((b, p + c), dtype=torch.long)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        ids[row, p - len(prompt) : p] = torch.tensor(prompt, dtype=torch.long)
        ids[row, p : p + len(completion)] = torch.tensor(completion, dtype=torch.long)
        mask[row, p - len(prompt) : p + len(completion)] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    batch = PackedBatch(ids, mask, positions, ids[:, p:], mask[:, p:].bool())
    if device is not None:
        batch = PackedBatch(*(t.to(device) for t in vars(batch).values()))
    return batch


def completion_logprobs(model, batch: PackedBatch, with_entropy: bool = False):
    """log pi(token) for every completion token [B, C] (0 at padding), and optionally the
    policy's entropy at those positions [B, C] (no grad).

    Gradients flow through the log-probabilities when called outside `torch.no_grad()`.
    """
    c = batch.completion_ids.shape[1]
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        logits_to_keep=c + 1,
    ).logits[:, :-1].float()
    log_norm = torch.logsumexp(logits, dim=-1)
    token_logits = logits.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    logprobs = (token_logits - log_norm) * batch.completion_mask
    entropy = None
    if with_entropy:
        with torch.no_grad():
            probs = (logits - log_norm.unsqueeze(-1)).exp()
            entropy = (log_norm - (probs * logits).sum(-1)) * batch.completion_mask
    return logprobs, entropy


def gather_columns(values: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor):
    """Left-align a slice of each row: out[b, j] = values[b, starts[b] + j] for j < lengths[b].

    values [B, C], starts [B], lengths [B] -> (out [B, T], mask [B, T]) with T = max(lengths);
    differentiable through `values`.
    """
    t = int(lengths.max())
    offsets = torch.arange(t, device=values.device)
    mask = offsets[None, :] < lengths[:, None]
    index = (starts[:, None] + offsets[None, :]).clamp(max=values.shape[1] - 1)
    return values.gather(1, index) * mask, mask
