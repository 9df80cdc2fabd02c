"""The REST service and its web viewer (``seglab serve``): thin, over the predictor of ``seglab predict``."""
