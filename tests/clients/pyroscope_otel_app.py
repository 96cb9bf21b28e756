"""A real Pyroscope client (Grafana's pyroscope-io + pyroscope-otel from PyPI) pushing span
profiles to spanprof-server. Usage: pyroscope_otel_app.py <server-url> <seconds>. Prints the span ID
and trace ID of every root span it ran, one per line, and last `profile <ID> <CPU ms>`: the CPU time
of the work it labelled with a profile ID of its own (pyroscope.tag_wrapper, profile_id), spread
over the whole run so that several uploads carry it."""
import sys, time
import pyroscope
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from pyroscope.otel import PyroscopeSpanProcessor

server = sys.argv[1]
pyroscope.configure(application_name="pyride", server_address=server, sample_rate=100, tags={"region": "eu"})
provider = TracerProvider()
provider.add_span_processor(PyroscopeSpanProcessor())
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("demo")

def find_nearest_vehicle(n):
    s = 0
    for i in range(n):
        s += i * i % 7
    return s

BATCH_ID = "nightly batch/42"
batch_cpu = 0.0
end = time.time() + float(sys.argv[2])
while time.time() < end:
    with tracer.start_as_current_span("OrderVehicle") as span:
        find_nearest_vehicle(300000)
        ctx = span.get_span_context()
        print(f"{ctx.span_id:016x} {ctx.trace_id:032x}", flush=True)
    with pyroscope.tag_wrapper({"profile_id": BATCH_ID}):
        start = time.thread_time()
        find_nearest_vehicle(100000)
        batch_cpu += time.thread_time() - start
pyroscope.shutdown()
print(f"profile {BATCH_ID.replace(' ', '%20').replace('/', '%2F')} {batch_cpu * 1000:.0f}", flush=True)
