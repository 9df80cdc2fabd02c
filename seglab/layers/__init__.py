"""The course's building blocks as reusable modules."""

from seglab.layers.conv import ConvNormAct
from seglab.layers.resolve import make_act, make_norm

__all__ = ["ConvNormAct", "make_act", "make_norm"]
