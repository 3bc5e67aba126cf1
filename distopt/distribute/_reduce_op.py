"""`ReduceOp`, as `tf.distribute.ReduceOp`."""

import enum


class ReduceOp(enum.Enum):
    """How values from every replica combine: SUM, MEAN (sum / replicas), MIN or MAX."""

    SUM = "SUM"
    MEAN = "MEAN"
    MIN = "MIN"
    MAX = "MAX"

    @classmethod
    def from_any(cls, op) -> "ReduceOp":
        if isinstance(op, ReduceOp):
            return op
        if isinstance(op, str) and op.upper() in cls.__members__:
            return cls[op.upper()]
        raise ValueError(
            "Argument `op` must be a `distopt.distribute.ReduceOp` or one of 'SUM', 'MEAN', "
            f"'MIN', 'MAX'. Received: op={op!r}"
        )
