"""The engine: what runs a model fast on token ids, knowing nothing of rewards or training.

Sampling traces (`sampling`, `decode_step`, `cpu_attention`), packing prompt + completion rows
and their token log-probabilities (`sequences`, `token_logprobs`), splicing reference answers
after traces (`rollouts`), think-then-answer generation (`generation`), evaluation rows that think,
answer or score in one decoding pass (`answer_rows`), gradient checkpointing, the CPU allocator
setting of entry points (`cpu_runtime`). Its switches travel as one `EngineOptions` value
(`options`). Imports nothing of nrt outside `nrt.engine` but the foundation's errors and config.
"""
