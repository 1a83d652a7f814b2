"""The recurrent language model on the training side.

``RecurrentLM`` and its ``LMConfig`` live in ``rnnkit.export.nets`` / ``rnnkit.export.architecture``,
the one definition that training and export read; this module re-exports them under their old names.
"""

from __future__ import annotations

from rnnkit.export.architecture import LMConfig as LMConfig
from rnnkit.export.nets import RecurrentLM as RecurrentLM
from rnnkit.export.nets import State as State
