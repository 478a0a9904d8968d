"""The names other systems and queued messages rely on, each written once: task names, queue
names, and the namespace of ids derived from keys.

Renaming any of them breaks messages already queued and producers in other languages.
"""

from __future__ import annotations

import uuid

#: Request ids derived from idempotency keys (the producer API, schedules) live in this UUID
#: namespace; so do the ids of requests refused for reusing a key with another payload.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0e7c8a-3f7e-4c59-9f65-6a1d2b7e4a10")
