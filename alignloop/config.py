"""Moved: the config machinery is ``alignloop.core.config``; each stage's config lives in its package's
``config`` module. This name keeps the old ``alignloop.config.X`` imports working."""

from alignloop.core.config import *  # noqa: F401,F403
from alignloop.core.config import ConfigError, ModelOptions, StageConfig, opt  # noqa: F401
from alignloop.core.paths import alignloop_home  # noqa: F401
from alignloop.generation.config import GenerateConfig  # noqa: F401
from alignloop.pipelines.stages import COMMANDS  # noqa: F401
from alignloop.trainers.config import (  # noqa: F401
    DPOConfig,
    GRPOConfig,
    PPOConfig,
    RewardEvalConfig,
    RewardScoreConfig,
    RewardTrainConfig,
    RLOOConfig,
    RLOptions,
    SFTConfig,
    TrainOptions,
)
