"""AdamW, as `keras.optimizers.AdamW`: Adam plus the base class's decoupled weight decay."""

from __future__ import annotations

from distopt.optimizers._hyperparameters import check_float
from distopt.optimizers.adam import Adam


class AdamW(Adam):
    """Adam with decoupled weight decay (`w -= w * weight_decay * lr` before each Adam step),
    `weight_decay=0.004` by default. The update itself is Adam's."""

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.004,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        **kwargs,
    ):
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: weight_decay=None")
        check_float("weight_decay", weight_decay)
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            weight_decay=weight_decay,
            **kwargs,
        )
