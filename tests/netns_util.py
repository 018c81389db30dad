"""A private network namespace for tests that start Ray: traffic can only go to 127.0.0.1.

Ray picks the machine's own network interface by itself (even with ``--node-ip-address
127.0.0.1``), so a test that starts Ray runs it under ``private_network()``: a new network
namespace holding only loopback, brought up. Where that is impossible the test skips and
says why.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

_UNSHARE_NET = ["unshare", "-rn"]  # -r: map us to root in a user namespace (no real root needed)
# A pid namespace of its own too, with its own /proc: `ray stop` (which kills every Ray
# process it can see, by name) sees only the test's own, and when the namespace's first
# process ends, the kernel ends every process left in it; --kill-child ends that first
# process when unshare itself is killed (a test timeout).
_UNSHARE_PIDS = ["--pid", "--fork", "--mount-proc", "--kill-child"]


def private_network(own_pids: bool = False) -> list[str]:
    """The command prefix that runs a command in a loopback-only network namespace.

    Args:
        own_pids: also give the command a pid namespace of its own (see above); needed by a
            test that starts Ray with ``ray start`` and stops it with ``ray stop``.

    Returns:
        ``[*prefix, "cmd", "args"]`` runs ``cmd args`` there, with ``lo`` up.

    Skips the calling test (with the reason) when ``unshare`` or ``ip`` is missing or the
    kernel refuses the namespaces.
    """
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) for a private network namespace")
    unshare = [*_UNSHARE_NET, *(_UNSHARE_PIDS if own_pids else [])]
    probe = subprocess.run(
        [*unshare, "sh", "-c", "ip link set lo up"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot create a private network namespace here: {probe.stderr.strip()[:200]}")
    return [*unshare, "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
