"""Planning across GPUs and nodes: parallel strategies (strategy.py) and each node's command (node_args.py).

The strategy names live here, importable without the planner (the profile schema checks them).
"""

# tp: tensor parallel; tp-ep: TP + expert parallel; dp-ep: data parallel attention + expert parallel;
# tp-pp: TP within each node, pipeline parallel across nodes.
STRATEGIES = ("tp", "tp-ep", "dp-ep", "tp-pp")
EXECUTORS = ("mp", "ray")  # vLLM's multiprocessing backend across nodes, or a running Ray cluster
