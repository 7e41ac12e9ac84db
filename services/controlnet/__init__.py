"""ControlNet service: per-step residuals for the denoisers paired with it."""
