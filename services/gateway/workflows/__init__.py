"""Workflows: graphs of operator nodes over the fleet's models (docs/workflows.md).

:mod:`.spec` (the domain types), :mod:`.catalog` (the operators), :mod:`.parse` and
:mod:`.checks` / :mod:`.compatibility` (what registration checks), :mod:`.registry` (kept in
Redis), :mod:`.builtins` (the request kinds as workflows), :mod:`.binding` and :mod:`.plan`
(a request bound to its workflow), :mod:`.executor` (the nodes around the denoise node),
:mod:`.comfyui_graph` and :mod:`.comfyui` (ComfyUI API-format import), :mod:`.service` (what
the gateway's servicer calls).
"""
