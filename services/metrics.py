"""The Prometheus metrics every Winnow process exports (one registry, the client library's default);
``deploy/grafana/winnow.json`` charts them. Project and annotator names are labels: the metrics
endpoint binds to loopback unless told otherwise (``--metrics-host``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# the workers' loops
MESSAGES = Counter("winnow_messages_total", "Bus messages a stage handled", ["service", "project"])
LAG = Gauge("winnow_consumer_lag", "Messages on the stage's partitions not yet committed", ["service", "project"])
METRIC_ERRORS = Counter("winnow_metric_errors_total", "Metric measurements that failed (lag, label counts)",
                        ["service", "project"])
STEP_SECONDS = Histogram("winnow_step_seconds", "Time to handle one batch (output durable, offsets committed)",
                         ["service", "project"])
# the project, measured by the trainer's process
HUMAN_FRACTION = Gauge("winnow_human_fraction", "Share of final labels made by people", ["project"])
MODEL_VERSION = Gauge("winnow_model_version", "Human labels the current model was trained on", ["project", "version"])
OPEN_TASKS = Gauge("winnow_open_tasks", "Tasks waiting for people", ["project"])
CERTIFIED_ACCURACY = Gauge("winnow_certified_accuracy_lower_bound",
                           "Certified lower bound on the accuracy of all final labels (NaN: none yet)", ["project"])
CERTIFIED_PRECISION = Gauge("winnow_certified_auto_accept_precision_lower_bound",
                            "Certified lower bound on the precision of auto-accepted labels (NaN: none yet)",
                            ["project"])
AUDIT_AGREEMENT = Gauge("winnow_audit_agreement",
                        "Share of answered audits (checks of what the model labels) where people agreed with the model: "
                        "the realised auto-accept precision", ["project"])
# the labeling service's calls, per person
LEASES = Counter("winnow_leases_total", "Tasks handed to people", ["project"])
ANSWERS = Counter("winnow_answers_total", "Answers recorded, per annotator", ["project", "annotator"])
SKIPS = Counter("winnow_skips_total", "Leases given back unanswered", ["project"])
