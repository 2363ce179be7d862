"""OpenTelemetry set-up, in one place: tracer and meter providers from config.

Providers are built here and handed to the components that need them (never
read from globals), so a process can run a demo and tests can run several
edges side by side. `install_global()` makes them the process-wide default
once, for libraries that instrument themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from citypost.config import ObservabilityConfig


@dataclass
class Observability:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    _installed: bool = field(default=False, repr=False)

    def tracer(self, name: str) -> trace.Tracer:
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str) -> metrics.Meter:
        return self.meter_provider.get_meter(name)

    def install_global(self) -> None:
        if not self._installed:
            trace.set_tracer_provider(self.tracer_provider)
            metrics.set_meter_provider(self.meter_provider)
            self._installed = True

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def setup_observability(
    config: ObservabilityConfig,
    *,
    post: str = "",
    extra_metric_readers: Sequence[MetricReader] = (),
) -> Observability:
    """Providers for `config.exporter`: none (in-process only), console, or OTLP over gRPC."""
    resource = Resource.create(
        {"service.name": config.service_name, **({"citypost.post": post} if post else {})}
    )
    tracer_provider = TracerProvider(resource=resource)
    readers: list[MetricReader] = list(extra_metric_readers)
    interval_ms = int(config.metric_interval_s * 1000)
    if config.exporter == "console":
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        readers.append(
            PeriodicExportingMetricReader(
                ConsoleMetricExporter(), export_interval_millis=interval_ms
            )
        )
    elif config.exporter == "otlp":
        # Imported here: the gRPC exporter pulls in its own stack only when asked for.
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
        )
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=config.otlp_endpoint),
                export_interval_millis=interval_ms,
            )
        )
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Observability(tracer_provider, meter_provider)
