"""A local OTLP/HTTP trace receiver: what a collector does with ``POST /v1/traces``
(protobuf, as OpenTelemetry's exporters send it), kept in memory for a test to read."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[str]
    status: str  # "UNSET", "OK" or "ERROR"
    status_message: str
    resource: dict[str, Any] = field(repr=False)


def _value(any_value) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _attributes(key_values) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in key_values}


class OTLPReceiver:
    """Receives spans at ``url + "/v1/traces"`` on 127.0.0.1, on a thread of its own."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self.content_types: list[str] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._received(request, self.headers.get("Content-Type", ""))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _received(self, request: ExportTraceServiceRequest, content_type: str) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes=_attributes(span.attributes),
                            events=[event.name for event in span.events],
                            status=("UNSET", "OK", "ERROR")[span.status.code],
                            status_message=span.status.message,
                            resource=resource,
                        )
                    )
        with self._changed:
            self._spans += spans
            self.content_types.append(content_type)
            self._changed.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        """Wait until ``predicate(spans)`` is true."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(list(self._spans)), timeout)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
