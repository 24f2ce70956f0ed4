"""Errors a user can act on. The CLI prints them as one line (no traceback) and exits 2."""


class MyriadError(RuntimeError):
    """Base of the project's user-facing errors."""


class ImageDecodeError(MyriadError):
    """An image could not be read; ``reason`` is a short machine-friendly cause."""

    def __init__(self, source: str, reason: str, detail: str = "") -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}" + (f" ({detail})" if detail else ""))


class BankError(MyriadError):
    """A memory bank is missing, corrupt, or incompatible with the current config."""


class DatasetError(MyriadError):
    """A dataset folder does not have the expected (MVTec AD) layout or has no usable images."""
