"""Small receivers on localhost for tests that check what wflo sends (mail, for now)."""

from __future__ import annotations

import socketserver
import threading


class SMTP:
    """A minimal SMTP receiver on localhost (enough of RFC 5321 for smtplib)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(b"220 test ESMTP\r\n")
                data_mode, lines = False, []
                for raw in self.rfile:
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    if data_mode:
                        if line == ".":
                            outer.messages.append("\n".join(lines))
                            data_mode, lines = False, []
                            self.wfile.write(b"250 queued\r\n")
                        else:
                            lines.append(line)
                        continue
                    verb = line[:4].upper()
                    if verb in ("EHLO", "HELO"):
                        self.wfile.write(b"250 test\r\n")
                    elif verb == "DATA":
                        data_mode = True
                        self.wfile.write(b"354 go\r\n")
                    elif verb == "QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:
                        self.wfile.write(b"250 ok\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
