"""nrt: Native Reasoning Training on any Hugging Face causal LM.

    import nrt
    config = nrt.resolve_config(method="nrt", model="path/to/model", data="qa.jsonl", output_dir="runs/a",
                                overrides=["trainer.max_steps=200"])
    result = nrt.train(config)   # RunResult
    # before anything is written: ConfigError, RunDirectoryError, DataError, ModelLoadError;
    # a run that ends early: a RunEnded (CollapseStop, Diverged, StoppedBySignal, WriteFailed), with .result

The names are loaded on first use, so `import nrt` (and `nrt --help`) stays fast.
"""

__version__ = "0.1.0"

_API = {"train": "nrt.training.api", "resolve_config": "nrt.training.api", "RunResult": "nrt.training.api",
        "Config": "nrt.config", "NRTError": "nrt.errors", "ConfigError": "nrt.errors", "DataError": "nrt.errors",
        "ModelLoadError": "nrt.errors", "RunDirectoryError": "nrt.errors", "RunEnded": "nrt.errors",
        "CollapseStop": "nrt.errors", "Diverged": "nrt.errors", "StoppedBySignal": "nrt.errors",
        "WriteFailed": "nrt.errors"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'nrt' has no attribute {name!r}")
