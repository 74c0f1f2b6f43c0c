"""drm-exporter: Prometheus exporter and Grafana bundle for a Dynamic Resource Manager."""

__version__ = "0.1.0"
