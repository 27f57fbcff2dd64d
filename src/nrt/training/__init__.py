"""The training loop and its parts: the library entry point `train(config)` (`api`), the NRT and
SFT trainers over one shared optimizer/update loop (`trainer`, `sft`, `base`), run directories
and checkpoints (`checkpoints`), metrics logging (`metrics`) and the collapse detector
(`collapse`). Imports the objective, the engine, config and data; never `nrt.commands`.
"""
