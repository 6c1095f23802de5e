"""Finetune: train the whole network on each task in turn (the lower bound)."""

from __future__ import annotations

from edgecl.methods.base import ClassifierMethod


class Finetune(ClassifierMethod):
    name = "finetune"
