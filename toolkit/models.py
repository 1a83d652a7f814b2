"""The recurrent text classifier on the training side.

``RecurrentClassifier`` (with ``AttentionPooling`` and the ``CELLS`` registry) and its
``ClassifierConfig`` live in ``rnnkit.export.nets`` / ``rnnkit.export.architecture``, the one
definition that training and export read; this module re-exports them under their old names.
"""

from __future__ import annotations

from rnnkit.export.architecture import POOLINGS as POOLINGS
from rnnkit.export.architecture import ClassifierConfig as ClassifierConfig
from rnnkit.export.nets import CELLS as CELLS
from rnnkit.export.nets import AttentionPooling as AttentionPooling
from rnnkit.export.nets import RecurrentClassifier as RecurrentClassifier
