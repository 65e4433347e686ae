"""OpenTelemetry traces of every conversation: a span per call, per user turn and per
service job (:mod:`~flowcat_ft.telemetry.tracing`, which the services import: it needs
only the OpenTelemetry API), exported over OTLP/HTTP by
:class:`~flowcat_ft.telemetry.export.Telemetry` (which loads the SDK and the exporter) when
the configuration names an endpoint."""
