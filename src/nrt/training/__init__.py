"""The training loop and its parts: the library entry point `train(config)` (`api`), the NRT and
SFT trainers over one shared optimizer/update loop (`trainer`, `sft`, `base`), the step's trace
statistics (`stats`), LoRA (`peft_model`), run directories and checkpoints (`checkpoints`,
`run_record`), the finite checks and the stop signal (`guards`), metrics logging (`metrics`) and
the collapse detector (`collapse`). Imports the foundation, the engine and evaluation (validation);
never `nrt.commands`.
"""
