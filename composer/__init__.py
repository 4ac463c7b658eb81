"""Multi-objective proxy-tuning: s_base + sum_k w_k(t) * (s_expert_k - s_anti_k) at every decoding step."""

from composer.decoding import DecodingConfig
from composer.engine import Completion, Composer
from composer.objectives import Member, Objective
from composer.schedules import Constant, Cosine, Linear, Piecewise, Warmup
from composer.scoring import ContinuationScore
from composer.speculative import Draft
from composer.trace import TokenTrace
from experts.errors import UserInputError
from experts.loading import ModelSpec
from experts.prompts import Chat, Raw, Template

__all__ = [
    "Chat",
    "Completion",
    "Composer",
    "Constant",
    "ContinuationScore",
    "Cosine",
    "DecodingConfig",
    "Draft",
    "Linear",
    "Member",
    "ModelSpec",
    "Objective",
    "Piecewise",
    "Raw",
    "Template",
    "TokenTrace",
    "UserInputError",
    "Warmup",
]
