"""log pi(token) from hidden states or logits without full-size [N, V] temporaries.

Two pieces, used by `nrt.engine.sequences.completion_logprobs`:

- `token_logprobs(logits [N, V], targets [N])`: log-softmax at the target, and the entropy, in
  one chunked pass (chunks of rows small enough to stay in cache). Backward recomputes the
  softmax per chunk and writes d logprob / d logits = onehot(t) - softmax straight into the
  gradient. Arithmetic in float32 (float64 for float64 logits), whatever the logits' dtype.

- `lm_head_rows(model)`: a context in which the model's output layer returns its input, so a
  forward yields the final hidden states [N, H] of the kept positions instead of logits; then
  `head_token_logprobs` applies the output layer chunk by chunk (under the autocast state the
  model ran with, the cast weight made once for all chunks) and feeds each chunk of logits to
  `token_logprobs`. No float32 copy of the [N, V] logits is made (accelerate converts model
  outputs to float32 under mixed precision), nor a float32 gradient of them; with gradients on,
  each chunk's logits are kept for the backward in the autocast dtype, so [N, V] of those do
  exist at once. Only for a plain `nn.Linear` output layer whose weight is whole on this
  process (not sharded by FSDP or DeepSpeed ZeRO-3) and whose logits the model returns
  unchanged (checked once per model: no soft-capping or scaling config, and the recomputed
  logits match the model's).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

CHUNK_BYTES = 2**21  # float32 logits per chunk of the softmax: small enough to stay in cache
HEAD_CHUNK_BYTES = 2**24  # logits per chunk of the output layer's matmul (large enough for an efficient matmul)
# ... but at most this many chunks: each chunk's backward makes a whole [V, H] weight gradient and adds it to
# the weight's (converted to float32 under autocast): 80 ms a chunk at SmolLM2's 49k x 576 on the 2-core CPU,
# 15 chunks per 2,300 rows at the byte budget alone. All chunks' logits are kept for the backward anyway, so a
# chunk of N / 4 rows adds at most a quarter to what the step holds.
MAX_HEAD_CHUNKS = 4
# On an accelerator, cache size does not matter and each chunk costs a kernel launch: far fewer,
# larger chunks (a 128k vocabulary would otherwise give chunks of 4 and 65 rows).
DEVICE_CHUNK_BYTES = DEVICE_HEAD_CHUNK_BYTES = 2**28


def chunk_rows(bytes_per_row: int, device: torch.device, cpu_budget: int, device_budget: int) -> int:
    """Rows per chunk: the byte budget of the device type over the bytes of one row (at least 1)."""
    return max(1, (cpu_budget if device.type == "cpu" else device_budget) // bytes_per_row)


def head_chunk_rows(n: int, vocab: int, device: torch.device) -> int:
    """Rows per chunk of the output layer for n rows: the byte budget's rows, or more so that there are
    at most MAX_HEAD_CHUNKS chunks."""
    budget = chunk_rows(2 * vocab, device, HEAD_CHUNK_BYTES, DEVICE_HEAD_CHUNK_BYTES)
    return max(budget, -(-n // MAX_HEAD_CHUNKS))


_SCALING_ATTRIBUTES = ("final_logit_softcapping", "logit_softcapping", "logit_scale", "logits_scaling",
                       "output_multiplier_scale", "logit_scale_init_value")


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, with_entropy: bool):
        n, v = logits.shape
        rows = chunk_rows(4 * v, logits.device, CHUNK_BYTES, DEVICE_CHUNK_BYTES)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        logprobs = logits.new_empty(n, dtype=dtype)
        lse = logits.new_empty(n, dtype=dtype)
        entropy = logits.new_empty(n if with_entropy else 0, dtype=dtype)
        for i in range(0, n, rows):
            x = logits[i : i + rows].to(dtype)
            top = x.amax(-1, keepdim=True)
            shifted = x - top
            exp = shifted.exp()
            total = exp.sum(-1)
            norm = total.log()  # logsumexp - top
            lse[i : i + rows] = norm + top.squeeze(1)
            logprobs[i : i + rows] = shifted.gather(1, targets[i : i + rows, None]).squeeze(1) - norm
            if with_entropy:  # H = logsumexp - E[x] = norm - E[shifted]
                entropy[i : i + rows] = norm - (exp * shifted).sum(-1) / total
        ctx.save_for_backward(logits, targets, lse)
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        logits, targets, lse = ctx.saved_tensors
        n, v = logits.shape
        rows = chunk_rows(4 * v, logits.device, CHUNK_BYTES, DEVICE_CHUNK_BYTES)
        grad = torch.empty_like(logits)
        g = grad_logprobs.to(lse.dtype)
        work = torch.empty((min(rows, n), v), dtype=lse.dtype, device=logits.device)
        for i in range(0, n, rows):
            probs = work[: min(rows, n - i)]
            torch.sub(logits[i : i + rows], lse[i : i + rows, None], out=probs).exp_()
            chunk_g = g[i : i + rows, None]
            probs.mul_(-chunk_g).scatter_add_(1, targets[i : i + rows, None], chunk_g)
            grad[i : i + rows] = probs
        return grad, None, None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool = False):
    """(log softmax(logits)[n, targets[n]] [N], entropy [N] or None) from logits [N, V].

    Differentiable in the log-probabilities; the entropy carries no gradient.
    """
    logprobs, entropy = _TokenLogprobs.apply(logits, targets, with_entropy)
    return logprobs, (entropy if with_entropy else None)


# --------------------------------------------------------------------------- output layer
class _SharedCast(torch.autograd.Function):
    """`cast` (a lower-precision copy of `weight`) forward; backward, the gradient converted to
    `weight`'s dtype, so each use's gradient is summed into `weight` in its own precision, exactly
    as when autocast casts the weight anew for every use."""

    @staticmethod
    def forward(ctx, weight, cast):
        ctx.dtype = weight.dtype
        return cast.view_as(cast)

    @staticmethod
    def backward(ctx, grad):
        return grad.to(ctx.dtype), None


def unwrap(model):
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return model


def _plain_head(model) -> torch.nn.Linear | None:
    """The model's output layer when logits = head(final hidden state) exactly, else None."""
    inner = unwrap(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or not _full_local(head.weight):
        return None
    verdict = head.__dict__.get("_nrt_plain_head")
    if verdict is None:
        config = inner.config.get_text_config(decoder=True) if hasattr(inner, "config") else None
        scaled = config is None or any(getattr(config, a, None) not in (None, 1, 1.0) for a in _SCALING_ATTRIBUTES)
        verdict = not scaled and _head_check(inner, head)
        head.__dict__["_nrt_plain_head"] = verdict
    return head if verdict else None


def _full_local(weight: torch.Tensor) -> bool:
    """False for a weight that is sharded outside the model's forward (FSDP's DTensor or flat
    parameter views, DeepSpeed ZeRO-3): the output layer can only be applied inside the forward."""
    from torch.distributed.tensor import DTensor

    if isinstance(weight, DTensor) or hasattr(weight, "ds_id") or weight.dim() != 2:
        return False
    return weight.numel() > 0


@torch.no_grad()
def _head_check(model, head) -> bool:
    """The model's logits on a two-token input equal the output layer applied to its final hidden state."""
    device = head.weight.device
    ids = torch.tensor([[0, min(1, head.out_features - 1)]], device=device)
    expected = model(input_ids=ids, use_cache=False).logits.float()
    with _identity_head(head) as state:
        hidden = model(input_ids=ids, use_cache=False).logits
    with torch.autocast(**state["autocast"]):
        got = head(hidden).float()
    return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-3, atol=1e-4)


