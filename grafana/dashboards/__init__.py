"""grafanalib sources of the five DRM dashboards (installed as the `drm_dashboards` package)."""
