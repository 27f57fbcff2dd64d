"""Batches of [prompt][completion] sequences and the log-probabilities of their completions.

Layout of a packed batch of B rows (P = longest prompt, C = longest completion):

    [pad .. pad prompt][completion pad .. pad]      input_ids [B, P + C]
     left-padded to P   right-padded to C

Every completion starts at column P, so the positions that score completions are
P - 1 .. P + C - 2 of every row. Position ids count real tokens only, so a left-padded row
sees the same positions as unpadded.

`completion_logprobs` does the work of the NRT step's forward passes; each of its speed-ups
has a switch in `nrt.engine.options.EngineOptions` (off = the plain computation, for the
equivalence tests):
- `fused_logprobs`: only positions predicting a real completion token reach the output layer (a
  boolean `logits_to_keep`), and log-softmax, gather and entropy run in one chunked pass
  (`nrt.engine.token_logprobs`);
- `fuse_head`: the output layer runs chunk by chunk inside that pass (no [N, V] logits);
- `share_prompts`: the K rows of a group run their common prompt once (a KV cache with its
  gradient path, repeated to the rows); not with gradients through checkpointed layers;
- `attention_in_float32`: float32 attention on the CPU (`nrt.engine.cpu_attention`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nrt.engine.cpu_attention import float32_attention
from nrt.engine.gradient_checkpointing import drops_cache
from nrt.engine.options import EngineOptions
from nrt.engine.transformers_compat import cache_kwargs, kept_outputs, output_cache
from nrt.engine.token_logprobs import head_token_logprobs, lm_head_rows, unwrap


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


def completion_logprobs(model, batch: PackedBatch, with_entropy: bool = False,
                        engine: EngineOptions = EngineOptions()):
    """log pi(token) for every completion token [B, C] (0 at padding), and optionally the
    policy's entropy at those positions [B, C] (no grad).

    Gradients flow through the log-probabilities when called outside `torch.no_grad()`.
    The switches of `engine` are described in the module docstring; all on by default, and
    the values agree with the plain computation up to float rounding.
    """
    with float32_attention(model, enabled=engine.attention_in_float32):
        if not engine.fused_logprobs:
            return _completion_logprobs_reference(model, batch, with_entropy)
        # checkpointed layers ignore a KV cache (nrt.engine.gradient_checkpointing): then every row runs its prompt
        shared = engine.share_prompts and full_attention_only(model) and not drops_cache(model)
        groups = prompt_groups(batch) if shared else None
        with lm_head_rows(model, enabled=engine.fuse_head) as head:
            if groups is not None:
                return _shared_prompt_logprobs(model, batch, groups, head, with_entropy)
            return _row_logprobs(model, batch, head, with_entropy)


def _row_logprobs(model, batch: PackedBatch, head, with_entropy: bool):
    """One forward over [B, P + C]; scores at the kept positions only."""
    b, c = batch.completion_ids.shape
    p = batch.input_ids.shape[1] - c
    keep = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
    keep[:, p - 1 : p - 1 + c] = batch.completion_mask  # position i predicts token i + 1
    rows = kept_outputs(  # [N, V] logits, or [N, H] hidden states under lm_head_rows
        model, keep,
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    mask = batch.completion_mask
    lp, ent = head_token_logprobs(rows.reshape(-1, rows.shape[-1]), batch.completion_ids[mask], head, with_entropy)
    logprobs = lp.new_zeros((b, c)).masked_scatter(mask, lp)
    return logprobs, (ent.new_zeros((b, c)).masked_scatter(mask, ent) if with_entropy else None)


def _shared_prompt_logprobs(model, batch: PackedBatch, groups: torch.Tensor, head, with_entropy: bool):
    """One prompt forward per group [G, P] with a cache, repeated to the rows, then completions [B, C-1].

    The last prompt position scores completion token 0 (its output computed once per group,
    repeated to the rows); the completion forward (inputs: completion tokens 0 .. C-2)
    scores tokens 1 .. C-1.
    """
    from transformers import DynamicCache

    b, c = batch.completion_ids.shape
    p = batch.input_ids.shape[1] - c
    first = torch.cat([groups.new_ones(1, dtype=torch.bool), groups[1:] != groups[:-1]]).nonzero().squeeze(1)
    cache = DynamicCache(config=unwrap(model).config)
    out = model(
        input_ids=batch.input_ids[first, :p],
        attention_mask=batch.attention_mask[first, :p],
        position_ids=batch.position_ids[first, :p],
        **cache_kwargs(cache),
        use_cache=True,
        logits_to_keep=1,
    )
    last = out.logits[:, -1][groups]  # [B, V] or [B, H]
    lp0, ent0 = head_token_logprobs(last, batch.completion_ids[:, 0], head, with_entropy)
    logprobs, entropy = lp0[:, None], (ent0[:, None] if with_entropy else None)
    if c > 1:
        cache = output_cache(out) if output_cache(out) is not None else cache
        cache.batch_select_indices(groups)  # [G, H, P, D] -> [B, H, P, D], differentiable
        keep = batch.completion_mask[:, 1:]
        rows = kept_outputs(
            model, keep,
            input_ids=batch.input_ids[:, p : p + c - 1],
            attention_mask=batch.attention_mask[:, : p + c - 1],
            position_ids=batch.position_ids[:, p : p + c - 1],
            **cache_kwargs(cache),
            use_cache=True,
        )
        lp, ent = head_token_logprobs(rows.reshape(-1, rows.shape[-1]), batch.completion_ids[:, 1:][keep], head,
                                      with_entropy)
        logprobs = torch.cat([logprobs, lp.new_zeros((b, c - 1)).masked_scatter(keep, lp)], dim=1)
        if with_entropy:
            entropy = torch.cat([entropy, ent.new_zeros((b, c - 1)).masked_scatter(keep, ent)], dim=1)
    mask = batch.completion_mask
    return logprobs * mask, (entropy * mask if with_entropy else None)


def prompt_groups(batch: PackedBatch) -> torch.Tensor | None:
    """Group index [B] of each row when runs of consecutive rows repeat one prompt, else None."""
    b, c = batch.completion_ids.shape
    p = batch.input_ids.shape[1] - c
    if b < 2 or p < 1:
        return None
    ids, mask = batch.input_ids[:, :p], batch.attention_mask[:, :p]
    same = ((ids[1:] == ids[:-1]) & (mask[1:] == mask[:-1])).all(1)
    if not bool(same.any()):
        return None
    starts = torch.cat([same.new_ones(1), ~same])
    return starts.cumsum(0) - 1


def full_attention_only(model) -> bool:
    """True for decoder models whose layers all attend to the whole prefix (no sliding window)."""
    config = getattr(unwrap(model), "config", None)
    if config is None:
        return False
    config = config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    return not getattr(config, "sliding_window", None) and all(t == "full_attention" for t in layer_types)


def _completion_logprobs_reference(model, batch: PackedBatch, with_entropy: bool = False):
    """The plain computation: logits at the last C + 1 positions, logsumexp, gather."""
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
