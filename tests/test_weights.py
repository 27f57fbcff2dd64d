"""The policy's weights as a plain checkpoint names them (nrt.engine.weights), LoRA merged aside: what an
inference engine with its own copy of the weights loads."""

import torch

from nrt.config import ModelConfig
from nrt.engine.weights import checkpoint_weights
from nrt.tiny import char_tokenizer, tiny_llama
from nrt.training.peft_model import wrap_lora


def test_a_plain_model_gives_its_state_dict_with_a_tied_matrix_once():
    model = tiny_llama(len(char_tokenizer()), hidden=32, layers=2)
    got = dict(checkpoint_weights(model, torch.bfloat16))
    state = model.state_dict()
    assert set(got) == set(state) - {"lm_head.weight"}  # tied to model.embed_tokens.weight
    for name, tensor in got.items():
        assert tensor.dtype == torch.bfloat16 and not tensor.requires_grad
        torch.testing.assert_close(tensor, state[name].to(torch.bfloat16))


def test_merged_lora_weights_reproduce_the_peft_model_and_leave_it_unmerged():
    tokenizer = char_tokenizer()
    rs = tokenizer.convert_tokens_to_ids("<|response_start|>")
    policy = wrap_lora(tiny_llama(len(tokenizer), hidden=32, layers=2, seed=1), ModelConfig(use_peft=True), [rs])
    with torch.no_grad():  # LoRA's B and the token rows start at their base values: give both a delta
        for name, p in policy.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                p.add_(torch.randn_like(p) * 0.2)
    before = {n: p.clone() for n, p in policy.named_parameters()}
    plain = tiny_llama(len(tokenizer), hidden=32, layers=2, seed=7)  # other weights, overwritten below
    result = plain.load_state_dict(dict(checkpoint_weights(policy)), strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == ["lm_head.weight"]  # tied
    ids = torch.tensor([[5, rs, 9, 12, 3, rs]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, policy(ids).logits, rtol=1e-5, atol=1e-5)
        # an independent merge: W + B @ A * alpha / r for one layer
        layer = policy.get_base_model().model.layers[0].self_attn.q_proj
        want = layer.base_layer.weight + layer.lora_B["default"].weight @ layer.lora_A["default"].weight * (32 / 16)
        torch.testing.assert_close(plain.model.layers[0].self_attn.q_proj.weight, want)
        torch.testing.assert_close(plain.model.embed_tokens.weight[rs],
                                   policy.get_base_model().model.embed_tokens.token_adapter
                                   .trainable_tokens_delta["default"][0])
    for name, p in policy.named_parameters():  # nothing merged in place
        assert torch.equal(p, before[name]), name
