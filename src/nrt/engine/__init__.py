"""The engine: what runs a model fast on token ids, knowing nothing of rewards or training.

Sampling traces (`sampling`, `decode_step`, `cpu_attention`), packing prompt + completion rows
and their token log-probabilities (`sequences`, `token_logprobs`), splicing reference answers
after traces (`rollouts`), think-then-answer generation (`generation`). Its switches travel as
one `EngineOptions` value (`options`). Imports nothing of nrt outside `nrt.engine` and `nrt.tokens`.
"""
