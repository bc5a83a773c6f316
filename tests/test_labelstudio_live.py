"""The labeling loop through a real Label Studio on localhost: `select --format label-studio`
writes the tasks and the labeling config, Label Studio imports them through its API, serves
the images as select said it would, takes the annotations (one skipped, one never opened) and
exports JSON, JSON-MIN and CSV; `fine-tune` learns from each export and the next round's
`select --exclude` leaves out what was labeled.

Label Studio is a server with its own pinned dependencies, so it is not a test extra: `.ci/run`
installs it in a virtual environment of its own and names its executable in
TRANSFER_LABEL_STUDIO (a `label-studio` on the PATH serves too). Without it the test is skipped,
with the reason; the file-level round trip (test_select) always runs.
"""

import http.cookiejar
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import invoke, make_labeled_dir, the_next_round_leaves_out

EXECUTABLE = os.environ.get("TRANSFER_LABEL_STUDIO") or shutil.which("label-studio")
EMAIL, PASSWORD = "curator@example.com", "transfer-test-1"


class LabelStudio:
    """A Label Studio client as a script would use it: logged in once to make a personal
    access token, then every API call with its short-lived access token (Bearer)."""

    def __init__(self, url: str):
        self.url = url
        self.access = None  # the Bearer token, once the personal access token is refreshed
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.opener.open(url + "/user/login/").read()
        form = {"csrfmiddlewaretoken": self._csrf(), "email": EMAIL, "password": PASSWORD}
        self.opener.open(urllib.request.Request(url + "/user/login/", data=urllib.parse.urlencode(form).encode(),
                                                headers={"Referer": url + "/user/login/"})).read()
        token = json.loads(self._send("POST", "/api/token/", session=True))["token"]
        self.access = json.loads(self._send("POST", "/api/token/refresh/", {"refresh": token}))["access"]

    def _csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "csrftoken")

    def _send(self, method, path, body=None, session=False) -> bytes:
        headers = {"Content-Type": "application/json"}
        if session:
            headers.update({"X-CSRFToken": self._csrf(), "Referer": self.url + "/"})
        elif self.access:
            headers["Authorization"] = f"Bearer {self.access}"
        request = urllib.request.Request(self.url + path, method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
        try:
            with (self.opener.open if session else urllib.request.urlopen)(request, timeout=60) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None

    def api(self, method, path, body=None):
        return json.loads(self._send(method, path, body))

    def export(self, project: int, kind: str) -> bytes:
        return self._send("GET", f"/api/projects/{project}/export?exportType={kind}")

    def image(self, url: str) -> int:
        """The status of the image a task shows (fetched as the labeling page does, logged in)."""
        try:
            with self.opener.open(self.url + url, timeout=60) as response:
                return response.status if response.read() else 0
        except urllib.error.HTTPError as exc:
            return exc.code


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(root: Path, data: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root), "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    proc = subprocess.Popen([EXECUTABLE, "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(data), "--username", EMAIL, "--password", PASSWORD],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=data)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # first start: Django's migrations on a new database
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(1)
    proc.kill()
    pytest.fail("Label Studio did not start within 300 s:\n" + log.read_text()[-3000:])


@pytest.mark.slow
@pytest.mark.skipif(EXECUTABLE is None, reason="Label Studio is not installed (.ci/run installs it in a virtual "
                    "environment of its own and sets TRANSFER_LABEL_STUDIO)")
def test_select_label_in_a_real_label_studio_and_fine_tune_on_its_exports(tmp_path):
    pool = make_labeled_dir(tmp_path / "site" / "scans", per_class=6, classes=("h", "v"), size=8)
    test = make_labeled_dir(tmp_path / "test", per_class=4, classes=("h", "v"), size=8, seed=1)
    out = tmp_path / "to_label.json"
    chose = invoke("select", "--data", pool, "--encoder", "pixels", "--image-size", "8", "--labels", "6",
                   "--format", "label-studio", "--classes", "h,v", "--out", out, "--results", tmp_path / "r.csv",
                   "--no-sheet")
    assert chose.exit_code == 0, chose.output
    said = chose.output.split("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=")[1]
    root, storage = Path(said.split(";")[0]), Path(said.split("absolute path ")[1].split()[0])
    assert (root, storage) == (pool.parent, pool)

    (tmp_path / "ls").mkdir()
    proc, url = _start(root, tmp_path / "ls", tmp_path / "label-studio.log")
    try:
        studio = LabelStudio(url)
        project = studio.api("POST", "/api/projects", {"title": "transfer round 1",
                                                       "label_config": out.with_suffix(".xml").read_text()})["id"]
        studio.api("POST", "/api/storages/localfiles", {"project": project, "path": str(storage), "title": "scans"})
        imported = studio.api("POST", f"/api/projects/{project}/import", json.loads(out.read_text()))
        assert imported["task_count"] == 6
        tasks = sorted(studio.api("GET", f"/api/projects/{project}/tasks/?page_size=100"),
                       key=lambda t: t["data"]["order"])
        assert [t["data"]["order"] for t in tasks] == [1, 2, 3, 4, 5, 6]
        assert [studio.image(t["data"]["image"]) for t in tasks] == [200] * 6  # the images are served
        for k, task in enumerate(tasks[:5]):  # four labeled, the fifth skipped, the sixth never opened
            truth = Path(task["data"]["path"]).parent.name
            studio.api("POST", f"/api/tasks/{task['id']}/annotations/", {"was_cancelled": True, "result": []} if k == 4
                       else {"result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                         "value": {"choices": [truth]}}]})
        exports = {name: studio.export(project, kind) for name, kind in
                   [("export.json", "JSON"), ("export-min.json", "JSON_MIN"), ("export.csv", "CSV")]}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    labeled = {str(Path(t["data"]["path"])) for t in tasks[:4]}
    for name, content in exports.items():
        (downloads / name).write_bytes(content)
        tuned = invoke("fine-tune", "--data", downloads / name, "--test-data", test, "--encoder", "pixels",
                       "--image-size", "8", "--out", tmp_path / f"ft-{name}", "--results", tmp_path / "r.csv")
        assert tuned.exit_code == 0, (name, tuned.output)
        row = pd.read_csv(tmp_path / "r.csv").iloc[-1]
        assert row["n_train"] == 4 and row["classes_labeled"] == len({Path(p).parent.name for p in labeled}), name
    # JSON lists the skipped task (left out, counted); JSON-MIN and CSV only the labeled ones.
    assert len(json.loads(exports["export.json"])) == 5
    assert len(json.loads(exports["export-min.json"])) == 4
    the_next_round_leaves_out(pool, downloads / "export.json", tmp_path, labeled)
