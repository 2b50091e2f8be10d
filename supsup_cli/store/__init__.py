"""The store, never torch: where it lives (location), how its arrays are laid out (layout),
reading (reader), writing through one transaction (writer), verify, and copies (copy).
`MaskStore` brings them together for callers."""

from .mask_store import MaskStore

__all__ = ["MaskStore"]
