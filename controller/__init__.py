"""Autoscaling controller: queue depth per model node -> replica counts.

Layers, each importing only the ones above it:

- ``settings``: typed, validated settings per model node, loaded from one YAML file
  (the same file the Helm chart renders into the controller's ConfigMap).
- ``policy``: the pure decision ``decide(ctx) -> (desired, state)``, time passed in.
- ``sources`` / ``scaler``: small interfaces; ``QueueDepthSource`` reads Redis,
  ``KubernetesScaler`` patches ``deployments/scale``, ``LocalScaler`` runs processes.
- ``metrics``, ``loop``: the ticking controller; ``cli``: ``dfleet controller``.
"""
