"""Features: what a Cinder driver offers of the blueprint, read from the methods it has."""

from __future__ import annotations

from include.backends.features import TARGET_METHODS, Features, features_of


class StockDriver:
    def migrate_volume(self, context, volume, host):
        return False, None


class TakeoverDriver(StockDriver):
    def migrate_volume_target(self, context, volume, source):
        return True, True, None

    def complete_migration_target(self, context, volume):
        return None

    def abort_migration_target(self, context, volume):
        return None


def test_a_stock_driver_offers_step_one_only():
    features = features_of(StockDriver(), backend="lab@ceph-hdd")
    assert features == Features(backend="lab@ceph-hdd", driver="StockDriver")
    assert features.migrate_volume and not any(getattr(features, field) for field in TARGET_METHODS)


def test_a_driver_offers_what_it_has_and_nothing_else():
    features = features_of(TakeoverDriver(), backend="lab@alpha")
    offered = {field for field in TARGET_METHODS if getattr(features, field)}
    assert offered == {"migrate_volume_target", "complete_migration_target", "abort"}
    assert Features.from_json({**features.to_json(), "unknown": 1}) == features
