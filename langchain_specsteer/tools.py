"""Tool calling: how tools and tool calls are written for each chat-template family, and how
the model's tool calls are read back (whole, or incrementally while streaming)."""

from __future__ import annotations

__all__ = ["PRIVATE_RESULT"]

PRIVATE_RESULT = "[private result: kept on the device]"
"""What the generalist reads in place of a private tool's result (same turn structure)."""
