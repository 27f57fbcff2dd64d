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


class SFTTrainer(Trainer):
    def __init__(self, config, model, tokenizer, examples, accelerator=None, eval_set=None, engine=None):
        super().__init__(config, model, tokenizer, examples, accelerator, eval_set, engine)
        self.register_state([self.collapse, self.best, self.divergence])

    def train_step(self) -> dict:
        chunks = self.micro_batches(self.step)
        tick = time.perf_counter()
        answer_logprob = []

        def loss_of(j: int) -> SFTLoss:
            examples = [q.example for q in chunks[j]]
            batch, _, _ = no_trace_batch([e.prompt_ids for e in examples], [e.answer_ids for e in examples],
                                         self.response_start_id, self.pad_id, self.accelerator.device)
            logprobs, _ = completion_logprobs(self.model, batch, engine=self.engine)
            mask = batch.completion_mask
            answer_logprob.append((logprobs.detach() * mask)[:, 1:].sum(-1))  # column 0: <|response_start|>
            return SFTLoss(-(logprobs * mask).sum() / mask.sum())

        losses, update_stats = self.optimizer_updates(loss_of)
        self.step += 1
        return {
            "step": self.step,
            **self.update_metrics(losses, update_stats, ("loss",)),
            "answer_logprob_no_trace": float(self.accelerator.gather(torch.cat(answer_logprob)).mean()),
            "time_update": time.perf_counter() - tick,
        }
