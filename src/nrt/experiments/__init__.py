"""Whole runs put side by side: several methods x seeds trained and evaluated on the same data and
reported together (`compare`, behind `nrt compare` and `nrt demo`), and the timed NRT step
workload behind `nrt bench` (`bench`). Imports training, evaluation, the engine and the objective.
"""
