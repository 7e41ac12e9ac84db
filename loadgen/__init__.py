"""Load generator for a diffusion fleet: seeded schedules, SLO reports, rate sweeps, plots."""
