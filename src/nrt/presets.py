"""Method presets: NRT and the prior verifier-free methods as settings of one trainer.

`nrt train --method NAME` applies a preset first; a YAML file and `section.option=value`
overrides still change any of its options afterwards. Each preset is one function that
returns its options; its docstring says what it reproduces (NRT_SPEC section 8).
"""

from __future__ import annotations

from typing import Callable

PRESETS: dict[str, Callable[[], dict]] = {}

# What `nrt train` without --method, and resolve_config(method=None), start from: the setting with the
# highest validation accuracy over both gym testbeds in docs/METHODS.md ("Choosing the defaults").
# `--method nrt` is the paper's recipe, which Config()'s own field defaults also hold.
DEFAULT_PRESET = "nrt-marginal"


def register_preset(name: str):
    def decorator(fn: Callable[[], dict]) -> Callable[[], dict]:
        PRESETS[name] = fn
        return fn

    return decorator


@register_preset("nrt")
def nrt() -> dict:
    """NRT-WS(-log p), the paper's best: R = (1/T) sum_i c_i (-log c0_i), group mean/std
    advantages, CISPO clip 0.2/0.28, fixed token signal (NLL of y* after each trace)."""
    return {
        "method.objective": "nrt", "method.aggregation": "weighted_sum_log_prob", "method.advantage": "group_norm",
        "method.policy_loss": "cispo", "method.answer_loss": "fixed", "method.reward_baseline": "none",
        "method.format_reward_weight": 0.0, "method.std_filter_decay": 0.0,
        "trainer.epsilon_low": 0.2, "trainer.epsilon_high": 0.28,
    }


@register_preset("nrt-ws-inverse-prob")
def nrt_ws_inverse_prob() -> dict:
    """NRT-WS(1/p): R = (1/T) sum_i c_i / c0_i, otherwise as `nrt`."""
    return {**nrt(), "method.aggregation": "weighted_sum_inverse_prob"}


@register_preset("nrt-geometric-mean")
def nrt_geometric_mean() -> dict:
    """NRT-GM: R = (prod_i c_i)^(1/T), otherwise as `nrt`."""
    return {**nrt(), "method.aggregation": "geometric_mean"}


@register_preset("nrt-marginal")
def nrt_marginal() -> dict:
    """The latent-variable objective itself, log (1/K) sum_k p(y* | x, z_k): every trace, in the
    trace term and the answer term, weighted by K x its posterior share p(y*|x,z_k) / sum_j p(y*|x,z_j)
    (R = log p(y*|x,z), never negative); otherwise as `nrt`. Not a method of the paper."""
    return {**nrt(), "method.aggregation": "log_prob", "method.advantage": "posterior",
            "method.answer_loss": "posterior"}


@register_preset("jlb")
def jlb() -> dict:
    """JLB (and LaTRO / JEPO in their single-sample form): R = sum_i log c_i, leave-one-out
    baseline (RLOO), plain REINFORCE on the trace, plain NLL answer term."""
    return {
        **nrt(), "method.aggregation": "log_prob", "method.advantage": "rloo", "method.policy_loss": "reinforce",
        "method.answer_loss": "fixed",
    }


@register_preset("verifree")
def verifree() -> dict:
    """VeriFree: R = prod_i c_i (the whole answer's probability), RLOO advantage without std
    scaling, plain REINFORCE on the trace, answer term weighted by the reward R_k, no KL."""
    return {
        **nrt(), "method.aggregation": "prob", "method.advantage": "rloo", "method.policy_loss": "reinforce",
        "method.answer_loss": "reward",
    }


@register_preset("rlpr")
def rlpr() -> dict:
    """RLPR: R = mean_i c_i minus the initial policy's no-trace value, clipped at 0, mixed
    0.9 / 0.1 with a format reward; groups whose reward std is under an EMA threshold are
    filtered; GRPO advantages with a PPO clip of 0.2 / 0.27; no answer term."""
    return {
        **nrt(), "method.aggregation": "arithmetic_mean", "method.reward_baseline": "initial_no_trace",
        "method.reward_clip_min": 0.0, "method.format_reward_weight": 0.1, "method.std_filter_decay": 0.99,
        "method.policy_loss": "ppo", "trainer.epsilon_low": 0.2, "trainer.epsilon_high": 0.27,
        "method.answer_loss": "off",
    }


@register_preset("sft")
def sft() -> dict:
    """SFT, the paper's main baseline: fine-tune on question -> answer directly, no trace
    (NLL of `<|response_start|>` and the answer tokens after the prompt, mean over tokens)."""
    return {**nrt(), "method.objective": "sft"}


def preset_overrides(name: str) -> dict:
    if name not in PRESETS:
        import difflib

        hint = difflib.get_close_matches(name, PRESETS, n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"unknown method {name!r}{extra} (valid: {', '.join(PRESETS)})")
    return PRESETS[name]()
