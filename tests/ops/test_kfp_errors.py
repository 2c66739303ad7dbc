"""`submit` and `schedule` against a real HTTP server on loopback that is not a working KFP API.

Each failure must be one stderr line naming the host, the HTTP status and what to check, exit 2,
after a handful of requests (a quick probe, no retry loop).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from activedet.cli.main import main

HTML = b"<!doctype html><html><body><form action='/login'>Sign in</form></body></html>"


class _Server:
    """Answers every request per ``mode``: 'html' (200 text/html), '404', '500', '403', or
    'api-<mode>' (a healthy /apis/v2beta1/healthz, then <mode> for every other path)."""

    def __init__(self, mode: str):
        self.mode, self.paths = mode, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                outer.paths.append(self.path)
                mode = outer.mode
                if mode.startswith("api-"):
                    if self.path.startswith("/apis/v2beta1/healthz"):
                        return self._send(200, "application/json", json.dumps({"multi_user": False}).encode())
                    mode = mode[4:]
                if mode == "html":
                    return self._send(200, "text/html; charset=utf-8", HTML)
                return self._send(int(mode), "text/html", HTML)

            def _send(self, status, ctype, body):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args):  # keep the test's stderr for the CLI
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(request):
    srv = _Server(request.param)
    yield srv
    srv.close()


@pytest.fixture
def config(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: kfp-err\ndataset: {uri: s3://b/ds}\nstore_root: s3://b/runs\ninitial_size: 2\nbudget: 2\ncycles: 1\n")
    return str(cfg)


COMMANDS = {
    "submit": lambda cfg, host: ["submit", cfg, "--host", host],
    "schedule": lambda cfg, host: ["schedule", cfg, "--cron", "0 2 * * *", "--host", host],
    "schedule-list": lambda cfg, host: ["schedule", "list", "--host", host],
    "schedule-delete": lambda cfg, host: ["schedule", "delete", "--name", "nightly", "--host", host],
}
EXPECT = {  # mode -> what the line must say about the answer, and what to check
    "html": ("HTTP 200 with text/html", "not the KFP API"),
    "404": ("HTTP 404", "check --host"),
    "500": ("HTTP 500", "check the ml-pipeline API server"),
    "403": ("HTTP 403", "check the credentials"),
    "api-html": ("not the KFP API", "check --host"),
    "api-403": ("HTTP 403", "check the credentials"),
    "api-500": ("HTTP 500", "check the ml-pipeline API server"),
}


@pytest.mark.parametrize("server", list(EXPECT), indirect=True)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_kfp_failure_is_one_line_exit_2(server, command, config, capsys):
    assert main(COMMANDS[command](config, server.url)) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    status, check = EXPECT[server.mode]
    assert server.url in lines[0] and status in lines[0] and check in lines[0], lines[0]
    assert "submitted run" not in out and "recurring_run_id" not in out
    # a probe, at most the client's own health check and the one failing call: no retry loop
    assert 1 <= len(server.paths) <= 4, server.paths
    if not server.mode.startswith("api-"):
        assert server.paths == ["/apis/v2beta1/healthz"]  # nothing compiled or sent after a failed probe


def test_probe_sends_the_projected_token(tmp_path, monkeypatch):
    """The schedule Job's projected token (KF_PIPELINES_SA_TOKEN_PATH) goes with the probe."""
    from activedet.ops import kfp_api

    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen["auth"] = self.headers.get("Authorization")
            body = b'{"multi_user": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        token = tmp_path / "token"
        token.write_text("tok-123\n")
        monkeypatch.setenv(kfp_api.TOKEN_ENV, str(token))
        assert kfp_api.probe(f"http://127.0.0.1:{httpd.server_address[1]}") == {"multi_user": True}
        assert seen["auth"] == "Bearer tok-123"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_submit_sends_namespace_and_service_account(tmp_path, capsys):
    """The working path against a loopback server speaking the KFP v2beta1 JSON API."""
    bodies = []

    class Handler(BaseHTTPRequestHandler):
        def _json(self, obj):
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.startswith("/apis/v2beta1/healthz"):
                return self._json({"multi_user": True})
            if self.path.startswith("/apis/v2beta1/experiments"):
                return self._json({"experiments": [{"experiment_id": "exp-1", "display_name": "activedet"}], "total_size": 1})
            return self._json({})

        def do_POST(self):
            bodies.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            return self._json({"run_id": "run-42"})

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: kfp-ok\ndataset: {uri: s3://b/ds}\nstore_root: s3://b/runs\ninitial_size: 2\nbudget: 2\ncycles: 1\n"
                   "kubernetes: {service_account: pipeline-runner, image_pull_secrets: [regcred]}\n")
    try:
        host = f"http://127.0.0.1:{httpd.server_address[1]}"
        assert main(["submit", str(cfg), "--host", host, "--namespace", "team-a", "--run-name", "r1"]) == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "submitted run run-42 (r1)" in capsys.readouterr().out
    path, run = next((p, b) for p, b in bodies if p.startswith("/apis/v2beta1/runs"))
    assert run["service_account"] == "pipeline-runner" and run["experiment_id"] == "exp-1"
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors and all(e["imagePullSecret"][0]["secretName"] == "regcred" for e in executors.values())
