"""Measuring a model: think-then-answer accuracy and the reasoning gain (`evaluate`, the one
definition of both, used by validation during training, `nrt compare` and the gym's probe; `one_pass`:
the same measurements in one decoding pass, used by `nrt eval`), the premise probe of any model
(`probe`, behind `nrt probe`), and tables and plots (`report`). Imports the engine and the foundation only.
"""
