"""What one migration run is asked to do, validated before anything changes.

The same checks serve the Airflow params form (as a JSON schema) and the
first task of the DAG (``parse_request``, which raises ``InvalidParams``), so a REST-triggered run with bad
``conf`` fails with the same message the form would have shown.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from include.backends.base import COPY_MODES
from include.migration.deadlines import HOST_COPY_GRACE_S, MAX_TIMEOUT_S
from include.migration.errors import InvalidParams

HOST_RE = re.compile(r"^[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+#[A-Za-z0-9_.-]+$")
MAX_SPEED_MIB = 100_000
# the longest try of a synchronous step (a host copy's slice): under the Celery visibility timeout of
# docker-compose.yaml (6 h) with the slice's grace (HOST_COPY_GRACE_S), so no broker hands a running try out again
MAX_TASK_TIMEOUT_S = 6 * 3600 - HOST_COPY_GRACE_S - 15 * 60


@dataclass(frozen=True)
class MigrationRequest:
    volume_id: str
    dest_host: str  # host@backend#pool
    force_host_copy: bool = False
    new_type: str | None = None
    copy_mode: str | None = None  # a takeover's copy mode (COPY_MODES); None: the target array's default
    speed_mib: int | None = None  # copy throttle; None: the target array's default, 0: unlimited
    copy_timeout_s: int | None = None  # how long the copy may take; None: derived from size and speed (deadlines.py)
    task_timeout_s: int = 3600  # how long one try of a synchronous step, or one slice of a host copy, may take


PARAMS_SCHEMA: dict[str, dict[str, Any]] = {
    "volume_id": {"type": "string", "format": "uuid", "description": "ID of the Cinder volume to migrate"},
    "dest_host": {
        "type": "string",
        "pattern": HOST_RE.pattern,
        "description": "destination pool, host@backend#pool (as in cinder get-pools)",
    },
    "force_host_copy": {"type": "boolean", "default": False, "description": "skip the drivers: copy through the host"},
    "new_type": {
        "type": ["null", "string"],
        "default": None,
        "description": "change the volume type with the move (host copy)",
    },
    "copy_mode": {
        "type": ["null", "string"],
        "enum": [None, *COPY_MODES],
        "default": None,
        "description": "a takeover's copy: stream (writes on the target only) or mirror (the source stays current "
        "until the switch-over); empty: the target array's default",
    },
    "speed_mib": {
        "type": ["null", "integer"],
        "default": None,
        "minimum": 0,
        "maximum": MAX_SPEED_MIB,
        "description": "copy throttle in MiB/s; empty: the array's default; 0: unlimited",
    },
    "copy_timeout_s": {
        "type": ["null", "integer"],
        "default": MigrationRequest.copy_timeout_s,
        "minimum": 60,
        "maximum": MAX_TIMEOUT_S,
        "description": "seconds the copy may take from the lock on, over all retries (a takeover's background copy "
        "goes on after it); empty: derived from the volume's size and speed_mib",
    },
    "task_timeout_s": {
        "type": "integer",
        "default": MigrationRequest.task_timeout_s,
        "minimum": 10,
        "maximum": MAX_TASK_TIMEOUT_S,
        "description": "seconds one try of a synchronous step may take; a host copy goes on past it in slices of "
        "this length, each resuming from the last one's checkpoint",
    },
}


def whole_number(conf: dict[str, Any], key: str, lo: int, hi: int, default: int | None) -> int | None:
    """``conf[key]`` (else ``default``) as a whole number in ``lo``..``hi``; InvalidParams naming ``key``."""
    value = conf.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParams(f"{key} must be a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidParams(f"{key} must be between {lo} and {hi}, got {value}")
    return value


def parse_request(conf: dict[str, Any]) -> MigrationRequest:
    """Validate a run's params/conf; raises InvalidParams naming every problem found."""
    if not isinstance(conf, dict):
        raise InvalidParams("the run's parameters must be an object")
    problems = []
    unknown = sorted(set(conf) - set(PARAMS_SCHEMA))
    if unknown:
        problems.append(f"unknown parameters: {', '.join(unknown)}")
    volume_id = conf.get("volume_id")
    try:
        volume_id = str(uuid.UUID(str(volume_id))) if isinstance(volume_id, str) else None
    except ValueError:
        volume_id = None
    if volume_id is None:
        problems.append(f"volume_id must be a volume UUID, got {conf.get('volume_id')!r}")
    dest_host = conf.get("dest_host")
    if not isinstance(dest_host, str) or not HOST_RE.match(dest_host):
        problems.append(f"dest_host must look like host@backend#pool, got {dest_host!r}")
    force = conf.get("force_host_copy", False)
    if not isinstance(force, bool):
        problems.append(f"force_host_copy must be true or false, got {force!r}")
    new_type = conf.get("new_type") or None
    if new_type is not None and not isinstance(new_type, str):
        problems.append(f"new_type must be a volume type name or ID, got {new_type!r}")
    copy_mode = conf.get("copy_mode") or None
    if copy_mode is not None and copy_mode not in COPY_MODES:
        problems.append(f"copy_mode must be one of {', '.join(COPY_MODES)}, got {copy_mode!r}")
    elif copy_mode is not None and (force is True or new_type):
        problems.append("copy_mode is a takeover's; force_host_copy and new_type copy through the host")
    numbers: dict[str, int | None] = {}
    for key, lo, hi, default in (
        ("speed_mib", 0, MAX_SPEED_MIB, None),
        ("copy_timeout_s", 60, MAX_TIMEOUT_S, MigrationRequest.copy_timeout_s),
        ("task_timeout_s", 10, MAX_TASK_TIMEOUT_S, MigrationRequest.task_timeout_s),
    ):
        try:
            numbers[key] = whole_number(conf, key, lo, hi, default)
        except InvalidParams as exc:
            problems.append(str(exc))
    if problems:
        raise InvalidParams("; ".join(problems))
    return MigrationRequest(
        volume_id=volume_id,
        dest_host=dest_host,
        force_host_copy=force,
        new_type=new_type,
        copy_mode=copy_mode,
        speed_mib=numbers["speed_mib"],
        copy_timeout_s=numbers["copy_timeout_s"],
        task_timeout_s=numbers["task_timeout_s"],
    )
