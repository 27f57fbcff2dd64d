"""Measuring a model: think-then-answer accuracy and the reasoning gain (`evaluate`, the one
definition of both, used by `nrt eval`, validation during training and the gym's probe), and
tables and plots (`report`). Imports the engine and the foundation only.
"""
