"""The Compose stack, really running: two API replicas from the built CPU image, Redis, Prometheus with the
alert rules, Alertmanager (and Grafana when its image is here), checked through the stack itself.

`make deploy-test` builds the images, starts a Docker engine if none runs and sets LLMOPS_DEPLOY_TEST=1;
without it these tests skip. Where Docker Hub is unreachable, Redis, Prometheus and Alertmanager run from
the Debian-package stand-in (deploy/compose.local.yaml). Every port is published on 127.0.0.1 only."""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
import yaml

from llmops.engines.tiny_resnet import digits
from tests.helpers import encode_image, eventually, free_port, tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROJECT = "llmops-deploytest"
ADMIN = "deploy-test-admin-key"
MODEL = "smollm2-135m-instruct"  # the chat default (settings.default_models)
EMBEDDINGS = "all-minilm-l6-v2"
CLASSIFIER = "tiny-resnet"
T = TypeVar("T")

pytestmark = [
    pytest.mark.skipif(os.environ.get("LLMOPS_DEPLOY_TEST") != "1",
                       reason="needs built images and a Docker engine: make deploy-test"),
    pytest.mark.timeout(1200),
]


def until(what: str, probe: Callable[[], T | None], timeout: float = 180.0, every: float = 1.0) -> T:
    """Poll `probe` until it returns something truthy; fail saying `what` did not happen."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except (httpx.HTTPError, subprocess.CalledProcessError, KeyError, ValueError) as exc:
            last = exc  # type: ignore[assignment]
        time.sleep(every)
    raise AssertionError(f"{what} within {timeout:.0f} s (last: {last!r})")


def image_present(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


@dataclass
class Stack:
    files: list[str]
    env: dict[str, str]
    services: list[str]
    folder: Path

    def compose(self, *args: str, check: bool = True) -> str:
        cmd = [tool("docker-compose") or "docker-compose", "-p", PROJECT, *[a for f in self.files for a in ("-f", f)],
               "--profile", "cpu", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=ROOT)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: {out.stdout}\n{out.stderr}")
        return out.stdout

    def up(self) -> None:
        self.compose("up", "-d", "--no-build", "--scale", "api=2", *self.services)
        until("both API replicas healthy", lambda: len(self.healthy("api")) == 2, timeout=300)

    def containers(self, service: str) -> list[str]:
        return sorted(self.compose("ps", "-q", service).split())

    def inspect(self, container: str) -> dict[str, Any]:
        out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True)
        result: dict[str, Any] = json.loads(out.stdout)[0]
        return result

    def healthy(self, service: str) -> list[str]:
        return [c for c in self.containers(service)
                if self.inspect(c)["State"].get("Health", {}).get("Status") == "healthy"]

    def api_urls(self) -> list[str]:
        urls = []
        for c in self.containers("api"):
            port = self.inspect(c)["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"]
            urls.append(f"http://127.0.0.1:{port}")
        return urls

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.env[name]}"


def priced_config(folder: Path) -> Path:
    """The shipped CPU config with a price on tokens, so spend is a number that must survive a restart."""
    config = yaml.safe_load((DEPLOY / "config" / "cpu.yaml").read_text())
    for model in config["models"]:
        model["pricing"] = {"prompt_usd_per_1k": 0.5, "completion_usd_per_1k": 1.0}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o644)
    folder.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not image_present("llmops:cpu"):
        pytest.fail("no llmops:cpu image: make images")
    folder = tmp_path_factory.mktemp("stack")
    override = folder / "compose.test.yaml"
    override.write_text(yaml.safe_dump({"services": {"api": {
        "environment": {"LLMOPS_AUTH__ADMIN_KEY": ADMIN},
        "volumes": [f"{priced_config(folder)}:/etc/llmops/config.yaml:ro"]}}}))
    first, prometheus, alertmanager, grafana = host_ports()
    env = {"PATH": os.environ["PATH"], "LLMOPS_API_PORTS": f"{first}-{first + 1}", "GRAFANA_ADMIN_PASSWORD": "x",
           "PROMETHEUS_PORT": str(prometheus), "ALERTMANAGER_PORT": str(alertmanager),
           "GRAFANA_PORT": str(grafana)}
    files = [str(DEPLOY / "compose.yaml")]
    if not image_present("redis:7-alpine"):
        files.append(str(DEPLOY / "compose.local.yaml"))
    services = ["api", "redis", "prometheus", "alertmanager"]
    if image_present("grafana/grafana:11.1.0"):
        services.append("grafana")
    else:
        print("\ndeploy-test: Grafana skipped: its image (grafana/grafana:11.1.0) is not here and has no Debian "
              "package")
    st = Stack([*files, str(override)], env, services, folder)
    st.compose("down", "-v", check=False)
    try:
        # The API refuses to serve 0.0.0.0 without a key: the first one, as docs/deploy.md says.
        st.compose("up", "-d", "redis")
        st.compose("run", "--rm", "--no-deps", "api", "llmops", "keys", "create", "--name", "bootstrap",
                   "--secret-only")
        st.up()
        yield st
    finally:
        logs = st.compose("logs", "--no-color", "--tail", "200", check=False)
        (folder / "compose.log").write_text(logs)
        st.compose("down", "-v", check=False)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def host_ports() -> tuple[int, int, int, int]:
    """Host ports for the stack: two neighbours (one per API replica), then Prometheus, Alertmanager, Grafana.
    Drawn below the kernel's ephemeral range: a port from inside it (what binding port 0 gives) can be taken
    by any outgoing connection on this busy machine in the tens of seconds before `up` binds it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    while True:
        first = rng.randrange(10_000, low - 8, 8)
        ports = [first, first + 1, first + 2, first + 3, first + 4]
        if all(_free(p) for p in ports):
            return first, first + 2, first + 3, first + 4


