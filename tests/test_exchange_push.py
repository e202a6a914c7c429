"""`workbench export --push`: one commit with the card and the parquet files, against a local stand-in of the Hub.

A stand-in: the Hub cannot be reached from here. The app below implements just the HTTP endpoints that
huggingface_hub calls for `create_repo` + `upload_folder` (repo creation, README YAML validation, preupload, tree
listing, commit), stores each commit's files in memory and answers like the Hub does for small regular files.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.test_exchange_export import three_annotator_tasks
from workbench.services import ServerThread


def hub_stand_in(token: str) -> tuple[FastAPI, dict]:
    """A FastAPI app answering like the Hub for create_repo, preupload, tree listing and commit."""
    app = FastAPI()
    state: dict = {"repos": {}, "commits": [], "unknown": [], "create_requests": []}

    def authorised(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {token}"

    @app.post("/api/repos/create")
    async def create_repo(request: Request):
        if not authorised(request):
            return JSONResponse({"error": "Invalid credentials"}, status_code=401)
        body = await request.json()
        state["create_requests"].append(body)
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        url = f"{request.base_url}datasets/{repo_id}"
        if repo_id in state["repos"]:
            return JSONResponse({"error": "You already created this dataset repo", "url": url}, status_code=409)
        state["repos"][repo_id] = {"type": body.get("type"), "visibility": body.get("visibility"), "files": {}}
        return {"url": url, "name": repo_id}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request):
        body = await request.json()
        state["validated"] = body.get("repoType")
        return {"errors": [], "warnings": []}

    @app.post("/api/datasets/{namespace}/{name}/preupload/{revision}")
    async def preupload(namespace: str, name: str, revision: str, request: Request):
        body = await request.json()
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in body["files"]]
        return {"files": files, "commitOid": "0" * 40}

    @app.get("/api/datasets/{namespace}/{name}/tree/{revision}")
    async def tree(namespace: str, name: str, revision: str):
        files = state["repos"][f"{namespace}/{name}"]["files"]
        return [{"type": "file", "path": path, "size": len(data), "oid": "1" * 40} for path, data in files.items()]

    @app.post("/api/datasets/{namespace}/{name}/commit/{revision}")
    async def commit(namespace: str, name: str, revision: str, request: Request):
        if not authorised(request):
            return JSONResponse({"error": "Invalid credentials"}, status_code=401)
        repo = state["repos"][f"{namespace}/{name}"]
        lines = [json.loads(line) for line in (await request.body()).decode().splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        files = {}
        for item in lines:
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                repo["files"].pop(item["value"]["path"], None)
        repo["files"].update(files)
        oid = f"{len(state['commits']) + 1:040x}"
        state["commits"].append({"repo": f"{namespace}/{name}", "summary": header["summary"], "files": files})
        return {
            "commitUrl": f"{request.base_url}datasets/{namespace}/{name}/commit/{oid}",
            "commitOid": oid,
            "success": True,
            "pullRequestUrl": None,
        }

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "HEAD"])
    async def unknown(path: str, request: Request):
        state["unknown"].append(f"{request.method} /{path}")
        return JSONResponse({"error": f"the stand-in does not implement {request.method} /{path}"}, status_code=404)

    return app, state


def requested_private(body: dict) -> bool | None:
    """Whether a create-repo request asks for a private repo: `private` (older clients) or `visibility` (newer)."""
    if "private" in body:
        return body["private"]
    return {"private": True, "public": False}.get(body.get("visibility"))


def hub_env(hub_url: str, token: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a `workbench export --push` that talks to the stand-in."""
    return {
        **os.environ,
        "HF_ENDPOINT": hub_url,
        "HF_TOKEN": token,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),
    }


def test_push_uploads_card_and_parquet_in_one_commit(tmp_path: Path, schema):
    from exchange.dataset import export_dataset

    source = tmp_path / "export.json"
    source.write_text(json.dumps(three_annotator_tasks(schema)), encoding="utf-8")
    token = "hf_standin_token"
    app, state = hub_stand_in(token)
    with ServerThread(app) as hub:
        env = hub_env(hub.url, token, tmp_path)
        out = tmp_path / "dataset"
        done = subprocess.run(  # no visibility flag: private by default
            [sys.executable, "-m", "workbench", "export", "--out", str(out), "--from-export", str(source)]
            + ["--push", "lab/stance-news", "--salt", "s"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "pushed to lab/stance-news" in done.stdout
        # a second push of a smaller export: still one commit, and stale parquet files are deleted in it
        _, bundle = export_dataset(three_annotator_tasks(schema)[:1], schema, tmp_path / "small", salt="s")
        from exchange.dataset import push_folder

        push_folder(tmp_path / "small", "lab/stance-news", token=token, endpoint=hub.url)

    assert state["unknown"] == []
    assert state["repos"]["lab/stance-news"]["type"] == "dataset"
    assert [requested_private(body) for body in state["create_requests"]] == [True, True]
    assert state["repos"]["lab/stance-news"]["visibility"] == "private"
    assert state["validated"] == "dataset"
    first, second = state["commits"]
    local = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert ".workbench-export" in local  # the export's local marker (export --out reuses only such folders) ...
    local.remove(".workbench-export")
    assert sorted(first["files"]) == local  # ... is not part of the dataset
    assert "README.md" in local and {
        "aggregated/train-00000-of-00001.parquet",
        "raw/train-00000-of-00001.parquet",
    } <= set(local)
    for path, data in first["files"].items():
        assert data == (out / path).read_bytes()
    assert sorted(state["repos"]["lab/stance-news"]["files"]) == [
        "README.md",
        "aggregated/train-00000-of-00001.parquet",
        "raw/train-00000-of-00001.parquet",
    ]
    assert set(bundle.split_sizes) == {"train"}
    card = first["files"]["README.md"].decode("utf-8")
    assert "per-annotator timestamps" in card and "`created_at` and `updated_at`" in card
    assert "creates the Hub repository as private unless `--public` is given" in card


@pytest.mark.parametrize(("flag", "private"), [("--public", False), ("--private", True)])
def test_push_visibility_flags(tmp_path: Path, schema, flag: str, private: bool):
    """`--public` creates a public repo; `--private`, the default, is still accepted."""
    source = tmp_path / "export.json"
    source.write_text(json.dumps(three_annotator_tasks(schema)), encoding="utf-8")
    token = "hf_standin_token"
    app, state = hub_stand_in(token)
    with ServerThread(app) as hub:
        done = subprocess.run(
            [sys.executable, "-m", "workbench", "export", "--out", str(tmp_path / "d"), "--from-export", str(source)]
            + ["--push", "lab/visibility", flag, "--salt", "s"],
            capture_output=True,
            text=True,
            env=hub_env(hub.url, token, tmp_path),
            timeout=300,
        )
    assert done.returncode == 0, done.stderr
    assert [requested_private(body) for body in state["create_requests"]] == [private]
    assert f"a new repo is {'private' if private else 'public'}" in done.stdout


def test_push_without_a_token_is_one_line(tmp_path: Path, schema, monkeypatch):
    from exchange.dataset import PushError, export_dataset, push_folder

    folder, _ = export_dataset(three_annotator_tasks(schema), schema, tmp_path / "d", salt="s")
    app, _ = hub_stand_in("right")
    with ServerThread(app) as hub, pytest.raises(PushError, match="could not push to lab/x: .*401"):
        push_folder(folder, "lab/x", token="wrong", endpoint=hub.url)
