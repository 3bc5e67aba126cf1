"""The error a checkpoint raises for bad input: a missing, damaged or mismatched checkpoint."""


class CheckpointError(ValueError):
    """A checkpoint cannot be saved or restored as asked; nothing was changed.

    The message names what differs (file, tensor, variable, configuration key) and, for a
    collective call, the ranks that saw it.
    """
