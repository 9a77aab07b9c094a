"""The relay between a sandboxed MCP server and its client (``wflo.mcp._jail``): what passes
the output limit, through real pipes."""

from __future__ import annotations

import os
import threading

import pytest

from wflo.mcp._jail import _pump_capped, _pump_messages


def relay(pump: object, chunks: list[bytes], *args: int) -> tuple[bytes, object]:
    """Feed ``chunks`` into a pipe from a thread, run ``pump(src, dst, *args)`` and return what
    came out of the other pipe and the pump's answer."""
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    out: list[bytes] = []

    def feed() -> None:
        try:
            for c in chunks:
                os.write(src_w, c)
        except BrokenPipeError:  # the pump stopped reading
            pass
        os.close(src_w)

    def drain() -> None:
        while data := os.read(dst_r, 65536):
            out.append(data)

    threads = [threading.Thread(target=feed), threading.Thread(target=drain)]
    for t in threads:
        t.start()
    answer = pump(src_r, dst_w, *args)  # type: ignore[operator]
    os.close(dst_w)
    os.close(src_r)  # the feeder may still be writing into a pump that stopped: it gets EPIPE
    for t in threads:
        t.join(10)
    os.close(dst_r)
    return b"".join(out), answer


def test_messages_within_the_limit_pass_whole() -> None:
    msgs = [b"a" * 1000 + b"\n", b"b" * 500, b"b" * 500 + b"\n" + b"c" * 999 + b"\n"]
    out, ok = relay(_pump_messages, msgs, 1000)
    assert ok is True and out == b"".join(msgs)


@pytest.mark.parametrize(
    "chunks",
    [
        [b"x" * 1001],  # one chunk, no newline
        [b"ok\n", b"x" * 600, b"x" * 600 + b"\n"],  # a line across chunks
        [b"ok\n" + b"x" * 1001 + b"\nok\n"],  # a long line between short ones
    ],
    ids=["unended", "across-chunks", "between"],
)
def test_a_message_past_the_limit_stops_the_relay(chunks: list[bytes]) -> None:
    out, ok = relay(_pump_messages, chunks, 1000)
    assert ok is False and len(out) <= 1000 and b"x" * 1001 not in out


def test_stderr_is_cut_at_the_limit_and_read_to_its_end() -> None:
    out, _ = relay(_pump_capped, [b"e" * 65536] * 32, 32768)  # 2 MiB in
    note = b"\nsandbox: the MCP server's stderr cut at 32768 bytes\n"
    assert out == b"e" * 32768 + note


def test_tool_limits_take_sizes_and_refuse_bad_ones() -> None:
    from wflo.errors import UserError
    from wflo.tools import ToolLimits

    limits = ToolLimits(output="4MiB", memory="64MiB", wall="1m")
    assert (limits.output, limits.memory, limits.wall) == (4 << 20, 64 << 20, 60.0)
    for bad in ({"output": "lots"}, {"output": -1}, {"cpu_seconds": 0}, {"wall": "soon"}):
        with pytest.raises(UserError, match="ToolLimits"):
            ToolLimits(**bad)  # type: ignore[arg-type]
