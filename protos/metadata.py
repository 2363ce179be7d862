"""The gRPC metadata keys of citypost's API, beside the messages they travel with.

Servers (api/) and clients (the leader-following client, the consoles) read
and write them; keeping them here lets clients name them without importing
the server.
"""

from __future__ import annotations

from typing import Final

# Who calls: the operator's identity on a request.
OPERATOR_METADATA: Final = "x-citypost-operator"
# On a write refused by a standby (trailing metadata): where the leader's gRPC server listens.
LEADER_METADATA: Final = "x-citypost-leader"
# Initial metadata of WatchEvents: the revision after which changes are streamed.
WATCH_REVISION_METADATA: Final = "x-citypost-watch-revision"
