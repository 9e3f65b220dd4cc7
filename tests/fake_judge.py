"""A local OpenAI-compatible chat-completions server for the judge tests."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat(text: str) -> tuple[int, dict, str]:
    """A 200 reply whose single choice says ``text``."""
    return 200, {}, json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})


class QuietServer(ThreadingHTTPServer):
    """Drops the traceback http.server prints when a client gives up on a slow reply (timeout tests)."""

    def handle_error(self, request, client_address):
        pass


class FakeServer:
    """Answers each POST with ``respond(body)`` and records what it received."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    status, headers, text, *delay = server.respond(body)
                time.sleep(*delay or [0])
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args):
                pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
