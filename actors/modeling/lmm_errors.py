"""User-facing errors of the Myriad LMM (bad inputs, bad checkpoints)."""

from actors.modeling.errors import MyriadError


class ModelInputError(MyriadError):
    """Images, maps or prompts the model cannot take (sizes, ranges, NaN, length, empty)."""


class CheckpointError(MyriadError):
    """A Myriad model directory is missing, corrupt or built with another config."""
