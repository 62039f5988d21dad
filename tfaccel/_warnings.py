"""The warning category tfaccel emits."""


class TfaccelWarning(UserWarning):
    """A tfaccel usage warning."""
