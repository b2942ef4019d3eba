"""``lab``: start, stop and look at the lab; run the takeover demo.

lab up        install what is missing, start the arrays alpha, beta, gamma, the
              services PostgreSQL, RabbitMQ, Keystone, Ceph 16.2 (one monitor,
              manager and OSD; three RBD pools), Cinder 29 with the lab's drivers,
              Cinder's RBD driver for Ceph and the extension, and Airflow 3
              (api-server, scheduler, dag-processor, triggerer) with the
              project's DAGs and Connections
              (--arrays-only: the arrays alone; --executor celery: Airflow on
              Celery, with Redis and two Celery workers)
lab down      stop exactly the processes the lab started (by PID)
lab status    PIDs, ports, pools and LUN counts; the services' PIDs, ports and memory;
              Cinder's services
lab demo      up, then one real migration through the volume_migration DAG: a Cinder
              volume from gamma to alpha, used through Cinder during the copy,
              checked byte for byte afterwards; then down (--keep: stay up)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

from include.backends.errors import BackendError
from lab.env import DEFAULT_ROOT
from lab.errors import LabError
from lab.lab import Lab
from lab.services.airflow import EXECUTORS, AirflowLab
from lab.services.ceph import CephLab
from lab.services.cinder import CinderLab
from lab.services.openstack import Services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("LAB_ROOT", DEFAULT_ROOT)))
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up")
    up.add_argument("--arrays-only", action="store_true", help="the arrays alone: no services, Ceph, Cinder, Airflow")
    sub.add_parser("down")
    sub.add_parser("status")
    demo = sub.add_parser("demo")
    for command in (up, demo):
        command.add_argument("--executor", choices=sorted(EXECUTORS),
                             help="Airflow's executor (default: as last time, else local)")  # fmt: skip
    demo.add_argument("--size-gib", type=int, default=1)
    demo.add_argument("--speed-mib", type=int, default=32, help="copy throttle, MiB/s (0 = unlimited)")
    demo.add_argument("--keep", action="store_true", help="leave the lab running (and the volume) afterwards")
    args = parser.parse_args(argv)
    lab = Lab(args.root)
    try:
        if getattr(args, "executor", None):
            airflow_of(lab, args.executor)
        if args.command == "up":
            pids = lab.up() if args.arrays_only else up_all(lab)
            print(json.dumps(status(lab), indent=1))
            print(f"lab up: {', '.join(f'{n} pid {p}' for n, p in pids.items())}")
            if not args.arrays_only:
                print(f"credentials: source {services_of(lab).root}/openrc-admin (or openrc-member)")
                airflow = airflow_of(lab)
                print(f"Airflow: {airflow.url} (user admin, password in {airflow.root / 'passwords.json'})")
        elif args.command == "down":
            return down_all(lab)
        elif args.command == "status":
            print(json.dumps(status(lab), indent=1))
        elif args.command == "demo":
            from lab.demo import run_demo

            up_all(lab)
            try:
                api = airflow_of(lab).api
                return run_demo(lab, services_of(lab), api, size_gib=args.size_gib, speed_mib=args.speed_mib,
                                keep=args.keep)  # fmt: skip
            finally:
                if not args.keep:
                    down_all(lab)
    except (LabError, BackendError) as exc:  # the lab's own failures; an array's refusal
        print(f"lab {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def up_cinder_side(lab: Lab) -> dict[str, int]:
    """The arrays, PostgreSQL, RabbitMQ, Keystone, Ceph and Cinder: everything but Airflow, in starting order."""
    pids = lab.up()
    pids.update(services_of(lab).up())
    pids.update(ceph_of(lab).up())
    pids.update(cinder_of(lab).up())
    return pids


def down_cinder_side(lab: Lab) -> dict[str, bool]:
    """What ``up_cinder_side`` started, the last first; {name: stopped}."""
    results = cinder_of(lab).down()
    results.update(ceph_of(lab).down())
    results.update(services_of(lab).down())
    results.update(lab.down())
    return results


def up_all(lab: Lab) -> dict[str, int]:
    pids = up_cinder_side(lab)
    pids.update(airflow_of(lab).up())
    return pids


def down_all(lab: Lab) -> int:
    results = airflow_of(lab).down()
    results.update(down_cinder_side(lab))
    print("lab down: " + ", ".join(f"{n} {'stopped' if ok else 'STILL RUNNING'}" for n, ok in results.items()))
    return 0 if all(results.values()) else 1


@functools.cache
def services_of(lab: Lab) -> Services:
    """PostgreSQL, RabbitMQ and Keystone of the lab, under ``root/services``."""
    return Services(lab.root / "services")


@functools.cache
def ceph_of(lab: Lab) -> CephLab:
    """The lab's Ceph cluster, under ``root/ceph``."""
    return CephLab(lab.root / "ceph")


@functools.cache
def cinder_of(lab: Lab) -> CinderLab:
    return CinderLab(lab.root / "cinder", lab, services_of(lab), ceph_of(lab))


_airflows: dict[Path, AirflowLab] = {}


def airflow_of(lab: Lab, executor: str | None = None) -> AirflowLab:
    """The lab's Airflow; ``executor`` (first call) chooses Local or Celery, else the one it was set up with."""
    airflow = _airflows.get(lab.root)
    if airflow is None or (executor is not None and executor != airflow.executor):
        airflow = _airflows[lab.root] = AirflowLab(lab.root / "airflow", lab, services_of(lab), executor)
    return airflow


def status(lab: Lab) -> dict[str, list[dict[str, object]]]:
    return {
        "arrays": lab.status(),
        "services": services_of(lab).status(),
        "ceph": ceph_of(lab).status(),
        "cinder": cinder_of(lab).status(),
        "airflow": airflow_of(lab).status(),
    }


if __name__ == "__main__":
    sys.exit(main())
