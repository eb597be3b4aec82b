"""The only place that starts processes: launch, readiness, supervision, process helpers, systemd notify."""
