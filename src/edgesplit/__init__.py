"""edgesplit: layer-wise pipelined DNN inference across small edge devices."""

from edgesplit.errors import EdgesplitError

__version__ = "0.1.0"
__all__ = ["EdgesplitError", "__version__"]
