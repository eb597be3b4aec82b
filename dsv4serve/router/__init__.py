"""`dsv4serve route`: an OpenAI-compatible router that asks Flash to classify each request and sends
complex ones to Pro. Its own subpackage: it reads its YAML with dsv4serve's profile helpers, and nothing
of the launcher imports it."""
