"""Exceptions raised by fastconv."""


class BackendUnavailableError(RuntimeError):
    """A backend was asked for (or chosen by array type) that cannot run here.

    The message says what is missing: a package to install, or a GPU.
    """
