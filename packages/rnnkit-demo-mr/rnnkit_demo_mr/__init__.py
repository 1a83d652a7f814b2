"""The checkpoint ``rnnkit demo`` exports, as package data: the folder ``mr_small`` next to this file.

rnnkit finds it through this distribution's ``rnnkit.checkpoints`` entry point.
"""
