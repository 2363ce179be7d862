import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from citypost.config import ObservabilityConfig
from citypost.observability import setup_observability

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "config",
    [
        ObservabilityConfig(),
        ObservabilityConfig(exporter="console", metric_interval_s=3600),
        ObservabilityConfig(
            exporter="otlp", otlp_endpoint="127.0.0.1:4317", metric_interval_s=3600
        ),
    ],
)
def test_each_exporter_builds_working_providers(config: ObservabilityConfig) -> None:
    reader = InMemoryMetricReader()
    observability = setup_observability(config, post="primary", extra_metric_readers=[reader])
    counter = observability.meter("test").create_counter("citypost.test.events")
    counter.add(2, {"kind": "a"})
    counter.add(3, {"kind": "a"})
    with observability.tracer("test").start_as_current_span("work") as span:
        assert span.is_recording()
    data = reader.get_metrics_data()
    assert data is not None
    resource = data.resource_metrics[0]
    assert resource.resource.attributes["citypost.post"] == "primary"
    assert resource.resource.attributes["service.name"] == "citypost"
    point = resource.scope_metrics[0].metrics[0].data.data_points[0]
    assert point.value == 5  # type: ignore[union-attr]
    observability.shutdown()
