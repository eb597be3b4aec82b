"""Two nodes on this machine with the real vLLM CPU build: `dsv4serve up tiny` as node 0 and node 1 on
127.0.0.1 (TP 2 across them, vLLM's own multi-node backend), one chat request through the head, then
Ctrl-C on the head ends both, and nothing is left (recipes/vllm-cpu.md, "Two nodes")."""

from __future__ import annotations

import signal
import sys

import pytest

from dsv4serve.serving import procs
from tests.test_launch import Cli, assert_all_gone, chat, free_port

# On a quiet 2-core machine the pair is ready in ~35 s; vLLM's CPU build loads slowly when other
# servers share the cores, so the deadline is generous and the test still ends in bounded time.
READY_S = 540


@pytest.mark.slow
@pytest.mark.timeout(READY_S + 120)
def test_two_cpu_nodes_serve_one_model_and_stop_together(monkeypatch):
    api, master = free_port(), free_port()
    common = ["up", "tiny", "--nodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(master)]
    common += ["--port", str(api), "--timeout", str(READY_S), "-v"]  # -v: vLLM's own lines too
    nodes = []
    for rank in (0, 1):
        # each "node" its own core, as two machines would be (else the two OpenMP pools fight over both)
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", str(rank))
        nodes.append(Cli([sys.executable, "-m", "dsv4serve", *common, "--node-rank", str(rank)]))
    try:
        head, worker = nodes
        head_pgid, head_tmp = head.started()
        worker_pgid, worker_tmp = worker.started()
        head.wait_for(r"worker node 1 joined from 127\.0\.0\.1 \(2 of 2 nodes\)", 60)
        head.wait_for(rf"ready in [0-9.]+ s: http://127\.0\.0\.1:{api}/v1", READY_S, stream="out")
        worker.wait_for(r"node 1 ready in", 30, stream="out")
        assert "--headless" in "".join(worker.err) and "--nnodes 2 --node-rank 1" in "".join(worker.err)
        assert "world_size=2" in "".join(head.err + worker.err)
        assert chat(api)  # served by the TP ranks of both nodes
        assert procs.group_members(worker_pgid)  # the worker's vLLM runs until the head says stop
        head.proc.send_signal(signal.SIGINT)
        assert head.finish(60) == 0
        assert worker.finish(60) == 0, "".join(worker.err[-20:])
        assert "the head ended the deployment" in "".join(worker.err)
        assert_all_gone(head_pgid, head_tmp, api)
        assert_all_gone(worker_pgid, worker_tmp)
        assert procs.port_in_use("127.0.0.1", master) is None
    finally:  # a failed assertion must not leave the nodes, and their vLLMs, running
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGINT)
                node.finish(60)
