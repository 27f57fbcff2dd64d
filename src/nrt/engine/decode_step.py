"""One decoding step as a single function of tensors, with the model's weights prepared once.

Decoding through `model(...)` runs about 300 small ops per token, each paying its dispatch
cost, and its cache grows by Python-side bookkeeping that torch.compile would specialise on
(a recompilation per cache length). `decode_step` computes the same logits from the model's
own modules for one new token per row: the prompt keys/values of each group are read once
for its K rows (`grouped_attention`), and each row's trace keys/values live in fixed buffers
written at a tensor index and read up to `length`, which dynamo treats as a symbolic size.
Compiled (`sample_traces(compile_step=True)`, `trainer.torch_compile`), one graph serves every
cache length from 3 and every batch of 2 rows or more; dynamo specialises sizes 0 and 1, so
lengths 1 and 2, and a batch down to a single row, compile graphs of their own.

The linear layers' weights are prepared once per sampling call (`decode_weights`). Under
autocast they are cast to its dtype there, as autocast casts them at every call, and the step
runs with autocast off: the same numbers. The cast q/k/v weights become one matrix, and so do
gate/up (fewer, larger matmuls; a product's columns do not depend on the columns beside them);
eagerly on a oneDNN CPU each matrix is also packed into oneDNN's blocked layout: at 64 rows a
matmul otherwise re-lays-out its weight on every call (merged and packed, one token's linear
layers of SmolLM2-135M ran 1.24x faster: docs/PERFORMANCE.md, `benchmarks/decode_linear.py`).
Without autocast the modules' own weights are used as they are.

Supported: transformers' own classes of `SUPPORTED_MODEL_TYPES` (pre-norm decoder layers, q/k/v/o
projections with optional biases, optional per-head q/k norms, rotary embeddings, full
attention), without forward hooks; `tests/test_speed_equivalence.py` checks that it samples
the same traces as the model's own forward.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def supports(model) -> bool:
    """True for transformers' own causal-LM class of a supported family, whose forward `decode_step`
    reproduces: not for wrappers that change it (a PEFT model, a patched `forward` other than
    accelerate's mixed-precision one), nor when forward hooks are registered, since
    `decode_step` calls the submodules, not the model."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return False
    if "forward" in vars(model):  # an instance-level forward: only accelerate's mixed-precision wrapper
        # (autocast, float32 outputs) around the class's own forward is accepted: decode_step runs
        # under the same autocast and returns float32 logits
        original = vars(model).get("_original_forward")
        if getattr(original, "__func__", None) is not type(model).forward:
            return False
    if type(model).__module__ != f"transformers.models.{model_type}.modeling_{model_type}":
        return False
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def grouped_attention(query, key, value, prefix_keys, prefix_values, prefix_mask, k: int, rows, scale: float):
    """Attention of one new token per row over its group's prompt and its own trace.

    query [B, Hq, 1, D]; key/value [B, Hkv, T, D]: the row's trace so far (this token included);
    prefix_keys/prefix_values [G, Hkv, P, D]: each group's prompt; prefix_mask [G, P] (False at
    left padding); k rows per group, group-major; rows [B]: the original row (g*k + j) of each
    row still decoding, or None when all G*k rows are, in order. Returns [B, Hq, 1, D] in the
    prefix dtype.

    The prompt part is one matmul per (group, kv head) over its K rows' queries; the trace part
    is per row; one softmax (in at least float32) over both: softmax([q.P^T, q.T^T] * scale) @ [P_v; T_v].
    """
    g, hkv, p, d = prefix_keys.shape
    b, hq = query.shape[0], query.shape[1]
    rep = hq // hkv
    q = query.to(prefix_keys.dtype).reshape(b, hkv, rep, d) * scale
    slots = q
    if rows is not None:  # rows that stopped leave a zero query in their group's slot
        slots = q.new_zeros((g * k, hkv, rep, d))
        slots[rows] = q
    slots = slots.view(g, k, hkv, rep, d).transpose(1, 2).reshape(g, hkv, k * rep, d)
    prompt_scores = torch.matmul(slots, prefix_keys.transpose(-1, -2))  # [G, Hkv, K*rep, P]
    prompt_scores = prompt_scores.masked_fill(~prefix_mask[:, None, None, :], float("-inf"))
    prompt_scores = prompt_scores.view(g, hkv, k, rep, p).transpose(1, 2).reshape(g * k, hkv, rep, p)
    if rows is not None:
        prompt_scores = prompt_scores[rows]
    trace_scores = torch.matmul(q, key.to(prefix_keys.dtype).transpose(-1, -2))  # [B, Hkv, rep, T]
    softmax_dtype = torch.promote_types(prompt_scores.dtype, torch.float32)  # float32, or float64 for float64
    probs = torch.cat([prompt_scores, trace_scores], dim=-1).to(softmax_dtype).softmax(-1).to(prefix_values.dtype)
    out = torch.matmul(probs[..., p:], value.to(prefix_values.dtype))  # [B, Hkv, rep, D]
    prompt_probs = probs[..., :p]
    if rows is not None:
        prompt_probs = probs.new_zeros((g * k, hkv, rep, p))
        prompt_probs[rows] = probs[..., :p]
    prompt_probs = prompt_probs.reshape(g, k, hkv, rep, p).transpose(1, 2).reshape(g, hkv, k * rep, p)
    prompt_out = torch.matmul(prompt_probs, prefix_values)  # [G, Hkv, K*rep, D]
    prompt_out = prompt_out.view(g, hkv, k, rep, d).transpose(1, 2).reshape(g * k, hkv, rep, d)
    out = out + (prompt_out if rows is None else prompt_out[rows])
    return out.reshape(b, hq, 1, d)


@dataclass(frozen=True)
class Linear:
    """A linear layer's weight [out, in] and bias as the decoding step applies them: in the weight's
    dtype (the input is cast to it, as autocast does), through oneDNN when `packed`."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    packed: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


Projection = Callable[[torch.Tensor], torch.Tensor]  # a model's own nn.Linear, or a prepared Linear


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer's projections: `qkv` and `gate_up` are one merged Linear or one per projection."""

    qkv: tuple[Projection, ...]
    qkv_sizes: tuple[int, int, int]
    o: Projection
    gate_up: tuple[Projection, ...]
    down: Projection


@dataclass(frozen=True)
class DecodeWeights:
    layers: tuple[LayerWeights, ...]
    head: Projection
    cast: bool  # prepared in autocast's dtype: the step runs with autocast off


def packing_supported() -> bool:
    """oneDNN's packed bfloat16 linear (`torch.ops.mkldnn._linear_pointwise`) is available on this CPU."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def decode_weights(model, prepare: bool = True, rows: int = 64) -> DecodeWeights:
    """The model's linear layers for `decode_step`, made once per sampling call.

    With `prepare` under CPU autocast (eager decoding): the weights cast to autocast's dtype (what
    autocast does at every call), q/k/v and gate/up concatenated, and under bfloat16 on a oneDNN
    CPU laid out for oneDNN for about `rows` rows. Otherwise (no autocast, or for torch.compile,
    which compiles the casts into its graph) the model's own modules, called as they are."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    layers = model.model.layers
    sizes = [(a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features)
             for a in (layer.self_attn for layer in layers)]
    if not prepare or dtype is None:
        return DecodeWeights(tuple(
            LayerWeights((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj), size,
                         layer.self_attn.o_proj, (layer.mlp.gate_proj, layer.mlp.up_proj), layer.mlp.down_proj)
            for layer, size in zip(layers, sizes)), model.lm_head, cast=False)
    pack = dtype == torch.bfloat16 and packing_supported()

    def linear(*modules) -> Linear:
        weight = torch.cat([m.weight.detach() for m in modules]).to(dtype)
        bias = None
        if any(m.bias is not None for m in modules):
            bias = torch.cat([m.weight.new_zeros(m.out_features) if m.bias is None else m.bias.detach()
                              for m in modules]).to(dtype)
        if pack:
            return Linear(torch.ops.mkldnn._reorder_linear_weight(weight, rows), bias, packed=True)
        return Linear(weight, bias)

    return DecodeWeights(tuple(
        LayerWeights((linear(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),), size,
                     linear(layer.self_attn.o_proj), (linear(layer.mlp.gate_proj, layer.mlp.up_proj),),
                     linear(layer.mlp.down_proj))
        for layer, size in zip(layers, sizes)), linear(model.lm_head), cast=True)


