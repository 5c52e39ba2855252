"""Pub/sub inference on Redis Streams: :class:`InputQueue`, :class:`OutputQueue`, the stream worker.

Clients push inputs to a stream and fetch results later by uri; a group of
workers (``modelyard queue-worker``) consumes the stream through the same
pipeline as HTTP. Wire format and usage: ``docs/queue.md``.
"""

from modelyard.queue.client import InputQueue, OutputQueue, QueueFull, QueueUnavailable
from modelyard.queue.codec import decode, encode
from modelyard.queue.keys import DEFAULT_GROUP, DEFAULT_STREAM, QueueKeys, Result

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_STREAM",
    "InputQueue",
    "OutputQueue",
    "QueueFull",
    "QueueKeys",
    "QueueUnavailable",
    "Result",
    "decode",
    "encode",
]
