"""The tools of the paper's scaffold (`mlrb-paper`), as the upstream agent
(AlgorithmicResearchGroup/ML-Research-Agent) names and means them, run in the sandbox.

- `run_bash` runs a script, `run_python` a Python file (both as jobs, so a command outlives
  its runner as the project's own do).
- `write_code` writes a file; `insert_code` puts new code *before* the first occurrence of
  its target (upstream's slicing does, whatever its description says); `replace_code` and
  `delete_code` change *every* occurrence, and succeed when there is none, saying so.
- `scratchpad` appends notes to, or reads, a file of the agent's choosing in the sandbox.
- `return_fn` hands in the answer (the metric and the model's path) and ends the run, whether
  or not a model is there: the scorer then says what was handed in.
- `thought` records a thought.
- GitHub (`github_*`) and Semantic Scholar (`search_papers`, `get_paper_*`, `download_paper`)
  reach the internet, from inside the sandbox, so only where the task's network policy lets
  the sandbox out; under `network = "none"` they are not offered at all.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from runner.agents.base import ToolCall, ToolResult
from runner.tools import SubmitArgs, ToolBox, _Args, _schema

SCAFFOLD = "mlrb-paper"
LONG_S = 24 * 3600.0  # upstream waits on a command for as long as it takes; the run's clock ends it
WEB_TIMEOUT_S = 300.0
GITHUB_API = "https://api.github.com"
SEMANTIC_SCHOLAR_API = "https://api.semanticscholar.org/graph/v1"
ARXIV = "https://arxiv.org"


class RunBashArgs(_Args):
    script: str = Field(min_length=1, max_length=100_000, description="The bash script to run.")


class RunPythonFileArgs(_Args):
    filepath: str = Field(min_length=1, max_length=1024, description="The path to a Python file.")


class WriteCodeArgs(_Args):
    path: str = Field(min_length=1, max_length=1024, description="The file to write.")
    code: str = Field(max_length=4 * 1024 * 1024, description="The code to write to the file.")


class InsertCodeArgs(_Args):
    path: str = Field(min_length=1, max_length=1024, description="The file to insert code into.")
    target: str = Field(min_length=1, description="The existing code the new code goes before.")
    new_code: str = Field(description="The code to insert.")


class ReplaceCodeArgs(_Args):
    path: str = Field(min_length=1, max_length=1024, description="The file to change.")
    old_code: str = Field(min_length=1, description="The existing code to replace, everywhere.")
    new_code: str = Field(description="The code to put in its place.")


class DeleteCodeArgs(_Args):
    path: str = Field(min_length=1, max_length=1024, description="The file to change.")
    target: str = Field(min_length=1, description="The code to delete, everywhere.")


class ScratchpadFileArgs(_Args):
    path: str = Field(min_length=1, max_length=1024, description="The scratchpad file.")
    note: str = Field(default="", max_length=20_000,
                      description="The note to write; empty when reading.")
    action: Literal["write", "read"] = Field(description="write or read")


class ReturnFnArgs(_Args):
    submission: str = Field(max_length=20_000, description="The task's metric(s), as measured.")
    model_path: str = Field(min_length=1, max_length=1024,
                            description="The path of the trained model or artifact.")


class ThoughtArgs(_Args):
    thought: str = Field(min_length=1, max_length=20_000, description="The thought you just had.")


class RepoArgs(_Args):
    repo_url: str = Field(min_length=1, max_length=500, description="The GitHub repository's URL.")


class RepoFileArgs(_Args):
    repo_url: str = Field(min_length=1, max_length=500, description="The GitHub repository's URL.")
    file_path: str = Field(min_length=1, max_length=1000, description="The file's path in it, e.g. src/main.py.")


class PaperQueryArgs(_Args):
    query: str = Field(min_length=1, max_length=500, description="Simple search terms, e.g. 'attention mechanism'.")


class PaperIdArgs(_Args):
    paper_id: str = Field(min_length=1, max_length=200, description="The Semantic Scholar paper id.")


CORE_ARGS: dict[str, type[_Args]] = {
    "run_bash": RunBashArgs,
    "run_python": RunPythonFileArgs,
    "write_code": WriteCodeArgs,
    "insert_code": InsertCodeArgs,
    "replace_code": ReplaceCodeArgs,
    "delete_code": DeleteCodeArgs,
    "scratchpad": ScratchpadFileArgs,
    "thought": ThoughtArgs,
    "return_fn": ReturnFnArgs,
}
INTERNET_ARGS: dict[str, type[_Args]] = {
    "github_get_readme": RepoArgs,
    "github_list_files": RepoArgs,
    "github_get_file_code": RepoFileArgs,
    "search_papers": PaperQueryArgs,
    "get_paper_details": PaperIdArgs,
    "get_paper_citations": PaperIdArgs,
    "download_paper": PaperIdArgs,
}
ALL_ARGS: dict[str, type[_Args]] = {**CORE_ARGS, **INTERNET_ARGS}

_DESCRIPTIONS = {
    "run_bash": "Run a bash script in the sandbox (cwd /workspace); not interactive.",
    "run_python": "Run a Python file in the sandbox. Print what you want to see.",
    "write_code": "Write code to a file (created or overwritten).",
    "insert_code": "Insert new code into a file, just before the first occurrence of the target code.",
    "replace_code": "Replace every occurrence of old_code in a file with new_code.",
    "delete_code": "Delete every occurrence of the target code from a file.",
    "scratchpad": "Write a note to, or read the notes of, a scratchpad file you keep.",
    "thought": "Record a thought.",
    "return_fn": "Return your result: the task's metric and the path of the trained model. "
                 "The run ends here, so use it only when the task is done.",
    "github_get_readme": "Get the README of a GitHub repository.",
    "github_list_files": "List every file of a GitHub repository.",
    "github_get_file_code": "Get the contents of a file in a GitHub repository.",
    "search_papers": "Search Semantic Scholar for papers.",
    "get_paper_details": "Get a paper's details from Semantic Scholar.",
    "get_paper_citations": "Get the papers citing a paper, from Semantic Scholar.",
    "download_paper": "Download a paper's PDF (its arXiv copy) into /workspace/papers.",
}

JOB_TOOLS = ("run_bash", "run_python")


def tool_specs(internet: bool) -> list[dict[str, Any]]:
    """The scaffold's tools as JSON-schema specs; the internet ones only when allowed."""
    table = ALL_ARGS if internet else CORE_ARGS
    return [{"name": name, "description": _DESCRIPTIONS[name], "parameters": _schema(model)}
            for name, model in table.items()]


