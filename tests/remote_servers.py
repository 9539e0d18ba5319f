"""Real cache servers on 127.0.0.1 for tests and benchmarks: moto's S3 server and Debian's nginx
with the WebDAV module (PUT), each on a free port."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAMLCBUILDTESTKEY1",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-must-never-leak-5f0c1e",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class Moto:
    """moto's S3 server in this process; `url(bucket)` is an s3:// remote URL pointing at it."""

    port: int
    server: object

    @classmethod
    def start(cls) -> "Moto":
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        wait_for_port(port)
        return cls(port, server)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        )

    def bucket(self, name: str) -> str:
        """Create a bucket; return its remote URL."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}/cache?endpoint_url={self.endpoint}"

    def stop(self) -> None:
        self.server.stop()


DAV = "dav_methods PUT; create_full_put_path on; dav_access user:rw group:r all:r;"
NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location / {{
            {location}
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """nginx as a Bazel HTTP cache (WebDAV PUT), files under `www`, stopped by `stop()`."""

    root: Path
    port: int
    process: subprocess.Popen

    @classmethod
    def start(cls, root: Path, status: int | None = None) -> "Nginx":
        """A WebDAV cache, or with `status` a server that answers every request with it (e.g. 503)."""
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        root.mkdir(parents=True, exist_ok=True)
        (root / "www").mkdir(exist_ok=True)
        port = free_port()
        conf = root / "nginx.conf"
        location = DAV if status is None else f"return {status};"
        conf.write_text(NGINX_CONF.format(root=root, port=port, location=location))
        process = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(root), "-e", str(root / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port)
        return cls(root, port, process)

    @property
    def www(self) -> Path:
        return self.root / "www"

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}/cache"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
