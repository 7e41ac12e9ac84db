"""Code shared by every service: transport, model store, config, errors, fleet state."""
