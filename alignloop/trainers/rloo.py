"""RLOO (``alignloop rloo``): K answers per prompt, each with the mean reward of the other K−1 as its baseline,
no critic. It runs GRPO's loop (``trainers/grpo.py``), which takes leave-one-out advantages for an RLOO config.
"""

from __future__ import annotations

from pathlib import Path

from alignloop.trainers import grpo
from alignloop.trainers.config import RLOOConfig


def run(cfg: RLOOConfig) -> Path:
    return grpo.run(cfg)
