"""Faster is not different: every speed optimisation gives the same numbers as the plain computation.

Stated tolerances (docs/PERFORMANCE.md):
- float32, each optimisation on vs off: log-probabilities, entropies and gradients equal up to
  float rounding (rtol 1e-5 / atol 1e-6 on values; rtol 1e-4 on gradients); sampled traces
  identical; rewards of whole training steps with the same seed within 1e-5 (relative).
- bfloat16 autocast vs float32 on the same traces: per-trace rewards within 1% (relative),
  answer log-likelihoods and the loss within 0.1%.

Tiny random Llamas built from a config; no download.
"""

import contextlib

import pytest
import torch

from nrt.engine.options import PLAIN, EngineOptions
from nrt.experiments.bench import build_trainer, synthetic_examples
from nrt.engine.sampling import sample_traces
from nrt.engine.sequences import completion_logprobs, pack
from nrt.tiny import tiny_llama
from nrt.engine.token_logprobs import token_logprobs

SWITCHES = ["fused_logprobs", "fuse_head", "share_prompts", "attention_in_float32"]


pytestmark = pytest.mark.usefixtures("one_thread")


def lively(model, std, seed=0):
    """Larger weights than the default init, so logits and attention are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def grouped_batch():
    """3 groups of 3 rows: prompts of different lengths (left padding), completions of different
    lengths (right padding), one completion of a single token."""
    prompts = [[3, 4, 5]] * 3 + [[6, 7]] * 3 + [[8, 9, 10, 11]] * 3
    completions = [[12, 13, 14, 15], [16], [17, 18], [19, 20, 21], [22, 2], [23, 24, 25, 26, 27],
                   [28, 29], [30, 31], [32, 33, 34]]
    return pack(prompts, completions, pad_id=0)


def logprobs_and_grads(model, batch, weights, **switches):
    model.zero_grad(set_to_none=True)
    lp, entropy = completion_logprobs(model, batch, with_entropy=True, engine=EngineOptions(**switches))
    (lp * weights).sum().backward()
    return lp.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("switch", SWITCHES)
def test_completion_logprobs_each_optimisation_off_gives_the_same_values_and_gradients(switch, autocast):
    model = lively(tiny_llama(64, hidden=32, layers=2, seed=0), std=0.3)
    batch = grouped_batch()
    weights = torch.randn(batch.completion_ids.shape, generator=torch.Generator().manual_seed(1))
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    with ctx():
        on = logprobs_and_grads(model, batch, weights)
    with ctx():
        off = logprobs_and_grads(model, batch, weights, **{switch: False})
    mask = batch.completion_mask
    assert (on[0][~mask] == 0).all() and (on[0][mask] < 0).all()
    # bf16: the plain path rounds differently (e.g. bf16 logits vs chunked float32); same order as autocast's own error
    rtol, atol = (1e-5, 1e-6) if not autocast else (2e-2, 2e-2)
    torch.testing.assert_close(on[0], off[0], rtol=rtol, atol=atol)
    torch.testing.assert_close(on[1], off[1], rtol=rtol, atol=atol)
    for name, grad in off[2].items():
        scale = grad.abs().max().item()
        assert (on[2][name] - grad).abs().max().item() <= (1e-4 if not autocast else 5e-2) * scale + 1e-7, name


def test_shared_prompt_forward_is_really_taken():
    from nrt.engine.sequences import prompt_groups

    batch = grouped_batch()
    assert prompt_groups(batch).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    unique = pack([[3, 4], [5, 6]], [[7], [8]], pad_id=0)
    assert prompt_groups(unique) is None


def test_token_logprobs_matches_autograd_log_softmax_in_float64():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(70, 33, generator=g, dtype=torch.float64) * 3).requires_grad_()
    targets = torch.randint(0, 33, (70,), generator=g)
    weights = torch.randn(70, generator=g, dtype=torch.float64)
    lp, entropy = token_logprobs(logits, targets, with_entropy=True)
    (lp * weights).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    reference = logits.log_softmax(-1)
    ref_lp = reference.gather(1, targets[:, None]).squeeze(1)
    (ref_lp * weights).sum().backward()
    torch.testing.assert_close(lp, ref_lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(entropy, -(reference.exp() * reference).sum(-1).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, logits.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("switch", ["preallocate_cache", "attention_in_float32", "share_prompt_cache", "lean_step"])
def test_sample_traces_each_optimisation_off_gives_the_same_traces(switch):
    model = lively(tiny_llama(64, hidden=32, layers=2, seed=1).double(), std=0.4).eval()
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11, 12]]
    args = dict(num_generations=4, max_new_tokens=12, stop_token_ids=[1, 2], pad_token_id=0, seeds=[5, 6, 7])
    on = sample_traces(model, prompts, **args)
    off = sample_traces(model, prompts, **args, engine=EngineOptions(**{switch: False}))
    assert on == off
    lengths = {len(t) for t in on}
    assert len(lengths) > 1  # some rows stopped early: the dropped-row path ran


def test_sample_traces_in_bf16_with_the_float32_cache_matches_transformers_cache():
    model = lively(tiny_llama(64, hidden=32, layers=2, seed=1), std=0.4).eval()
    prompts = [[3, 4, 5], [6, 7]]
    args = dict(num_generations=3, max_new_tokens=10, stop_token_ids=[1], pad_token_id=0, seeds=[5, 6],
                temperature=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        on = sample_traces(model, prompts, **args)
        off = sample_traces(model, prompts, **args, engine=PLAIN)
    same = sum(a == b for x, y in zip(on, off) for a, b in zip(x, y))
    agree = same / sum(min(len(x), len(y)) for x, y in zip(on, off))
    assert agree >= 0.9  # greedy bf16 decoding: float32 attention may flip a near-tie, rarely


def test_fixed_length_makes_every_trace_full_length():
    model = lively(tiny_llama(64, hidden=32, layers=2, seed=1), std=0.4).eval()
    args = dict(num_generations=4, max_new_tokens=9, stop_token_ids=list(range(40)), pad_token_id=0, seeds=[1, 2])
    free = sample_traces(model, [[3, 4], [5]], **args)
    fixed = sample_traces(model, [[3, 4], [5]], **args, engine=EngineOptions(fixed_length=True))
    assert any(len(t) < 9 for t in free)
    assert all(len(t) == 9 and not set(t) & set(range(40)) for t in fixed)


# --------------------------------------------------------------------------- whole steps
def bench_args(**kw):
    from argparse import Namespace

    args = dict(hidden=64, layers=2, vocab=256, prompts=4, micro_prompts=0, generations=4, think=10,
                prompt_tokens=6, answer_tokens=4, steps=2, warmup=0, seed=3, fixed_length=False,
                dtype="float32", threads=0, trace_rss=False, compile=False)
    args.update(kw)
    return Namespace(**args)


@pytest.mark.parametrize("micro_prompts", [0, 2], ids=["one-micro-batch", "two-micro-batches"])
def test_same_seed_same_rewards_with_and_without_the_optimisations(micro_prompts):
    fast, _, _ = build_trainer(bench_args(micro_prompts=micro_prompts))
    slow, _, _ = build_trainer(bench_args(micro_prompts=micro_prompts), **vars(PLAIN))
    assert slow.engine == PLAIN
    for _ in range(2):  # the second step runs on updated weights
        a = fast.train_step()
        b = slow.train_step()
        for key in ("reward_mean", "reward_std", "answer_logprob", "answer_logprob_no_trace", "trace_length_mean",
                    "loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert a["trace_length_mean"] < 10  # traces stopped early: variable lengths and padding were exercised


def test_a_step_sampled_at_once_gives_each_micro_batch_the_traces_it_gets_alone():
    at_once, _, _ = build_trainer(bench_args(micro_prompts=2))
    alone, _, _ = build_trainer(bench_args(micro_prompts=2), sample_step_at_once=False)
    chunks = at_once.micro_batches(0)
    assert len(chunks) == 2
    for a, b in zip(at_once.sample_micro_batches(chunks), alone.sample_micro_batches(chunks)):
        for name, value in vars(a.batch).items():
            assert torch.equal(value, getattr(b.batch, name)), name
        assert torch.equal(a.trace_mask, b.trace_mask) and torch.equal(a.answer_start, b.answer_start)
    assert len({tuple(r.batch.completion_ids.flatten().tolist()) for r in at_once.sample_micro_batches(chunks)}) == 2


def assert_within_bf16_tolerance(out, scored, ref_out, ref_scored):
    """The stated bf16 tolerances of `micro_batch_loss` results against a reference on the same
    traces: per-trace rewards within 1%, answer log-likelihoods and the loss within 0.1%; and
    the answer log-likelihoods not equal (the arithmetic under test really differed)."""
    r, ref_r = scored.stats.reward, ref_scored.stats.reward
    a, ref_a = scored.stats.answer_logprob, ref_scored.stats.answer_logprob
    assert ((r - ref_r).abs() / ref_r.abs()).max() <= 1e-2
    assert ((a - ref_a).abs() / ref_a.abs()).max() <= 1e-3
    assert abs(out.loss.item() - ref_out.loss.item()) <= 1e-3 * abs(ref_out.loss.item())
    assert not torch.equal(a, ref_a)


def test_bf16_autocast_rewards_and_loss_within_tolerance_of_float32():
    trainer, _, _ = build_trainer(bench_args(think=16))
    lively(trainer.model, std=0.05)
    chunk = trainer.micro_batches(0)[0]
    rollout = trainer.sample(chunk)  # the same traces for both precisions
    base = trainer.no_trace_logprobs(chunk)
    out32, scored32 = trainer.micro_batch_loss(rollout, chunk, base, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        base16 = trainer.no_trace_logprobs(chunk)
        out16, scored16 = trainer.micro_batch_loss(rollout, chunk, base16, None)
    assert_within_bf16_tolerance(out16, scored16, out32, scored32)  # and autocast really changed the arithmetic


def test_synthetic_examples_are_reproducible():
    a = synthetic_examples(3, 5, 4, 100, seed=1)
    b = synthetic_examples(3, 5, 4, 100, seed=1)
    assert [x.prompt_ids for x in a] == [x.prompt_ids for x in b] and all(x.answer_ids[-1] == 1 for x in a)


@pytest.mark.parametrize("bias", [False, True])
def test_chunked_output_layer_under_autocast_equals_a_cast_per_chunk_and_keeps_one_weight_copy(bias, monkeypatch):
    """bf16 autocast: the output layer's cast weight is made once for all chunks, with the values
    and gradients of autocast casting it anew for each chunk, and one copy saved for the backward."""
    import nrt.engine.token_logprobs as tl

    monkeypatch.setattr(tl, "HEAD_CHUNK_BYTES", 2 * 300 * 7)  # 7 rows per chunk: 8 chunks
    monkeypatch.setattr(tl, "MAX_HEAD_CHUNKS", 8)
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 300, bias=bias)
    rows0, targets = torch.randn(50, 32), torch.randint(0, 300, (50,))
    state = {"head": head, "autocast": {"device_type": "cpu", "enabled": True, "dtype": torch.bfloat16}}

    def run(fn):
        head.zero_grad()
        rows = rows0.clone().requires_grad_()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            lp, _ = fn(rows)
        (lp * torch.arange(50)).sum().backward()
        copies = {t.data_ptr() for t in saved if t.numel() == head.weight.numel() and t.dtype == torch.bfloat16}
        grads = [rows.grad, head.weight.grad] + ([head.bias.grad] if bias else [])
        return lp, grads, len(copies)

    def cast_per_chunk(rows):
        lps = []
        for i in range(0, 50, 7):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = torch.nn.functional.linear(rows[i : i + 7], head.weight, head.bias)
            lps.append(tl.token_logprobs(logits, targets[i : i + 7])[0])
        return torch.cat(lps), None

    lp, grads, copies = run(lambda rows: tl.head_token_logprobs(rows, targets, state, False))
    lp_ref, grads_ref, copies_ref = run(cast_per_chunk)
    assert torch.equal(lp, lp_ref) and all(torch.equal(a, b) for a, b in zip(grads, grads_ref))
    assert copies == 1 and copies_ref == 8


def test_chunks_are_sized_by_device_type():
    from nrt.engine.token_logprobs import CHUNK_BYTES, DEVICE_CHUNK_BYTES, chunk_rows

    vocab_row = 4 * 128_256  # one float32 row of a 128k vocabulary
    assert chunk_rows(vocab_row, torch.device("cpu"), CHUNK_BYTES, DEVICE_CHUNK_BYTES) == 4
    assert chunk_rows(vocab_row, torch.device("cuda"), CHUNK_BYTES, DEVICE_CHUNK_BYTES) == 523
    assert chunk_rows(10**12, torch.device("cpu"), CHUNK_BYTES, DEVICE_CHUNK_BYTES) == 1  # never 0


def test_output_layer_chunks_are_the_byte_budget_but_never_more_than_four():
    from nrt.engine.token_logprobs import head_chunk_rows

    cpu = torch.device("cpu")
    assert head_chunk_rows(100, 8192, cpu) == 1024  # 16 MB of bf16 logits: one chunk of 100 rows
    assert head_chunk_rows(8320, 8192, cpu) == 2080  # 8.1 chunks at the budget -> 4
    assert head_chunk_rows(2320, 49153, cpu) == 580  # SmolLM2: 170 rows at the budget, 14 chunks -> 4
    assert head_chunk_rows(0, 49153, cpu) == 170


# --------------------------------------------------------------------------- the lean and the compiled decoding step
def tiny_family(model_type: str, seed: int = 0):
    """A float64 model of each family `nrt.engine.decode_step` supports: GQA (4 query heads, 2 kv heads),
    qwen2's q/k/v biases and qwen3's per-head q/k norms included."""
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {"sliding_window": None} if model_type == "mistral" else {}
    config = AutoConfig.for_model(
        model_type, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=1, pad_token_id=0, **extra,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 or name.endswith("bias"):
                p.normal_(0, 0.4)
    return model.eval()


FAMILY_ARGS = dict(num_generations=4, max_new_tokens=12, stop_token_ids=[1, 2, 9, 17], pad_token_id=0,
                   seeds=[5, 6, 7])
FAMILY_PROMPTS = [[3, 4, 5], [6, 7], [8, 9, 10, 11, 12]]


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
def test_decode_step_samples_what_the_models_own_forward_samples(model_type):
    from nrt.engine.decode_step import supports
    from nrt.engine.sampling import _grouped_decoding_supported

    model = tiny_family(model_type)
    assert _grouped_decoding_supported(model) and supports(model)  # the lean step is really taken
    lean = sample_traces(model, FAMILY_PROMPTS, **FAMILY_ARGS, engine=EngineOptions(lean_step=True))
    forward = sample_traces(model, FAMILY_PROMPTS, **FAMILY_ARGS, engine=EngineOptions(lean_step=False))
    assert lean == forward
    assert len({len(t) for t in lean}) > 2  # rows stopped at different steps: the dropped-row path ran


def test_decode_step_under_bf16_autocast_samples_what_the_forward_samples():
    model = lively(tiny_llama(64, hidden=32, layers=2, seed=1), std=0.4).eval()
    args = dict(FAMILY_ARGS, max_new_tokens=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lean = sample_traces(model, FAMILY_PROMPTS, **args, engine=EngineOptions(lean_step=True))
        forward = sample_traces(model, FAMILY_PROMPTS, **args, engine=EngineOptions(lean_step=False))
    assert lean == forward
    assert len({len(t) for t in lean}) > 2


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
def test_prepared_decoding_under_bf16_autocast_samples_what_the_forward_samples(model_type):
    """Each family's float32 model under bf16 autocast: the step over prepared (cast, merged, packed) weights
    samples the forward's traces token for token (qwen2's biases, qwen3's q/k norms on the merged product)."""
    model = tiny_family(model_type).float()
    args = dict(FAMILY_ARGS, max_new_tokens=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lean = sample_traces(model, FAMILY_PROMPTS, **args, engine=EngineOptions(lean_step=True))
        forward = sample_traces(model, FAMILY_PROMPTS, **args, engine=EngineOptions(lean_step=False))
    assert lean == forward
    assert len({len(t) for t in lean}) > 2


def test_decode_step_is_not_used_where_it_would_skip_a_hook():
    from nrt.engine.decode_step import supports

    model = tiny_family("llama")
    assert supports(model)
    handle = model.model.layers[1].register_forward_hook(lambda module, args, out: out)
    assert not supports(model)
    handle.remove()
    model.forward = model.forward  # an instance-level forward (a patch) is not the class's
    assert not supports(model)


def test_decode_step_is_used_under_accelerates_mixed_precision_wrapper():
    from nrt.engine.decode_step import supports

    from accelerate.state import AcceleratorState

    # accelerate's state is a process-wide singleton set by earlier tests (mixed_precision="no")
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        trainer, _, _ = build_trainer(bench_args(dtype="bfloat16"))
        policy = trainer.accelerator.unwrap_model(trainer.model)
        assert "forward" in vars(policy)  # accelerate wrapped the forward in autocast
        assert supports(policy)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def compiled_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_compiled_decoding_gives_the_same_traces_in_float64(model_type):
    model = tiny_family(model_type, seed=1)
    eager = sample_traces(model, FAMILY_PROMPTS, **FAMILY_ARGS)
    torch._dynamo.reset()
    before = compiled_graphs()
    compiled = sample_traces(model, FAMILY_PROMPTS, **FAMILY_ARGS, engine=EngineOptions(compile_step=True))
    assert compiled_graphs() > before  # it really compiled (fullgraph: a graph break would raise)
    assert compiled == eager
    assert len({len(t) for t in eager}) > 2


def test_compile_step_warns_where_the_model_decodes_through_its_forward():
    model = tiny_family("llama")
    model.model.layers[0].register_forward_hook(lambda module, args, out: out)
    with pytest.warns(UserWarning, match="decodes through its forward, uncompiled"):
        traces = sample_traces(model, FAMILY_PROMPTS, **FAMILY_ARGS, engine=EngineOptions(compile_step=True))
    assert traces == sample_traces(model, FAMILY_PROMPTS, **FAMILY_ARGS, engine=EngineOptions(lean_step=False))


def test_compiled_decoding_logits_within_float32_rounding():
    from nrt.engine.decode_step import compiled_decode_step, decode_step, decode_weights

    model = tiny_family("qwen2", seed=2).float()
    g = torch.Generator().manual_seed(0)
    b, hkv, d, groups, prompt, capacity = 6, 2, 8, 3, 4, 5
    prefix_keys = [torch.randn(groups, hkv, prompt, d, generator=g) for _ in range(2)]
    prefix_values = [torch.randn(groups, hkv, prompt, d, generator=g) for _ in range(2)]
    mask = torch.tensor([[True] * 4, [False, True, True, True], [False, False, True, True]])
    rows = torch.tensor([0, 1, 2, 3, 5, 4])  # 2 rows per group, one group's rows swapped
    outputs = []
    initial = torch.randn(b, hkv, capacity, d, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    before = compiled_graphs()
    for step in (decode_step, compiled_decode_step()):
        keys = [initial.clone() for _ in range(2)]
        values = [torch.randn(b, hkv, capacity, d, generator=torch.Generator().manual_seed(2)) for _ in range(2)]
        tokens, positions = torch.arange(3, 3 + b), torch.full((b, 1), 7)
        outputs.append(step(model, decode_weights(model), tokens, positions, torch.tensor([2]), 3, prefix_keys,
                            prefix_values, mask, 2, rows, keys, values))
        outputs.append(torch.stack(keys))
    assert compiled_graphs() > before
    torch.testing.assert_close(outputs[2], outputs[0], rtol=1e-5, atol=1e-5)  # logits
    torch.testing.assert_close(outputs[3], outputs[1], rtol=1e-5, atol=1e-6)  # the cache column written
    for layer in range(2):  # column 2 (index 2) written, the others untouched
        assert not torch.equal(outputs[1][layer][:, :, 2], initial[:, :, 2])
        assert torch.equal(outputs[1][layer][:, :, [0, 1, 3, 4]], initial[:, :, [0, 1, 3, 4]])


def test_torch_compile_training_steps_match_eager_in_float32():
    eager, _, _ = build_trainer(bench_args())
    compiled, _, _ = build_trainer(bench_args(compile=True))
    for _ in range(2):
        a, b = eager.train_step(), compiled.train_step()
        for key in ("reward_mean", "reward_std", "answer_logprob", "answer_logprob_no_trace", "trace_length_mean",
                    "loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
    inner = compiled.accelerator.unwrap_model(compiled.model)
    assert all(layer._compiled_call_impl is not None for layer in inner.model.layers)


def test_torch_compile_rewards_and_loss_under_bf16_within_tolerance_of_eager():
    trainer, _, _ = build_trainer(bench_args(think=16, compile=True))
    lively(trainer.model, std=0.05)
    chunk = trainer.micro_batches(0)[0]
    rollout = trainer.sample(chunk)  # the same traces for both
    with torch.autocast("cpu", dtype=torch.bfloat16):
        base = trainer.no_trace_logprobs(chunk)
        out, scored = trainer.micro_batch_loss(rollout, chunk, base, None)
        with torch.compiler.set_stance("force_eager"):
            base_eager = trainer.no_trace_logprobs(chunk)
            out_eager, scored_eager = trainer.micro_batch_loss(rollout, chunk, base_eager, None)
    assert_within_bf16_tolerance(out, scored, out_eager, scored_eager)  # and the compiled kernels really ran


def test_torch_compile_needs_decoder_layers():
    from nrt.training.base import compile_decoder_layers

    with pytest.raises(ValueError, match="trainer.torch_compile: no decoder layers found in Linear"):
        compile_decoder_layers(torch.nn.Linear(2, 2))


def test_grouped_attention_with_all_rows_equals_indexed_rows_and_plain_attention():
    from nrt.engine.decode_step import grouped_attention

    g = torch.Generator().manual_seed(3)
    groups, k, hq, hkv, p, t, d = 3, 2, 4, 2, 5, 4, 8
    b = groups * k
    query = torch.randn(b, hq, 1, d, generator=g, dtype=torch.float64)
    key, value = (torch.randn(b, hkv, t, d, generator=g, dtype=torch.float64) for _ in range(2))
    prefix_keys, prefix_values = (torch.randn(groups, hkv, p, d, generator=g, dtype=torch.float64) for _ in range(2))
    prefix_mask = torch.ones(groups, p, dtype=torch.bool)
    prefix_mask[1, :2] = False  # left padding in group 1
    every = grouped_attention(query, key, value, prefix_keys, prefix_values, prefix_mask, k, None, 0.3)
    indexed = grouped_attention(query, key, value, prefix_keys, prefix_values, prefix_mask, k, torch.arange(b), 0.3)
    assert torch.equal(every, indexed)
    # plain attention: each row's group prompt (padding masked) then its own trace, query heads sharing kv heads
    group = torch.arange(b) // k
    keys = torch.cat([prefix_keys[group], key], 2).repeat_interleave(hq // hkv, 1)
    values = torch.cat([prefix_values[group], value], 2).repeat_interleave(hq // hkv, 1)
    scores = (query @ keys.transpose(-1, -2)) * 0.3
    allowed = torch.cat([prefix_mask[group], torch.ones(b, t, dtype=torch.bool)], 1)[:, None, None, :]
    expected = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ values
    torch.testing.assert_close(every, expected, rtol=1e-12, atol=1e-12)
    # a subset of rows (row 3 stopped) gives each remaining row the same result
    rows = torch.tensor([0, 1, 2, 4, 5])
    subset = grouped_attention(query[rows], key[rows], value[rows], prefix_keys, prefix_values, prefix_mask, k, rows,
                               0.3)
    torch.testing.assert_close(subset, expected[rows], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_prepared_decode_weights_give_what_autocast_gives_the_models_linears(model_type):
    """Cast once, merged and (on a oneDNN CPU) packed: each projection's output equals the module's own
    under bf16 autocast, bit for bit (qwen2: with q/k/v biases)."""
    from nrt.engine.decode_step import decode_weights, packing_supported

    model = tiny_family(model_type).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weights = decode_weights(model, rows=6)
        assert weights.cast and not decode_weights(model, prepare=False).cast
        assert (weights.head.packed) == packing_supported()
        for rows in (1, 6, 13):
            x = torch.randn(rows, 1, 32, generator=torch.Generator().manual_seed(rows))
            for layer, w in zip(model.model.layers, weights.layers):
                a, mlp = layer.self_attn, layer.mlp
                (qkv,), (gate_up,) = w.qkv, w.gate_up
                assert len(qkv(x).split(w.qkv_sizes, -1)) == 3
                for got, module in zip(qkv(x).split(w.qkv_sizes, -1), (a.q_proj, a.k_proj, a.v_proj)):
                    assert torch.equal(got, module(x))
                for got, module in zip(gate_up(x).split(64, -1), (mlp.gate_proj, mlp.up_proj)):
                    assert torch.equal(got, module(x))
                assert torch.equal(w.o(x), a.o_proj(x))
                assert torch.equal(w.down(torch.cat([x, x], -1)), mlp.down_proj(torch.cat([x, x], -1)))
            assert torch.equal(weights.head(x), model.lm_head(x))
            assert weights.head(x).dtype == torch.bfloat16
    assert not decode_weights(model).cast  # no autocast: the modules themselves
