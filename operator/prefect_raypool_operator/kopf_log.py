"""kopf's log, told straight: a retry that needs nothing from anyone is a WARNING.

When a CRD is created while kopf runs (KubeRay installed after the operator, say),
kopf starts watching the new kind at once, and its first list can reach the API
server before that kind's storage exists: 429 "storage is (re)initializing", with a
Retry-After. kopf waits it out and the list is served seconds later, yet it logs each
retry as an ERROR. Here those retries become WARNINGs, so an ERROR in the operator's
log still means something to act on. kopf's last attempt ("escalating") stays an
ERROR, as does every other failed request.
"""

from __future__ import annotations

import logging
import re

# kopf's lists and watches log through this module's logger (kopf 1.45).
WATCHING_LOGGER = "kopf._cogs.clients.watching"
_STORAGE_RETRY = re.compile(
    r"^Request attempt #\d+(/\d+)? failed; will retry: .* -> "
    r"APITooManyRequestsError\('storage is \(re\)initializing'"
)


class _StorageInitializingRetries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and _STORAGE_RETRY.match(record.getMessage()):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def soften_storage_initializing_retries() -> None:
    logger = logging.getLogger(WATCHING_LOGGER)
    if not any(isinstance(f, _StorageInitializingRetries) for f in logger.filters):
        logger.addFilter(_StorageInitializingRetries())
