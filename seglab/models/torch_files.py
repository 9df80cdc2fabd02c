"""Why a torch file could not be read, in one line (for weights files and training states alike).

Free of torch and of the rest of seglab, so the encoders (reading weights files) and the engine (reading training
states; ``seglab.checkpoint`` re-exports it) both use it without the models importing the checkpoint layer.
"""

from __future__ import annotations


def torch_load_problem(error: Exception) -> str:
    """One line saying why ``torch.load(..., weights_only=True)`` refused a file, without PyTorch's advice to
    retry with ``weights_only=False`` (seglab never runs code from a file)."""
    text = str(error)
    if "Unsupported global" in text:
        return (
            "it holds pickled Python objects, and seglab loads only tensors and never runs code from a file"
        )
    if "Weights only load failed" in text:
        return "it is not a torch file of tensors (damaged, truncated or of another kind)"
    first = text.strip().splitlines()[0] if text.strip() else error.__class__.__name__
    return f"it is damaged or truncated ({first[:160]})"
