"""Float32 attention on the CPU (`nrt.engine.cpu_attention`): a boolean padding mask becomes one float mask
per forward, shared by every layer, with the same values torch's sdpa makes of it on each call."""

import pytest
import torch

from nrt.engine.cpu_attention import additive_mask, float32_sdpa_attention
from nrt.engine.options import EngineOptions
from nrt.engine.sequences import completion_logprobs, pack
from nrt.experiments.bench import bench_model

pytestmark = pytest.mark.usefixtures("one_thread")


class Heads(torch.nn.Module):
    """What transformers' sdpa attention reads from a layer's attention module."""

    num_key_value_groups = 1
    is_causal = True


def padded_causal_mask(rows: int, queries: int, prompt: int, pads: list[int]) -> torch.Tensor:
    """[rows, 1, queries, prompt + queries]: each row's left padding masked, then causal over the queries."""
    keys = prompt + queries
    mask = torch.ones(rows, 1, queries, keys, dtype=torch.bool)
    for row, pad in enumerate(pads):
        mask[row, :, :, :pad] = False
    mask[..., prompt:] &= torch.ones(queries, queries, dtype=torch.bool).tril()
    return mask


def test_the_shared_float_mask_gives_torchs_own_attention_bit_for_bit():
    torch.manual_seed(0)
    rows, heads, queries, prompt, dim = 3, 2, 5, 4, 8
    mask = padded_causal_mask(rows, queries, prompt, pads=[0, 1, 3])
    q = torch.randn(rows, heads, queries, dim, requires_grad=True)
    k = torch.randn(rows, heads, prompt + queries, dim, requires_grad=True)
    v = torch.randn(rows, heads, prompt + queries, dim, requires_grad=True)
    out, _ = float32_sdpa_attention(Heads(), q, k, v, mask, scaling=dim**-0.5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    # torch converts the boolean mask itself (its own convert_boolean_attn_mask)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=dim**-0.5)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    assert torch.equal(out.transpose(1, 2), expected)  # transformers returns [rows, queries, heads, dim]
    assert all(torch.equal(a, b) for a, b in zip(grads, expected_grads))
    converted = additive_mask(mask)
    assert converted.dtype == torch.float32 and torch.equal(converted == 0, mask)
    assert torch.isneginf(converted[~mask]).all()


def test_additive_mask_is_made_once_per_mask_object():
    mask = padded_causal_mask(2, 3, 2, pads=[1, 0])
    first = additive_mask(mask)
    assert additive_mask(mask) is first
    other = mask.clone()  # equal values, another object (another forward): converted anew
    assert additive_mask(other) is not first and torch.equal(additive_mask(other), first)


def saved_mask_storages(attention_in_float32: bool, layers: int = 4) -> int:
    """Distinct storages of the [rows, 1, queries, keys] masks a forward with gradients keeps for its backward."""
    model = bench_model(vocab_size=64, hidden=128, layers=layers, seed=0)  # 2 heads of 64
    batch = pack([[5, 6, 7], [5, 6, 7], [9, 10], [9, 10]], [[11, 12, 13, 14], [15, 16], [17, 18, 19], [20]], pad_id=0)
    storages = set()

    def pack_hook(t):
        if t.dim() == 4 and t.shape[1] == 1 and t.shape[-1] != 64:  # not one head's [rows, 1, length, 64]
            storages.add(t.untyped_storage().data_ptr())
        return t

    engine = EngineOptions(attention_in_float32=attention_in_float32)
    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
        logprobs, _ = completion_logprobs(model, batch, engine=engine)
    assert logprobs.requires_grad
    return len(storages)


def test_a_forward_keeps_one_float_mask_for_all_its_layers():
    """Linear memory in the length: one mask per forward, not one per layer. Two forwards here (the groups'
    left-padded prompts, then the completions over their cache); through transformers' own sdpa attention
    torch converts the boolean mask at every layer of each (the check can fail)."""
    assert saved_mask_storages(attention_in_float32=True, layers=4) == 2
    assert saved_mask_storages(attention_in_float32=False, layers=4) == 2 * 4


def test_the_float_mask_is_dropped_with_its_boolean_mask():
    """No float mask outlives its forward: once the boolean mask is gone, nothing holds its float form."""
    import gc
    import weakref

    mask = padded_causal_mask(2, 3, 2, pads=[1, 0])
    converted = weakref.ref(additive_mask(mask))
    gc.collect()
    assert converted() is not None  # kept while the mask lives (the layers of one forward)
    del mask
    gc.collect()
    assert converted() is None