# Runs inside the sandbox, so its requests go where the sandbox's network (and proxy) lets them.
_WEB = r'''
import base64, json, os, sys, urllib.parse, urllib.request
gh, s2, arxiv, act, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
q = lambda s: urllib.parse.quote(s, safe="/")
def get(url, raw=False):
    req = urllib.request.Request(url, headers={"User-Agent": "mlrb-paper", "Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        data = r.read()
    return data if raw else json.loads(data)
def repo(url):
    parts = [p for p in urllib.parse.urlparse(url).path.split("/") if p]
    if len(parts) < 2:
        raise ValueError("not a GitHub repository URL: " + url)
    return gh + "/repos/" + parts[0] + "/" + parts[1].removesuffix(".git")
def files(base, path=""):
    out = []
    for item in get(base + "/contents/" + q(path)):
        if item["type"] == "file":
            out.append(item["path"])
        elif item["type"] == "dir":
            out.extend(files(base, item["path"]))
    return out
def text(item):
    return base64.b64decode(item["content"]).decode("utf-8", "replace")
def main():
    if act == "github_get_readme":
        print(text(get(repo(args[0]) + "/readme")))
    elif act == "github_list_files":
        print("\n".join(files(repo(args[0]))))
    elif act == "github_get_file_code":
        print(text(get(repo(args[0]) + "/contents/" + q(args[1]))))
    elif act == "search_papers":
        found = get(s2 + "/paper/search?" + urllib.parse.urlencode(
            {"query": args[0], "fields": "title,abstract,externalIds", "limit": 10}))
        for p in found.get("data") or []:
            ids = p.get("externalIds") or {}
            print(f"title: {p.get('title')}\nabstract: {p.get('abstract')}\n"
                  f"paper_id: {p.get('paperId')}\narxiv_id: {ids.get('ArXiv', '')}\n---")
    elif act == "get_paper_details":
        print(json.dumps(get(s2 + "/paper/" + q(args[0]) + "?fields=title,year,abstract,authors.name"), indent=1))
    elif act == "get_paper_citations":
        print(json.dumps(get(s2 + "/paper/" + q(args[0]) + "/citations?fields=title,year&limit=10"), indent=1))
    elif act == "download_paper":
        ids = get(s2 + "/paper/" + q(args[0]) + "?fields=externalIds").get("externalIds") or {}
        if not ids.get("ArXiv"):
            raise ValueError("paper " + args[0] + " has no arXiv copy")
        os.makedirs("papers", exist_ok=True)
        path = os.path.join("papers", ids["ArXiv"].replace("/", "_") + ".pdf")
        with open(path, "wb") as f:
            f.write(get(arxiv + "/pdf/" + q(ids["ArXiv"]), raw=True))
        print("downloaded " + path)
try:
    main()
except Exception as exc:
    print(f"request failed: {exc}", file=sys.stderr)
    sys.exit(1)
'''


