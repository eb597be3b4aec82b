"""`export`: a plan turned into a systemd unit, a Compose file or Kubernetes manifests.

Every format runs `dsv4serve up PROFILE ...` (never vLLM directly), so the plan check, the weights check,
the readiness test and the clean stop hold inside the unit or container too. Pure text generation: the
modules take a Deployment (spec.py) and return a string; secrets are referenced, never written.
"""

FORMATS = ("systemd", "compose", "kubernetes")
