"""trainer.gradient_checkpointing: the same loss and gradients as without it, with and without LoRA;
the layers really are recomputed; the shared-prompt KV cache path steps aside under it."""

import pytest
import torch

from nrt.engine.cpu_attention import float32_attention
from nrt.engine.gradient_checkpointing import drops_cache
from nrt.engine.options import EngineOptions
from nrt.engine.sequences import completion_logprobs

from test_lora import ARCHS, model_dirs  # noqa: F401 (a fixture: tiny Llama, Mistral, Qwen2)
from test_trainer import grads_of, make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def loss_grads_and_layer_calls(trainer, rollout, chunk):
    """Loss, gradients, and how often the first decoder layer's MLP ran in the forward and in the backward."""
    inner = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    calls = []
    hook = inner.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        baseline = trainer.no_trace_logprobs(chunk)
        calls.clear()  # count only the update's forward and backward
        out, _ = trainer.micro_batch_loss(rollout, chunk, baseline, None)
        forward = len(calls)
        # as the trainer does: the checkpointed layers recompute with the forward's attention
        with float32_attention(trainer.model, enabled=trainer.engine.attention_in_float32):
            out.loss.backward()
    finally:
        hook.remove()
    return out.loss.detach(), grads_of(trainer.model), (forward, len(calls) - forward)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_checkpointing_gives_the_same_loss_and_gradients(model_dirs, sums_file, tmp_path, lora, arch):  # noqa: F811
    options = dict(model__use_peft=True, model__lora_r=4, model__lora_alpha=8) if lora else {}
    plain = make_trainer(model_dirs[arch], sums_file, tmp_path / "a", **options)
    checkpointed = make_trainer(model_dirs[arch], sums_file, tmp_path / "b", trainer__gradient_checkpointing=True,
                                **options)
    if lora:  # B = 0 at init: give A a gradient
        for trainer in (plain, checkpointed):
            torch.manual_seed(0)
            with torch.no_grad():
                for name, p in trainer.model.named_parameters():
                    if "lora_B" in name:
                        p.copy_(0.2 * torch.randn_like(p))
    chunk = plain.step_questions(0)[:2]
    rollout = plain.sample(chunk)
    assert rollout.batch.completion_ids.shape[1] > 1

    loss_a, grads_a, calls_a = loss_grads_and_layer_calls(plain, rollout, chunk)
    loss_b, grads_b, calls_b = loss_grads_and_layer_calls(checkpointed, rollout, chunk)
    # without: the prompt and the completion forward (shared KV cache), nothing in the backward;
    # with: one forward over whole rows, recomputed once in the backward
    assert calls_a == (2, 0) and calls_b == (1, 1), (calls_a, calls_b)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-7)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    if lora:
        assert all("lora_" in n or "trainable_tokens" in n for n in grads_a)
    # most gradients are non-zero (a run whose gradients vanished would compare equal trivially)
    assert sum(bool(g.abs().max() > 0) for g in grads_a.values()) > len(grads_a) // 2
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, msg=name)


def test_shared_prompt_cache_steps_aside_only_for_checkpointed_gradient_passes(tiny_model_dir, sums_file, tmp_path):
    trainer = make_trainer(tiny_model_dir, sums_file, tmp_path, trainer__gradient_checkpointing=True)
    assert drops_cache(trainer.model)
    with torch.no_grad():
        assert not drops_cache(trainer.model)  # sampling and scoring keep the cache
    rollout = trainer.sample(trainer.step_questions(0)[:2])
    with torch.no_grad():
        want, _ = completion_logprobs(trainer.model, rollout.batch, engine=EngineOptions(share_prompts=False))
    got, _ = completion_logprobs(trainer.model, rollout.batch)
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    # eval mode stays: dropout modules inside the checkpointed layers are off
    assert not any(m.training for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout))
    assert not trainer.model.training


def test_a_model_without_checkpointing_support_is_a_config_error():
    from nrt.config import ConfigError
    from nrt.engine.gradient_checkpointing import enable

    class Plain(torch.nn.Module):
        supports_gradient_checkpointing = False

    with pytest.raises(ConfigError, match="trainer.gradient_checkpointing: Plain does not support it"):
        enable(Plain())


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_checkpointing_under_bf16_autocast_recomputes_with_the_forward_attention(sums_file, tmp_path,
                                                                                  model_dirs):  # noqa: F811
    """On the CPU the update's forward runs attention in float32 (nrt.engine.cpu_attention); the backward
    recomputes checkpointed layers with that same attention (a bf16 recompute would not match the saved
    tensors: torch's CheckpointError). Whole steps with and without checkpointing agree to bf16 rounding."""
    plain = make_trainer(model_dirs["llama"], sums_file, tmp_path / "a", trainer__bf16=True)
    checkpointed = make_trainer(model_dirs["llama"], sums_file, tmp_path / "b", trainer__bf16=True,
                                trainer__gradient_checkpointing=True)
    a, b = plain.train_step(), checkpointed.train_step()
    for key in ("reward_mean", "answer_logprob", "loss", "grad_norm"):
        assert b[key] == pytest.approx(a[key], rel=2e-2, abs=1e-3), key