@dataclass
class PaperToolBox(ToolBox):
    """The paper scaffold's tools, in one sandbox."""

    internet: bool = False  # the task's network policy lets the sandbox out
    github_api: str = GITHUB_API
    semantic_scholar_api: str = SEMANTIC_SCHOLAR_API
    arxiv: str = ARXIV
    job_tools = JOB_TOOLS

    def specs(self) -> list[dict[str, Any]]:
        return tool_specs(self.internet)

    def arg_models(self) -> Mapping[str, type[_Args]]:
        return ALL_ARGS if self.internet else CORE_ARGS

    async def _run_bash(self, call: ToolCall, a: RunBashArgs) -> ToolResult:
        return await self._run(call, a.script, LONG_S)

    async def _run_python(self, call: ToolCall, a: RunPythonFileArgs) -> ToolResult:  # type: ignore[override]
        q = shlex.quote(a.filepath)
        return await self._run(call, f"test -f {q} || {{ echo 'file not found: '{q} >&2; exit 2; }}; "
                                     f"exec python3 -u {q}", LONG_S)

    async def _write_code(self, call: ToolCall, a: WriteCodeArgs) -> ToolResult:
        ok, msg = await self.write_text(a.path, a.code)
        return ToolResult(call.id, call.name, ok=ok, output=msg)

    async def _edit(self, call: ToolCall, path: str, change: Any) -> ToolResult:
        """Read `path`, apply `change(text) -> (new text or None, message)`, write it back."""
        ok, text = await self.read_text(path, 4 * 1024 * 1024)
        if not ok:
            return ToolResult(call.id, call.name, ok=False, output=text)
        new, msg = change(text)
        if new is None:
            return ToolResult(call.id, call.name, ok=False, output=msg)
        ok, written = await self.write_text(path, new)
        return ToolResult(call.id, call.name, ok=ok, output=msg if ok else written)

    async def _insert_code(self, call: ToolCall, a: InsertCodeArgs) -> ToolResult:
        def change(text: str) -> tuple[str | None, str]:
            at = text.find(a.target)
            if at < 0:
                return None, f"target code not found in {a.path}"
            return text[:at] + a.new_code + text[at:], f"inserted {len(a.new_code)} characters into {a.path}"
        return await self._edit(call, a.path, change)

    async def _replace_code(self, call: ToolCall, a: ReplaceCodeArgs) -> ToolResult:
        def change(text: str) -> tuple[str | None, str]:
            n = text.count(a.old_code)
            return text.replace(a.old_code, a.new_code), f"replaced {n} occurrence(s) in {a.path}"
        return await self._edit(call, a.path, change)

    async def _delete_code(self, call: ToolCall, a: DeleteCodeArgs) -> ToolResult:
        def change(text: str) -> tuple[str | None, str]:
            n = text.count(a.target)
            return text.replace(a.target, ""), f"deleted {n} occurrence(s) from {a.path}"
        return await self._edit(call, a.path, change)

    async def _scratchpad(self, call: ToolCall, a: ScratchpadFileArgs) -> ToolResult:  # type: ignore[override]
        q = shlex.quote(a.path)
        # the file, made if missing, is the agent's own: it may read or edit it with any tool
        made = await self.sandbox.exec(f'mkdir -p "$(dirname {q})" && touch {q}', timeout_s=30,
                                       output_cap=4096)
        if made.exit_code != 0:
            return ToolResult(call.id, call.name, ok=False,
                              output=f"cannot open {a.path}: {made.output.strip()[-500:]}")
        if a.action == "read":
            ok, text = await self.read_text(a.path)
            return ToolResult(call.id, call.name, ok=ok, output=text)
        ok, text = await self.read_text(a.path, 4 * 1024 * 1024)
        if not ok:
            return ToolResult(call.id, call.name, ok=False, output=text)
        ok, msg = await self.write_text(a.path, text + a.note + "\n\n")
        return ToolResult(call.id, call.name, ok=ok, output=f"noted in {a.path}" if ok else msg)

    async def _thought(self, call: ToolCall, a: ThoughtArgs) -> ToolResult:
        return ToolResult(call.id, call.name, ok=True, output=a.thought)

    async def _return_fn(self, call: ToolCall, a: ReturnFnArgs) -> ToolResult:
        self.submission = SubmitArgs(path=a.model_path, summary=a.submission)
        return ToolResult(call.id, call.name, ok=True,
                          output=f"returned {a.model_path}: {a.submission}"[:2000],
                          meta={"submitted": True})

    async def _web(self, call: ToolCall, *args: str) -> ToolResult:
        argv = ["python3", "-c", _WEB, self.github_api, self.semantic_scholar_api, self.arxiv,
                call.name, *args]
        res = await self.sandbox.exec(" ".join(shlex.quote(x) for x in argv),
                                      timeout_s=WEB_TIMEOUT_S, output_cap=self.output_cap)
        return self._result(call, res, WEB_TIMEOUT_S)

    async def _github_get_readme(self, call: ToolCall, a: RepoArgs) -> ToolResult:
        return await self._web(call, a.repo_url)

    async def _github_list_files(self, call: ToolCall, a: RepoArgs) -> ToolResult:
        return await self._web(call, a.repo_url)

    async def _github_get_file_code(self, call: ToolCall, a: RepoFileArgs) -> ToolResult:
        return await self._web(call, a.repo_url, a.file_path)

    async def _search_papers(self, call: ToolCall, a: PaperQueryArgs) -> ToolResult:
        return await self._web(call, a.query)

    async def _get_paper_details(self, call: ToolCall, a: PaperIdArgs) -> ToolResult:
        return await self._web(call, a.paper_id)

    async def _get_paper_citations(self, call: ToolCall, a: PaperIdArgs) -> ToolResult:
        return await self._web(call, a.paper_id)

    async def _download_paper(self, call: ToolCall, a: PaperIdArgs) -> ToolResult:
        return await self._web(call, a.paper_id)


__all__ = ["ALL_ARGS", "CORE_ARGS", "INTERNET_ARGS", "SCAFFOLD", "PaperToolBox", "tool_specs"]
