"""The batched decoder's former home: decode_batch now lives in the `decoding` package."""

from .decoding import decode_batch

__all__ = ["decode_batch"]
