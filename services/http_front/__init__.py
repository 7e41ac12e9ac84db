"""HTTP/JSON front of a fleet: an OpenAI-images-compatible route and the native API."""
