"""`dsv4serve doctor`: is this machine ready to serve (GPUs, vLLM, ports, caches)?"""
