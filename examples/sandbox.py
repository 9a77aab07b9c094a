"""Run untrusted code in wflo.Sandbox: results, files, limits, escape attempts refused, and a
network allow-list that still refuses the host's loopback.

python examples/sandbox.py
"""

from __future__ import annotations

import wflo


def main() -> None:
    box = wflo.Sandbox(memory="256MiB", cpu_seconds=2, wall="15s", output="64KiB",
                       files={"/work/numbers.txt": "\n".join(str(i) for i in range(1, 101))})  # fmt: skip

    ok = box.run_python(
        "nums = [int(x) for x in open('numbers.txt')]\nprint(sum(nums))\nopen('/work/mean.txt','w').write(str(sum(nums)/len(nums)))"
    )
    print(f"sum: {ok.stdout.strip()}  mean file: {ok.files['/work/mean.txt'].decode()}  ({ok.duration_ms:.0f} ms)")

    hostile = {
        "read /etc/shadow": "print(open('/etc/shadow').read())",
        "call PostgreSQL on loopback": "import socket; socket.create_connection(('127.0.0.1', 5432), 1)",
        "spin the CPU": "while True: pass",
        "allocate 1 GiB": "x = bytearray(1 << 30)",
        "write to /usr": "open('/usr/bin/evil', 'w')",
    }
    for what, code in hostile.items():
        r = box.run_python(code)
        outcome = f"killed by {r.killed_by}" if r.killed_by else f"refused: {r.stderr.strip().splitlines()[-1]}"
        assert r.exit_code != 0, what
        print(f"{what:28} -> {outcome}")

    # An allow-list, with the store listed by mistake: the egress proxy still refuses loopback.
    online = wflo.Sandbox(network=["api.example.com:443", "localhost:5432"], wall="10s")
    r = online.run_python(
        "import socket\n"
        "s = socket.create_connection(('127.0.0.1', 3128), timeout=5)\n"
        "s.sendall(b'CONNECT localhost:5432 HTTP/1.1\\r\\n\\r\\n')\n"
        "print(s.recv(200).split(b'\\r\\n')[0].decode())"
    )
    assert "403" in r.stdout, r
    print(f"{'allow-listed localhost:5432':28} -> {r.stdout.strip()}")


if __name__ == "__main__":
    main()
