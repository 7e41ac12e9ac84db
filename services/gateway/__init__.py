"""Gateway: the public API, request validation, the workflow graph, placement."""
