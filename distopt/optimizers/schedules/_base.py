"""`LearningRateSchedule`, the base of every schedule."""

from __future__ import annotations


class LearningRateSchedule:
    """A serializable learning-rate schedule: `schedule(step)` returns the learning rate.

    Optimizers call it with their raw call counter (`optimizer._iterations`, pre-increment),
    so the first update uses `schedule(0)`.
    """

    def __call__(self, step):
        raise NotImplementedError(
            f"Learning rate schedule '{self.__class__.__name__}' must override "
            "`__call__(self, step)`."
        )

    def get_config(self):
        raise NotImplementedError(
            f"Learning rate schedule '{self.__class__.__name__}' must override `get_config()` "
            "in order to be serializable."
        )

    @classmethod
    def from_config(cls, config):
        return cls(**config)
