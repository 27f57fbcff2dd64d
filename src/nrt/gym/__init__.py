"""The reasoning gym: a small world in which NRT's premises hold.

- tasks.py: task generators and train / validation / test splits of plain Q&A pairs:
  `boolean_expressions` and `multistep_arithmetic_two` (BIG-Bench-Hard formats) and
  `multihop` (composed questions over world.py's people, parents and cities).
- corpus.py: pretraining documents: elementary skills over everything (facts, one-hop
  questions, single arithmetic operations and group reductions, short boolean rewrites),
  composed questions answered directly, and a minority of think-then-answer documents whose
  answers follow their traces.
- tokenizer.py: a small byte-level BPE (`PreTrainedTokenizerFast`) with `<|endoftext|>`
  (eos = pad) and `<|response_start|>`.
- pretrain.py: `pretrain(PretrainConfig(...))`: tokenizer + tiny Llama from scratch, on
  the gym corpus or a user's corpus, saved as a Hugging Face directory.
- probe.py: direct / forced-think / free accuracy, think share and reasoning gain.
- the command `nrt gym pretrain | data | probe` is in nrt/commands/gym.py.

Document contract with the trainer: "{question}\\n" + trace + "<|response_start|>" +
answer + "<|endoftext|>" (empty trace = direct answer); prompts are "{question}\\n".
"""

_EXPORTS = {"pretrain": "nrt.gym.pretrain", "PretrainConfig": "nrt.gym.pretrain",
            "task_items": "nrt.gym.tasks", "TASKS": "nrt.gym.tasks", "Item": "nrt.gym.tasks",
            "qa_document": "nrt.gym.corpus", "CorpusConfig": "nrt.gym.corpus"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):  # lazy, so `nrt --help` does not import torch
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
