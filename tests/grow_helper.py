"""Start a helper that allocates, then become the server: `python tests/grow_helper.py PORT ARGV...`.

The helper is a child, so it is in the server's process group, as a leaking worker of the server would
be. It waits until the server answers /health on PORT, then 10 s (the watch takes its first readings),
allocates 384 MiB (32 MiB at a time, written, so resident) and holds it. This process then execs ARGV.
"""

from __future__ import annotations

import os
import subprocess
import sys

HELPER = r"""
import sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
while True:
    try:
        if opener.open(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2).status == 200:
            break
    except OSError:
        pass
    time.sleep(1)
time.sleep(10)
chunks = [bytearray(32 * 2**20) for _ in range(12)]
print("helper: 384 MiB allocated", flush=True)
time.sleep(3600)
"""

if __name__ == "__main__":
    subprocess.Popen([sys.executable, "-c", HELPER, sys.argv[1]])
    os.execv(sys.argv[2], sys.argv[2:])
