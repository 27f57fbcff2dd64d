"""Float32 attention on the CPU (`nrt.engine.cpu_attention`): the padding mask is made as one float mask per
forward, shared by every layer, with the values torch's sdpa would make of the boolean mask on each call."""

import pytest
import torch

from transformers.masking_utils import sdpa_mask

from nrt.engine.cpu_attention import additive_mask, float32_sdpa_attention, float32_sdpa_mask
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
    out, _ = float32_sdpa_attention(Heads(), q, k, v, additive_mask(mask), scaling=dim**-0.5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    # torch converts the boolean mask itself (its own convert_boolean_attn_mask)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=dim**-0.5)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    assert torch.equal(out.transpose(1, 2), expected)  # transformers returns [rows, queries, heads, dim]
    assert all(torch.equal(a, b) for a, b in zip(grads, expected_grads))
    converted = additive_mask(mask)
    assert converted.dtype == torch.float32 and torch.equal(converted == 0, mask)
    assert torch.isneginf(converted[~mask]).all()


def test_the_mask_function_gives_sdpas_boolean_mask_as_that_float_mask():
    attention_mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)  # row 0 left-padded
    shape = dict(batch_size=2, q_length=3, kv_length=5, kv_offset=0, q_offset=2, attention_mask=attention_mask)
    expected = sdpa_mask(**shape, allow_is_causal_skip=False)
    assert expected.dtype == torch.bool and not expected.all()
    made_for = {torch.float32: torch.float32, torch.bfloat16: torch.float32, torch.float64: torch.float64}
    for dtype, made in made_for.items():
        mask = float32_sdpa_mask(**shape, allow_is_causal_skip=False, dtype=dtype)
        assert mask.dtype == made and torch.equal(mask, additive_mask(expected, made))
    # no padding, causal: sdpa may skip the mask (is_causal), and so does this one
    assert float32_sdpa_mask(batch_size=2, q_length=3, kv_length=3, attention_mask=torch.ones(2, 3, dtype=torch.bool),
                             dtype=torch.float32) is None


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



def test_grouped_heads_with_a_mask_give_transformers_repeated_heads_attention():
    """3 query heads per key/value head and a padding mask: the kernel reads each kv head for its group
    instead of transformers' copy per query head; same outputs and query gradients, key/value gradients
    summed over the group in another order."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class GroupedHeads(Heads):
        num_key_value_groups = 3

    torch.manual_seed(0)
    rows, kv_heads, queries, prompt, dim = 3, 2, 5, 4, 8
    mask = additive_mask(padded_causal_mask(rows, queries, prompt, pads=[0, 1, 3]))
    q = torch.randn(rows, 3 * kv_heads, queries, dim, requires_grad=True)
    k = torch.randn(rows, kv_heads, prompt + queries, dim, requires_grad=True)
    v = torch.randn(rows, kv_heads, prompt + queries, dim, requires_grad=True)
    out, _ = float32_sdpa_attention(GroupedHeads(), q, k, v, mask, scaling=dim**-0.5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected, _ = sdpa_attention_forward(GroupedHeads(), q, k, v, mask, scaling=dim**-0.5)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    assert torch.equal(out, expected)
    assert torch.equal(grads[0], expected_grads[0])
    for got, want in zip(grads[1:], expected_grads[1:]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the repeated path keeps 3x the key/value elements for its backward; the grouped one keeps k and v
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        float32_sdpa_attention(GroupedHeads(), q, k, v, mask, scaling=dim**-0.5)
    repeated = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: repeated.append(t.numel()) or t, lambda t: t):
        sdpa_attention_forward(GroupedHeads(), q, k, v, mask, scaling=dim**-0.5)
    assert sum(saved) < sum(repeated)
