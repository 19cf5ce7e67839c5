"""Supervised classification: cross-entropy on integer labels (task "supervised").

Batch {"image": [B, H, W, C], "label": [B]}; model `config.model_name` +
`config.model` kwargs returning (logits [B, K], out). predict -> {"logits"}.
"""
from __future__ import annotations

from jaxsup.tasks.base import register_task
from jaxsup.tasks.common import ImageClassifier


@register_task("supervised")
class Supervised(ImageClassifier):
    """Plain cross-entropy training of an image classifier (all of ImageClassifier)."""
