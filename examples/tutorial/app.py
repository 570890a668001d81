# The tutorial's app: GET / answers with its version, GET /healthz with 200,
# and SIGTERM stops it once the requests it is answering are done.
import argparse, os, signal, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = argparse.ArgumentParser()
args.add_argument("--port", type=int, default=os.environ.get("PORT", 8000))
port = args.parse_args().port
version = os.environ.get("HANDOFF_REVISION", "dev")  # set by handoff


class App(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path not in ("/", "/healthz"):
            return self.send_error(404)
        body = b"ok\n" if self.path == "/healthz" else f"hello from {version}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, *a):  # keep health checks out of the log
        if self.path != "/healthz":
            super().log_request(*a)


server = ThreadingHTTPServer(("127.0.0.1", port), App)
server.daemon_threads = False  # so that server_close() waits for requests
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
print(f"{version} listening on port {port}", flush=True)
server.serve_forever()
server.server_close()