def admin(url: str, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, url + path, headers={"X-Admin-Key": ADMIN}, timeout=30, **kw)


def new_key(url: str, **limits: Any) -> tuple[str, str]:
    r = admin(url, "POST", "/admin/keys", json={"name": f"t-{time.monotonic_ns()}", **limits})
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["secret"]


def test_ready_on_both_replicas(stack: Stack) -> None:
    urls = stack.api_urls()
    assert len(urls) == 2
    assert len(set(urls)) == 2
    for url in urls:
        r = httpx.get(url + "/ready", timeout=10)
        assert r.status_code == 200, r.text


def test_healthcheck_non_root_and_read_only(stack: Stack) -> None:
    for c in stack.containers("api"):
        info = stack.inspect(c)
        assert info["State"]["Health"]["Status"] == "healthy"
        assert info["Config"]["User"] == "10001:10001"
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert info["Config"]["Healthcheck"]["Test"][0] == "CMD"
        ids = subprocess.run(["docker", "exec", c, "id", "-u"], capture_output=True, text=True, check=True)
        assert ids.stdout.strip() == "10001"
        probe = subprocess.run(["docker", "exec", c, "touch", "/opt/venv/x"], capture_output=True, text=True)
        assert probe.returncode != 0
        assert "Read-only file system" in probe.stderr


def test_chat_answer(stack: Stack) -> None:
    url = stack.api_urls()[0]
    _, secret = new_key(url)
    with openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0, timeout=120) as client:
        out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                             max_tokens=8)
    assert out.choices[0].message.content
    assert out.usage is not None
    assert out.usage.completion_tokens > 0


def test_every_model_the_image_config_names_is_served(stack: Stack) -> None:
    url = stack.api_urls()[0]
    _, secret = new_key(url)
    listed = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10).json()
    shipped = yaml.safe_load((DEPLOY / "config" / "cpu.yaml").read_text())
    assert {m["id"] for m in listed["data"]} == {m["name"] for m in shipped["models"]}


def test_embeddings_answer(stack: Stack) -> None:
    url = stack.api_urls()[1]
    _, secret = new_key(url)
    with openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0, timeout=120) as client:
        out = client.embeddings.create(model=EMBEDDINGS, input=["a cat sat on the mat", "stock markets fell"])
    assert [len(d.embedding) for d in out.data] == [384, 384]  # all-MiniLM-L6-v2, baked in the image
    assert out.usage.prompt_tokens > 0


def test_classification_answer(stack: Stack) -> None:
    """The tiny ResNet baked in the image (trained at build time) reads a held-out digit it gets right."""
    url = stack.api_urls()[0]
    _, secret = new_key(url)
    data = digits()
    i = data.test[0]
    image = base64.b64encode(encode_image(data.images[i])).decode()
    r = httpx.post(url + "/v1/classifications", headers={"Authorization": f"Bearer {secret}"}, timeout=60,
                   json={"model": CLASSIFIER, "images": [image], "top_k": 2})
    assert r.status_code == 200, r.text
    labels = r.json()["data"][0]["labels"]
    assert len(labels) == 2
    assert labels[0]["label"] == str(data.labels[i])


def test_key_created_on_one_replica_works_on_the_other(stack: Stack) -> None:
    one, other = stack.api_urls()
    key_id, secret = new_key(one)

    def status(url: str) -> int:
        return httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10).status_code

    assert status(other) == 200
    assert status(one) == 200  # `one` has verified it now, and remembers it for auth.key_refresh_s (1 s)
    assert admin(other, "DELETE", f"/admin/keys/{key_id}").status_code == 200
    assert status(other) == 401  # revoked through this replica: at once
    assert eventually(lambda: status(one) == 401, timeout=5), "revoked on the other replica, still accepted"


