"""nrt: Native Reasoning Training.

Teach a causal language model to think before it answers from question-answer pairs
alone: the model samples its own reasoning traces, each trace is rewarded by how likely
the model then finds the reference answer, and one loss trains the trace (RL) and the
answer (supervised). See README.md and docs/ for the method and its results.
"""

__version__ = "0.1.0"
