"""The SFT baseline (the paper's main one): the answer directly after the question, no trace.

    loss = - mean over tokens of log pi(<|response_start|>, y* | x)

on the same question stream, optimizer, schedule, validation and checkpoints as NRT
(`nrt.training.base`), so the two differ in their objective only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from nrt.engine.rollouts import no_trace_batch
from nrt.engine.sequences import completion_logprobs
from nrt.training.base import Trainer


@dataclass
class SFTLoss:
    loss: torch.Tensor


def answer_only_loss(model, examples, response_start_id: int, pad_id: int, device, engine,
                     train_marker: bool = True) -> tuple[SFTLoss, torch.Tensor]:
    """The SFT loss of one micro-batch: (mean NLL of [<|response_start|>, y*, eos] right after the
    question, the detached answer log-likelihood per question [Q], summed over y* and eos).
    With `train_marker` False the marker is given but not trained: only [y*, eos] count."""
    batch, _, _ = no_trace_batch([e.prompt_ids for e in examples], [e.answer_ids for e in examples],
                                 response_start_id, pad_id, device)
    logprobs, _ = completion_logprobs(model, batch, engine=engine)
    mask = batch.completion_mask.clone()
    answer_logprob = (logprobs.detach() * mask)[:, 1:].sum(-1)  # column 0: <|response_start|>
    if not train_marker:
        mask[:, 0] = 0
    return SFTLoss(-(logprobs * mask).sum() / mask.sum()), answer_logprob


def sft_step(trainer: Trainer, train_marker: bool = True) -> dict:
    """One SFT step of `trainer` on its question stream: the SFT baseline, and NRT's format
    warm-up (`train_marker=False`: learning to emit the marker right after the question would
    be learning not to think)."""
    chunks = trainer.micro_batches(trainer.step)
    tick = time.perf_counter()
    answer_logprob = []

    def loss_of(j: int) -> SFTLoss:
        loss, logprob = answer_only_loss(trainer.model, [q.example for q in chunks[j]], trainer.response_start_id,
                                         trainer.pad_id, trainer.accelerator.device, trainer.engine, train_marker)
        answer_logprob.append(logprob)
        return loss

    losses, update_stats = trainer.optimizer_updates(loss_of)
    trainer.step += 1
    return {
        "step": trainer.step,
        **trainer.update_metrics(losses, update_stats, ("loss",)),
        "answer_logprob_no_trace": float(trainer.accelerator.gather(torch.cat(answer_logprob)).mean()),
        "time_update": time.perf_counter() - tick,
    }


class SFTTrainer(Trainer):
    def __init__(self, config, model, tokenizer, examples, accelerator=None, eval_set=None, engine=None,
                 command=None):
        super().__init__(config, model, tokenizer, examples, accelerator, eval_set, engine, command)
        self.register_state([self.collapse, self.best, self.divergence])

    def train_step(self) -> dict:
        return sft_step(self)