@contextmanager
def _identity_head(head: torch.nn.Linear):
    state = {}

    def identity(x):
        device_type = x.device.type
        state["autocast"] = {"device_type": device_type, "enabled": torch.is_autocast_enabled(device_type),
                             "dtype": torch.get_autocast_dtype(device_type)}
        return x

    head.forward = identity
    try:
        yield state
    finally:
        del head.forward


@contextmanager
def lm_head_rows(model, enabled: bool = True):
    """Within the block the model returns hidden states [.., H] where it returned logits; yields
    the state `head_token_logprobs` needs, or None when the model's output layer is not plain
    (then the model returns logits as usual)."""
    head = _plain_head(model) if enabled else None
    if head is None:
        yield None
        return
    with _identity_head(head) as state:
        state["head"] = head
        yield state


def head_token_logprobs(rows: torch.Tensor, targets: torch.Tensor, head_state: dict | None, with_entropy: bool):
    """token_logprobs of the logits for `rows` [N, H] (hidden states; or [N, V] logits when
    head_state is None), the output layer applied chunk by chunk."""
    if head_state is None:
        return token_logprobs(rows, targets, with_entropy)
    head, autocast = head_state["head"], head_state["autocast"]
    weight, bias = head.weight, head.bias
    dtype = autocast["dtype"] if autocast["enabled"] else None
    if dtype is not None and weight.dtype in (torch.float32, torch.float64):
        # as autocast would, in one copy shared by every chunk (a per-chunk cast would keep one copy
        # per chunk for the backward); each chunk's weight gradient still reaches `weight` on its own
        weight = weight.detach().to(dtype)
        bias = None if bias is None else bias.detach().to(dtype)
    step = head_chunk_rows(rows.shape[0], head.out_features, rows.device)
    lps, ents = [], []
    for i in range(0, rows.shape[0], step):
        if weight is head.weight:  # no cast needed
            with torch.autocast(**autocast):  # the layer's own forward is the identity here
                logits = torch.nn.functional.linear(rows[i : i + step], weight, bias)
        else:
            with torch.autocast(autocast["device_type"], enabled=False):
                cast_weight = _SharedCast.apply(head.weight, weight)
                cast_bias = None if bias is None else _SharedCast.apply(head.bias, bias)
                logits = torch.nn.functional.linear(rows[i : i + step].to(dtype), cast_weight, cast_bias)
        lp, ent = token_logprobs(logits, targets[i : i + step], with_entropy)
        lps.append(lp)
        ents.append(ent)
    if not lps:
        empty = rows.new_zeros(0, dtype=torch.promote_types(rows.dtype, torch.float32))
        return empty, (empty if with_entropy else None)
    return torch.cat(lps), (torch.cat(ents) if with_entropy else None)
