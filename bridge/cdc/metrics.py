"""The `cdc_*` metric families, read from the runners' status at scrape time (no per-row work).

cdc_changes_total{source,op}          row changes handed to the pipeline (r = snapshot rows)
cdc_transactions_total{source}        transactions with changes handed to the pipeline
cdc_pending_transactions{source}      handed over, not yet stored and committed
cdc_lag_bytes{source}                 WAL bytes the slot is behind (PostgreSQL)
cdc_lag_seconds{source}               seconds behind the database's last commit
cdc_state{source,state}               1 for the state the source is in now
cdc_committed_timestamp_seconds{source}  when a position was last committed
"""

from collections.abc import Callable, Iterable, Mapping
from typing import get_args

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.cdc.runner import SourceRunner, State
from bridge.metrics import PREFIX

__all__ = ["CdcCollector"]

STATES = get_args(State)


class CdcCollector(Collector):
    def __init__(self, runners: Callable[[], Mapping[str, SourceRunner]]) -> None:
        self._runners = runners

    def collect(self) -> Iterable[Metric]:
        changes = CounterMetricFamily(
            f"{PREFIX}_cdc_changes", "Row changes handed to the pipeline", labels=["source", "op"]
        )
        transactions = CounterMetricFamily(
            f"{PREFIX}_cdc_transactions",
            "Transactions with changes handed to the pipeline",
            labels=["source"],
        )
        pending = GaugeMetricFamily(
            f"{PREFIX}_cdc_pending_transactions",
            "Transactions handed over and not yet stored and committed",
            labels=["source"],
        )
        lag_bytes = GaugeMetricFamily(
            f"{PREFIX}_cdc_lag_bytes", "WAL bytes the source is behind", labels=["source"]
        )
        lag_seconds = GaugeMetricFamily(
            f"{PREFIX}_cdc_lag_seconds",
            "Seconds the source is behind the database's last commit",
            labels=["source"],
        )
        state = GaugeMetricFamily(
            f"{PREFIX}_cdc_state", "1 for the source's current state", labels=["source", "state"]
        )
        committed = GaugeMetricFamily(
            f"{PREFIX}_cdc_committed_timestamp_seconds",
            "Unix time a position was last committed",
            labels=["source"],
        )
        for source_id, runner in self._runners().items():
            status = runner.status
            for op, count in status.changes.items():
                changes.add_metric([source_id, op], count)
            transactions.add_metric([source_id], status.transactions)
            pending.add_metric([source_id], status.pending_transactions)
            if status.lag_bytes is not None:
                lag_bytes.add_metric([source_id], status.lag_bytes)
            if status.lag_seconds is not None:
                lag_seconds.add_metric([source_id], status.lag_seconds)
            for name in STATES:
                state.add_metric([source_id, name], 1 if status.state == name else 0)
            if status.committed_at is not None:
                committed.add_metric([source_id], status.committed_at)
        return [changes, transactions, pending, lag_bytes, lag_seconds, state, committed]

    def describe(self) -> Iterable[Metric]:
        return []
