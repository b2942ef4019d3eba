"""A copy's progress told to Cinder, so that ``cinder show`` has it: volume metadata ``async_migration_progress``.

``ProgressToCinder(cinder, volume_id, owner)`` is called with every
``MigrationProgress`` a copy produces (the host copy's callback, the wait's
polls) and sends at most one report every ``every_s`` seconds, plus the first
one and any change of state (copying -> paused, say) at once. A report is best
effort: Cinder refusing or not answering is logged and the copy goes on (the
copy matters; its report does not). The extension removes the line when the
migration ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from include.backends.base import MigrationProgress, MigrationState
from include.migration.cinder_api import CinderApi
from include.migration.errors import CinderError

log = logging.getLogger(__name__)

REPORT_EVERY_S = 15.0  # one metadata write per migration every 15 s at most: 4 a minute, whatever the poll rate


class ProgressToCinder:
    """Call it with each progress; it writes to Cinder at a bounded rate. Returns whether it sent this one."""

    def __init__(
        self,
        cinder: CinderApi,
        volume_id: str,
        owner: str | None = None,
        *,
        every_s: float = REPORT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cinder = cinder
        self.volume_id = volume_id
        self.owner = owner
        self.every_s = every_s
        self.clock = clock
        self._last_at: float | None = None
        self._last_state: MigrationState | None = None

    def due(self, progress: MigrationProgress) -> bool:
        """The first report, a change of state, or ``every_s`` since the last one sent."""
        if self._last_at is None or progress.state is not self._last_state:
            return True
        return self.clock() - self._last_at >= self.every_s

    def __call__(self, progress: MigrationProgress) -> bool:
        if not self.due(progress):
            return False
        self._last_at, self._last_state = self.clock(), progress.state
        try:
            self.cinder.report_progress(self.volume_id, progress.describe(), self.owner)
        except CinderError as exc:
            log.warning("progress of volume %s not reported to Cinder: %s", self.volume_id, exc)
            return False
        return True