def _project(linears: tuple[Projection, ...], x: torch.Tensor, sizes) -> list[torch.Tensor]:
    """The outputs of several projections of x: one merged product split, or one product each."""
    if len(linears) == 1:
        return linears[0](x).split(sizes, dim=-1)
    return [linear(x) for linear in linears]


def decode_step(model, weights: DecodeWeights, tokens, positions, index, length: int, prefix_keys, prefix_values,
                prefix_mask, k: int, rows, keys, values):
    """Next-token logits [B, V] (float32) for tokens [B] at positions [B, 1].

    Writes this token's keys/values into keys[l]/values[l] [B, Hkv, capacity, D] at `index`
    (a one-element long tensor equal to length - 1) and attends over their first `length`
    positions and the group's prompt (`grouped_attention`). Same computation as the model's
    forward with `grouped_decode_attention`, layer by layer, the linear layers those of
    `weights` (`decode_weights`, made under the same autocast; cast ones run with autocast off).
    """
    body = model.model
    with torch.autocast(tokens.device.type, enabled=False) if weights.cast else contextlib.nullcontext():
        x = body.embed_tokens(tokens[:, None])  # [B, 1, hidden]
        cos, sin = body.rotary_emb(x, positions)
        for layer_index, (layer, w) in enumerate(zip(body.layers, weights.layers)):
            attention = layer.self_attn
            rotate = sys.modules[type(attention).__module__].apply_rotary_pos_emb
            hidden = layer.input_layernorm(x)
            shape = (tokens.shape[0], 1, -1, attention.head_dim)
            query, key, value = (p.view(shape) for p in _project(w.qkv, hidden, w.qkv_sizes))
            if hasattr(attention, "q_norm"):  # qwen3: per-head norms before the rotation
                query, key = attention.q_norm(query), attention.k_norm(key)
            query, key = rotate(query.transpose(1, 2), key.transpose(1, 2), cos, sin)
            value = value.transpose(1, 2)
            keys[layer_index].index_copy_(2, index, key.to(keys[layer_index].dtype))
            values[layer_index].index_copy_(2, index, value.to(values[layer_index].dtype))
            with torch.autocast(tokens.device.type, enabled=False):
                out = grouped_attention(
                    query, keys[layer_index].narrow(2, 0, length), values[layer_index].narrow(2, 0, length),
                    prefix_keys[layer_index], prefix_values[layer_index], prefix_mask, k, rows, attention.scaling,
                )
            out = out.to(query.dtype).transpose(1, 2).reshape(tokens.shape[0], 1, -1)
            x = x + w.o(out)
            mlp = layer.mlp
            gate, up = _project(w.gate_up, layer.post_attention_layernorm(x), (mlp.gate_proj.out_features,) * 2)
            x = x + w.down(mlp.act_fn(gate) * up)
        return weights.head(body.norm(x))[:, -1].float()


_compiled = None


def compiled_decode_step():
    """`decode_step` under torch.compile with symbolic sizes and no graph breaks (`fullgraph`: a
    break raises instead of running part of the step eagerly); compiled on first use."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(decode_step, dynamic=True, fullgraph=True)
    return _compiled
