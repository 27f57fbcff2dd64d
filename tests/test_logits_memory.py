"""No [sequences, length, vocabulary] tensor anywhere in an NRT step.

A dispatch mode sees every tensor an aten op produces during `train_step()` (sampling, the
no-trace baseline, the update's forward and backward, the optimizer step) and records the
largest. With the fused output layer (the default) it stays below B * C * V, B rows of C
completion tokens over a vocabulary of V; with the output layer and log-softmax unfused (the
plain path) the full logits appear, so the check can fail.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from nrt.engine.options import EngineOptions
from nrt.experiments.bench import build_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS, K, THINK, ANSWER, VOCAB = 2, 2, 200, 4, 32768


class LargestTensor(TorchDispatchMode):
    """Records the largest numel of any tensor an op returns, and the names of the ops run."""

    def __init__(self):
        super().__init__()
        self.largest, self.ops = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(func.overloadpacket.__name__)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def step_largest_tensor(**switches) -> int:
    from argparse import Namespace

    # a vocabulary large enough that one chunk of the output layer (HEAD_CHUNK_BYTES) is fewer rows than B * C
    args = Namespace(model=None, config_only=False, hidden=64, layers=1, vocab=VOCAB, prompts=PROMPTS,
                     micro_prompts=0, generations=K, think=THINK, prompt_tokens=6, answer_tokens=ANSWER, steps=1,
                     warmup=0, seed=0, fixed_length=True, dtype="float32", threads=0, trace_rss=False, compile=False)
    trainer, _, _ = build_trainer(args, **switches)
    with LargestTensor() as seen:
        metrics = trainer.train_step()
    assert metrics["trace_length_mean"] == THINK
    assert {"embedding_dense_backward", "mm"} <= seen.ops  # the backward ran under the mode too
    return seen.largest


def test_a_step_holds_no_full_logits_tensor_and_the_unfused_path_would():
    full = PROMPTS * K * (THINK + 1 + ANSWER) * VOCAB  # B rows x C completion tokens x V
    fused = step_largest_tensor()
    assert fused < full / 2
    plain = step_largest_tensor(**vars(EngineOptions(fuse_head=False, fused_logprobs=False)))
    assert plain >= full
