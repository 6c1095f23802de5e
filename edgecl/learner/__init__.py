"""The on-device learner: samples in, background training, predictions, crash-safe state."""

from edgecl.learner.config import LearnerConfig, load_learner_config
from edgecl.learner.learner import Learner

__all__ = ["Learner", "LearnerConfig", "load_learner_config"]