def test_one_rate_limit_across_both_replicas(stack: Stack) -> None:
    urls = stack.api_urls()
    _, secret = new_key(urls[0], rpm=4)
    codes = [httpx.get(urls[i % 2] + "/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
             .status_code for i in range(6)]
    # four allowed in the minute, counted together: the fifth is refused whichever replica it reaches
    assert codes == [200, 200, 200, 200, 429, 429], codes


def test_prometheus_scrapes_both_replicas_with_the_rules_loaded(stack: Stack) -> None:
    prom = stack.url("PROMETHEUS_PORT")

    def both_up() -> list[dict[str, Any]] | None:
        targets = httpx.get(prom + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        ups = [t for t in targets if t["labels"]["job"] == "llmops" and t["health"] == "up"]
        return ups if len(ups) == 2 else None

    until("Prometheus scraping both API replicas", both_up, timeout=120)
    groups = httpx.get(prom + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert loaded == {r["alert"] for g in shipped["groups"] for r in g["rules"]}
    query = httpx.get(prom + "/api/v1/query", params={"query": 'count(llmops_model_ready{job="llmops"} == 1)'},
                      timeout=10).json()
    assert query["data"]["result"], query


def test_forced_alert_reaches_alertmanager(stack: Stack) -> None:
    """Freeze one replica (a hung process: it stays in DNS, its scrapes time out): LLMOpsDown fires after its
    `for: 1m` and Prometheus hands it to Alertmanager."""
    am = stack.url("ALERTMANAGER_PORT")
    victim = stack.containers("api")[1]
    subprocess.run(["docker", "pause", victim], capture_output=True, check=True)
    try:
        def fired() -> list[dict[str, Any]]:
            alerts = httpx.get(am + "/api/v2/alerts", timeout=10).json()
            return [a for a in alerts if a["labels"]["alertname"] == "LLMOpsDown"]

        alerts = until("LLMOpsDown in Alertmanager", fired, timeout=240, every=5)
        assert alerts[0]["labels"]["severity"] == "critical"
        assert alerts[0]["status"]["state"] == "active"
    finally:
        subprocess.run(["docker", "unpause", victim], capture_output=True, check=True)
    until("the frozen replica healthy again", lambda: len(stack.healthy("api")) == 2, timeout=300)


def test_down_then_up_keeps_keys_and_spend(stack: Stack) -> None:
    url = stack.api_urls()[0]
    key_id, secret = new_key(url)
    with openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0, timeout=120) as client:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to three."}],
                                       max_tokens=8)

    def spend(u: str) -> dict[str, Any] | None:
        rows = admin(u, "GET", "/admin/usage", params={"group_by": "key", "key_id": key_id}).json()["data"]
        return rows[0] if rows and rows[0]["cost_usd"] > 0 else None

    before = until("the request's spend recorded", lambda: spend(url), timeout=60)
    stack.compose("down")  # keeps the named volumes; `down -v` would drop them
    assert stack.containers("api") == []
    stack.up()
    url = stack.api_urls()[1]
    r = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert r.status_code == 200, r.text
    after = spend(url)
    assert after is not None
    assert after["requests"] == before["requests"]
    assert after["cost_usd"] == before["cost_usd"]


def test_one_container_runs_read_only_with_only_a_tmpfs() -> None:
    """`docker run --read-only --tmpfs /tmp llmops:cpu`, no volume named: the state folder is the image's own
    volume, so keys and spend can be written; every default model loads and a chat request is answered."""
    port = free_port()
    name = f"{PROJECT}-readonly"
    subprocess.run(["docker", "run", "-d", "--rm", "--read-only", "--tmpfs", "/tmp", "--name", name,
                    "-p", f"127.0.0.1:{port}:8000", "-e", "LLMOPS_INSECURE_NO_AUTH=true", "llmops:cpu"],
                   capture_output=True, text=True, check=True)
    url = f"http://127.0.0.1:{port}"
    try:
        until("/ready 200 on the read-only container",
              lambda: httpx.get(url + "/ready", timeout=5).status_code == 200, timeout=240)
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
            out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi."}],
                                                 max_tokens=4)
        assert out.usage is not None
        assert out.usage.completion_tokens > 0
        count = ["python", "-c", "import sqlite3; print(sqlite3.connect("
                 "'/home/llmops/.local/share/llmops/llmops.db').execute('SELECT COUNT(*) FROM llmops_spend')"
                 ".fetchone()[0])"]

        def spend_rows() -> int:
            done = subprocess.run(["docker", "exec", name, *count], capture_output=True, text=True, check=True)
            return int(done.stdout.strip())

        until("the request's spend written to the state volume", spend_rows, timeout=30)
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr
        assert "Read-only file system" not in logs
        assert "loading model failed" not in logs
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)
