"""Where traces go: OTLP over HTTP (protobuf), batched, to a collector or a backend.

:class:`Telemetry` owns an OpenTelemetry ``TracerProvider`` of its own (the process's global
one is left alone, for an embedding application's) whose spans a ``BatchSpanProcessor``
exports from a thread of the SDK's, off the stage threads and event loops. The endpoint is
a collector's or backend's OTLP/HTTP base URL (``http://localhost:4318``; Jaeger, Tempo,
an OpenTelemetry Collector...); ``/v1/traces`` is added unless the URL names that path.
"""

from __future__ import annotations

from functools import partial
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from flowcat_ft.telemetry.tracing import ConversationTracer

__all__ = ["Telemetry", "traces_url"]


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of ``endpoint`` (a base URL, or the traces URL itself)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {endpoint!r}")
    if parts.path.rstrip("/").endswith("/v1/traces"):
        return endpoint
    return endpoint.rstrip("/") + "/v1/traces"


class Telemetry:
    """Traces of conversations, exported to ``endpoint`` (see the module docstring).

    :meth:`tracer_factory` makes each call's :class:`ConversationTracer`; :meth:`shutdown`
    exports what is left, within ``timeout`` seconds per export.
    """

    def __init__(
        self, endpoint: str, *, service_name: str = "flowcat-ft", timeout: float = 10.0
    ) -> None:
        self.endpoint = traces_url(endpoint)
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        exporter = OTLPSpanExporter(endpoint=self.endpoint, timeout=timeout)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("flowcat_ft")

    def tracer_factory(self) -> partial[ConversationTracer]:
        """A pipeline item: each call's tracer, to place right after the turn detector."""
        return partial(ConversationTracer, self.tracer)

    def flush(self, timeout: float = 10.0) -> bool:
        """Export the spans ended so far; False if that took longer than ``timeout``."""
        return self.provider.force_flush(int(timeout * 1000))

    def shutdown(self) -> None:
        """Export what is left and stop the exporting thread."""
        self.provider.shutdown()
