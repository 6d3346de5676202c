"""Prometheus metrics of one app, in a registry of its own (two apps in a process stay apart)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5)


class ServerMetrics:
    """Request counts, latency, time to first audio, real-time factor, queue length."""

    def __init__(self, queue_length: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tacotune_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tacotune_request_seconds",
            "seconds from a request's arrival to its last byte",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_audio = Histogram(
            "tacotune_first_audio_seconds",
            "seconds from a synthesis request's arrival to its first audio",
            ["voice"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rtf = Histogram(
            "tacotune_real_time_factor",
            "synthesis compute seconds / audio seconds, per request",
            ["voice"],
            buckets=RTF_BUCKETS,
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "tacotune_audio_seconds",
            "seconds of audio produced",
            ["voice"],
            registry=self.registry,
        )
        self.queue = Gauge(
            "tacotune_queue_length",
            "synthesis requests admitted and not finished (waiting or synthesizing)",
            registry=self.registry,
        )
        self.queue.set_function(lambda: float(queue_length()))

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
