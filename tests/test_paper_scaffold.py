"""The paper's scaffold (`mlrb-paper`) through the real SDKs against the LLM stand-in
(tests/llm_server.py): its planner/worker loop and prompts on the wire, each tool's meaning
in a real (local) sandbox, the internet tools offered only where the network policy lets
the sandbox out, a run rebuilt from its journal, and the per-run reasoning settings on the
wire for both providers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runner.agents import make_agent
from runner.agents.base import (
    AgentContext,
    AgentTurn,
    Observation,
    ToolCall,
    ToolResult,
    TurnRecord,
)
from runner.agents.paper_agent import MEMORY_ROWS, PaperScaffold
from runner.config import Config
from runner.engine import Engine, Job, SubmitError
from runner.events import KINDS, Event
from runner.journal import Journal, JournalReader
from runner.paper_tools import CORE_ARGS, INTERNET_ARGS, PaperToolBox, tool_specs
from runner.sandbox import SandboxSpec
from runner.supervisor import RunRequest, RunSupervisor
from tasks.api import load_spec_file
from tests.conftest import until
from tests.llm_server import LLMServer, Reply

PROVIDERS = ["anthropic", "openai"]
KEY = "sk-paper-SECRET-0123456789"
TASK = "Train a tiny regression model and report its score."
FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"
FIXTURE = FIXTURE_TASKS / "tiny_train" / "task.toml"
PLAN = ["Look at the workspace with run_bash", "Write and run a training script",
        "Return the metric with return_fn"]


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMServer]:
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)  # the stand-in's address and key, not the host's
    with LLMServer() as s:
        yield s


def train_script() -> str:
    from importlib import util

    spec = util.spec_from_file_location("tiny_baseline", FIXTURE.parent / "baseline.py")
    assert spec is not None and spec.loader is not None
    mod = util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return str(mod.TRAIN)


def opts(provider: str, srv: LLMServer, **kw: Any) -> dict[str, Any]:
    return {"base_url": srv.url if provider == "anthropic" else srv.openai_url, "api_key": KEY,
            "backoff_s": 0.01, **kw}


def paper(provider: str, srv: LLMServer, model: str | None = None, **kw: Any) -> PaperScaffold:
    agent = make_agent(provider, model, opts(provider, srv, **kw), scaffold="mlrb-paper")
    assert isinstance(agent, PaperScaffold)
    return agent


class Loop:
    """The supervisor's part without a sandbox: events checked against the contract."""

    def __init__(self, agent: PaperScaffold, internet: bool = False) -> None:
        self.agent = agent
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ctx = AgentContext("r1", TASK, tool_specs(internet), self.emit, 7200)
        self.step = 0
        self.records: list[TurnRecord] = []

    async def emit(self, kind: str, data: dict[str, Any]) -> None:
        assert kind in KINDS and kind in ("agent.error", "agent.message", "agent.delta", "usage"), kind
        Event("r1", len(self.events) + 1, 1.0, kind, data).to_json()
        self.events.append((kind, data))

    async def turn(self, results: list[ToolResult] | None = None, *, time_left_s: float = 3600,
                   operator: list[str] | None = None) -> AgentTurn:
        self.step += 1
        obs = Observation(self.step, time_left_s, results or [], operator or [], [])
        turn = await self.agent.turn(obs)
        # the state as the journal keeps it: JSON
        self.records.append(TurnRecord(obs, AgentTurn(turn.calls, turn.text, turn.done,
                                                      json.loads(json.dumps(turn.state)))))
        return turn

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == kind]


def worker_prompt(provider: str, body: dict[str, Any]) -> str:
    """The one user prompt of a single-turn request."""
    msgs = body["messages"]
    if provider == "anthropic":
        assert len(msgs) == 1 and msgs[0]["role"] == "user"
        return str(msgs[0]["content"])
    assert [m["role"] for m in msgs] == ["system", "user"]
    return str(msgs[1]["content"])


def tool_names(provider: str, body: dict[str, Any]) -> list[str]:
    return [t["name"] if provider == "anthropic" else t["function"]["name"] for t in body["tools"]]


def result(call: ToolCall, output: str, ok: bool = True, code: int | None = 0) -> list[ToolResult]:
    return [ToolResult(call.id, call.name, ok, output, code)]


# -- the loop on the wire -------------------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_plan_then_single_turn_worker_prompts_carrying_the_memory(provider: str, srv: LLMServer) -> None:
    srv.script(
        Reply.call("plan_generator", {"plan": PLAN}),
        Reply.calls_(("run_bash", {"script": "ls /workspace"}), ("thought", {"thought": "a second call"}),
                     text="Looking first."),
        Reply.say("The data is a CSV; I will write the script next."),
        Reply.call("return_fn", {"submission": "mse_score 0.91", "model_path": "model"}),
    )
    loop = Loop(paper(provider, srv))
    await loop.agent.start(loop.ctx)
    t1 = await loop.turn()
    # one reply's first call runs, as upstream's worker does
    assert [c.name for c in t1.calls] == ["run_bash"] and t1.calls[0].args == {"script": "ls /workspace"}
    assert t1.state["plan"] == PLAN and not t1.done
    t2 = await loop.turn(result(t1.calls[0], "data.csv\nREADME.md"), time_left_s=3000)
    assert t2.calls == [] and not t2.done  # a thought: the loop goes on
    t3 = await loop.turn(operator=["Use at most 20 steps."])
    assert [c.name for c in t3.calls] == ["return_fn"]
    assert srv.refusals == [] and srv.remaining == 0 and len(srv.requests) == 4

    planner, w1, w2, w3 = (r.body for r in srv.requests)
    # the planner: the task alone, the plan tool forced, temperature 0, 1024 tokens
    assert tool_names(provider, planner) == ["plan_generator"]
    assert planner["temperature"] == 0 and planner["max_tokens"] == 1024
    if provider == "anthropic":
        assert planner["tool_choice"] == {"type": "tool", "name": "plan_generator"}
        assert planner["messages"] == [{"role": "user", "content": TASK}]
        assert "cache_control" not in json.dumps(planner)  # asked once: nothing to read back
    else:
        assert planner["tool_choice"] == {"type": "function", "function": {"name": "plan_generator"}}
        assert planner["messages"][1] == {"role": "user", "content": TASK}
    for body in (w1, w2, w3):
        assert body["temperature"] == 0 and body["max_tokens"] == 1024
        assert tool_names(provider, body) == list(CORE_ARGS)
        prompt = worker_prompt(provider, body)
        assert f"Your goal is: {TASK}" in prompt and "\n".join(PLAN) in prompt
        assert "Your working directory is: /workspace" in prompt
    p1, p2, p3 = (worker_prompt(provider, b) for b in (w1, w2, w3))
    assert "Previous attempt:\nYou are starting the task" in p1
    assert "Time spent: 60.00 minutes. Remaining: 60.00 minutes." in p1
    # the last call's result is the previous output, and a memory row
    assert "Previous attempt:\nls /workspace\n\nPrevious output:\ndata.csv\nREADME.md" in p2
    assert "tool: run_bash\nstatus: success\nattempt: ls /workspace" in p2
    assert "Time spent: 70.00 minutes. Remaining: 50.00 minutes." in p2
    assert "You had the thought: The data is a CSV" in p3 and "tool: thought" in p3
    assert "[Message from the human operator]" in p3 and "Use at most 20 steps." in p3
    if provider == "anthropic":  # the stable prefix is cached: the tools and the system prompt
        assert w1["system"][0]["cache_control"]["type"] == "ephemeral"
        assert "cache_control" in w1["tools"][-1]
        assert isinstance(w1["messages"][0]["content"], str)
    # both calls of the first turn are accounted, and the plan shows in the transcript
    assert len(loop.of("usage")) == 4
    assert any(m["text"].startswith("Plan:\nLook at the workspace") for m in loop.of("agent.message"))


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_memory_holds_the_last_rows_and_a_resumed_agent_rebuilds_it(provider: str, srv: LLMServer) -> None:
    srv.script(Reply.call("plan_generator", {"plan": [{"plan": ["a", "b"]}, {"plan": ["c"]}]}),
               *[Reply.call("run_bash", {"script": f"echo step{i}"}) for i in range(1, 8)],
               Reply.error(500))
    first = paper(provider, srv, max_retries=0)
    loop = Loop(first)
    await first.start(loop.ctx)
    results: list[ToolResult] = []
    for i in range(1, 9):
        turn = await loop.turn(results, time_left_s=3600 - 60 * i)
        results = result(turn.calls[0], f"out{i}") if turn.calls else []
    assert first.plan == ["a", "b", "c"]  # plans of steps, flattened
    assert first.consecutive_failures == 1  # the last turn's call failed
    prompt = worker_prompt(provider, srv.requests[-2].body)
    assert prompt.count("\ntool: run_bash") == MEMORY_ROWS  # the oldest rows are gone
    assert "attempt: echo step6" in prompt and "attempt: echo step1\n" not in prompt
    second = paper(provider, srv, max_retries=0)
    await second.resume(loop.ctx, loop.records)
    try:
        assert second.plan == first.plan and list(second.memory) == list(first.memory)
        assert second.previous == first.previous and second.pending == first.pending
        assert second.totals == first.totals
        assert second.consecutive_failures == first.consecutive_failures
        srv.script(Reply.say("same"), Reply.say("same"))
        nxt = Observation(9, 3000, [])
        await first.turn(nxt)
        await second.turn(nxt)
        assert srv.requests[-2].body == srv.requests[-1].body
    finally:
        await first.close()
        await second.close()


# -- internet tools and the network policy ---------------------------------------------------------
def test_the_internet_tools_are_offered_only_where_the_network_allows() -> None:
    closed = {t["name"] for t in tool_specs(False)}
    opened = {t["name"] for t in tool_specs(True)}
    assert closed == set(CORE_ARGS) and not closed & set(INTERNET_ARGS)
    assert opened == set(CORE_ARGS) | set(INTERNET_ARGS)
    assert {"github_get_readme", "github_list_files", "github_get_file_code", "search_papers",
            "get_paper_details", "get_paper_citations", "download_paper"} == set(INTERNET_ARGS)


async def test_a_run_under_network_none_neither_offers_nor_runs_an_internet_tool(tmp_path: Path, srv: LLMServer,
                                                                                  sandbox: Any) -> None:
    srv.script(Reply.call("plan_generator", {"plan": PLAN}),
               Reply.call("github_get_readme", {"repo_url": "https://github.com/a/b"}),
               Reply.call("return_fn", {"submission": "none", "model_path": "model"}))
    sup, journal = supervisor(tmp_path, paper("anthropic", srv))
    try:
        assert sup.network_policy == "none"
        await sup.run()
    finally:
        journal.close()
    assert tool_names("anthropic", srv.requests[1].body) == list(CORE_ARGS)
    evs = events(tmp_path, sup.run_id)
    refused = next(e.data for e in evs if e.kind == "tool.result" and e.data["name"] == "github_get_readme")
    assert not refused["ok"] and "unknown tool 'github_get_readme'" in refused["output"]
    assert any(e.kind == "agent.error" and e.data["error"] == "unknown_tool" for e in evs)
    # and the box itself refuses it, whatever the agent offered
    box = PaperToolBox(sandbox, internet=False)
    r = await box.execute(ToolCall.new("search_papers", {"query": "attention"}))
    assert not r.ok and "unknown tool 'search_papers'" in r.output


async def test_with_the_network_open_the_internet_tools_reach_their_apis_from_the_sandbox(sandbox: Any) -> None:
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Api(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            return

        def do_GET(self) -> None:
            seen.append(self.path)
            readme = base64.b64encode(b"# demo repo\n").decode()
            bodies = {"/repos/acme/demo/readme": {"content": readme},
                      "/paper/search": {"data": [{"title": "Attention", "abstract": "A.", "paperId": "p1",
                                                  "externalIds": {"ArXiv": "1706.03762"}}]}}
            body = json.dumps(bodies.get(self.path.split("?")[0], {})).encode()
            self.send_response(200 if self.path.split("?")[0] in bodies else 404)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        box = PaperToolBox(sandbox, internet=True, github_api=base,
                           semantic_scholar_api=base, arxiv=base)
        assert {t["name"] for t in box.specs()} >= set(INTERNET_ARGS)
        readme = await box.execute(ToolCall.new("github_get_readme", {"repo_url": "https://github.com/acme/demo"}))
        assert readme.ok and readme.output.strip() == "# demo repo"
        found = await box.execute(ToolCall.new("search_papers", {"query": "attention"}))
        assert found.ok and "paper_id: p1" in found.output and "arxiv_id: 1706.03762" in found.output
        missing = await box.execute(ToolCall.new("get_paper_details", {"paper_id": "nope"}))
        assert not missing.ok and "request failed: HTTP Error 404" in missing.output
        assert seen[0] == "/repos/acme/demo/readme" and seen[1].startswith("/paper/search?query=attention")
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- each tool's meaning, in a real sandbox ---------------------------------------------------------
@pytest.fixture
async def sandbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    from runner.local_sandbox import LocalSandbox

    ws = tmp_path / "box"
    ws.mkdir()
    sb = LocalSandbox(SandboxSpec(run="paper-box", workspace=ws))
    await sb.start()
    yield sb
    await sb.stop()


def supervisor(tmp: Path, agent: Any, run: str = "paper-1") -> tuple[RunSupervisor, Journal]:
    from runner.sandbox_factory import create_sandbox

    journal = Journal(tmp / "j.db")
    sup = RunSupervisor(
        RunRequest(run=run, task=load_spec_file(FIXTURE), scale="smoke", agent_kind=agent.name,
                   model=agent.model, scaffold="mlrb-paper"),
        journal=journal, publish=None, make_sandbox=lambda spec: create_sandbox(spec, backend="local"),
        agent=agent, workspace=tmp / run / "workspace", runner_id="test")
    return sup, journal


def events(tmp: Path, run: str) -> list[Event]:
    reader = JournalReader(tmp / "j.db")
    try:
        return reader.events(run, 0, 100_000)
    finally:
        reader.close()


async def test_the_tools_do_what_upstreams_do_and_return_fn_ends_the_run(tmp_path: Path, srv: LLMServer) -> None:
    provider = "anthropic"  # the tools run the same under either provider; both loops are tested above
    code = "x = 1\nprint('a') # old\nx = 1\nprint('b') # old\n"
    srv.script(
        Reply.call("plan_generator", {"plan": PLAN}),
        Reply.call("write_code", {"path": "edit.py", "code": code}),
        Reply.call("insert_code", {"path": "edit.py", "target": "print('a')", "new_code": "y = 2\n"}),
        Reply.call("replace_code", {"path": "edit.py", "old_code": "x = 1", "new_code": "x = 3"}),
        Reply.call("delete_code", {"path": "edit.py", "target": " # old"}),
        Reply.call("insert_code", {"path": "edit.py", "target": "not there", "new_code": "z"}),
        Reply.call("replace_code", {"path": "edit.py", "old_code": "absent", "new_code": "z"}),
        Reply.call("run_python", {"filepath": "edit.py"}),
        Reply.call("scratchpad", {"path": "notes/pad.md", "note": "lr 0.1 works", "action": "write"}),
        Reply.call("scratchpad", {"path": "notes/pad.md", "note": "loss falls", "action": "write"}),
        Reply.call("scratchpad", {"path": "notes/pad.md", "note": "", "action": "read"}),
        Reply.call("write_code", {"path": "train.py", "code": train_script()}),
        Reply.call("run_bash", {"script": "python3 train.py 20 && ls model"}),
        Reply.call("return_fn", {"submission": "mse_score about 0.9", "model_path": "model"}),
        Reply.say("never asked: the run ended at return_fn"),
    )
    sup, journal = supervisor(tmp_path, paper(provider, srv))
    try:
        status = await sup.run()
    finally:
        journal.close()
    assert status == "succeeded", sup.end_reason
    assert srv.remaining == 1 and srv.refusals == []  # return_fn ended it: no call after
    ws = tmp_path / "paper-1" / "workspace"
    # insert before the target; replace and delete every occurrence
    assert (ws / "edit.py").read_text() == "x = 3\ny = 2\nprint('a')\nx = 3\nprint('b')\n"
    assert (ws / "notes" / "pad.md").read_text() == "lr 0.1 works\n\nloss falls\n\n"
    out = {}
    for e in events(tmp_path, "paper-1"):
        if e.kind == "tool.result":
            out.setdefault(e.data["name"], []).append(e.data)
    assert [r["ok"] for r in out["insert_code"]] == [True, False]
    assert "target code not found" in out["insert_code"][1]["output"]
    assert out["replace_code"][0]["output"] == "replaced 2 occurrence(s) in edit.py"
    assert out["replace_code"][1]["ok"] and "replaced 0 occurrence(s)" in out["replace_code"][1]["output"]
    assert out["delete_code"][0]["output"] == "deleted 2 occurrence(s) from edit.py"
    assert out["run_python"][0]["ok"] and out["run_python"][0]["output"] == "a\nb\n"
    assert out["scratchpad"][2]["output"] == "lr 0.1 works\n\nloss falls\n\n"
    assert out["run_bash"][0]["ok"] and "weights.pt" in out["run_bash"][0]["output"]
    assert out["return_fn"][0]["submitted"] and "mse_score about 0.9" in out["return_fn"][0]["output"]
    evs = events(tmp_path, "paper-1")
    created = next(e for e in evs if e.kind == "run.created")
    assert created.data["scaffold"] == "mlrb-paper"
    score = next(e for e in evs if e.kind == "score")
    assert score.data["final"] and score.data["value"] is not None
    # what the model was shown of the reading: the scratchpad's file
    assert "loss falls" in worker_prompt(provider, srv.requests[12].body)
    # a runner that adopts the run rebuilds the scaffold's state from the journal alone
    from runner.adoption import TURNS_DIR, load_resume

    reader = JournalReader(tmp_path / "j.db")
    try:
        records = load_resume(reader, "paper-1", "running", tmp_path / "paper-1" / TURNS_DIR).turn_records()
    finally:
        reader.close()
    again = paper(provider, srv)
    await again.resume(AgentContext("paper-1", TASK, tool_specs(False), _ignore, 300), records)
    first = sup.agent
    assert isinstance(first, PaperScaffold)
    assert again.plan == first.plan == PLAN and list(again.memory) == list(first.memory)
    assert again.pending is not None and again.pending.name == "return_fn"
    assert again.totals == first.totals and again.totals["calls"] == 14
    await again.close()


async def test_run_python_of_a_missing_file_fails_with_why(sandbox: Any) -> None:
    box = PaperToolBox(sandbox)
    r = await box.execute(ToolCall.new("run_python", {"filepath": "nope.py"}))
    assert not r.ok and "file not found: nope.py" in r.output


# -- per-run reasoning settings --------------------------------------------------------------------
def engine_for(tmp: Path, srv: LLMServer) -> Engine:
    providers = {"anthropic": {"base_url": srv.url, "api_key": KEY},
                 "openai": {"base_url": srv.openai_url, "api_key": KEY}}
    return Engine(Config(home=tmp / "h", backend="local", providers=providers), use_bus=False)


@pytest.mark.parametrize("scaffold", ["mlrb", "mlrb-paper"])
async def test_per_run_thinking_and_reasoning_effort_reach_the_wire(scaffold: str, tmp_path: Path,
                                                                    srv: LLMServer) -> None:
    engine = engine_for(tmp_path, srv)
    claude = engine._make_agent(Job(task="t", agent="anthropic", scaffold=scaffold, thinking_tokens=2048), None)
    o3 = engine._make_agent(Job(task="t", agent="openai", model="o3", scaffold=scaffold,
                                reasoning_effort="high"), None)
    plain = engine._make_agent(Job(task="t", agent="anthropic", scaffold=scaffold), None)
    ctx = AgentContext("r", TASK, tool_specs(False) if scaffold == "mlrb-paper" else _project_tools(),
                       _ignore, 3600)
    first = (Reply.call("plan_generator", {"plan": PLAN}),) if scaffold == "mlrb-paper" else ()
    try:
        for agent in (claude, o3, plain):
            srv.script(*first, Reply(text="ok", thinking="let me think" if agent is claude else ""))
            await agent.start(ctx)
            await agent.turn(Observation(1, 3600))
    finally:
        for agent in (claude, o3, plain):
            await agent.close()  # type: ignore[attr-defined]
    assert srv.refusals == []
    bodies = [r.body for r in srv.requests]
    c, o, p = (bodies[1], bodies[3], bodies[5]) if scaffold == "mlrb-paper" else bodies
    assert c["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert "temperature" not in c  # the API takes none with thinking on
    assert c["max_tokens"] == (1024 if scaffold == "mlrb-paper" else 4096) + 2048
    assert o["reasoning_effort"] == "high" and "max_completion_tokens" in o
    assert "temperature" not in o and "max_tokens" not in o
    assert o["messages"][0]["role"] == "developer"
    assert "thinking" not in p
    if scaffold == "mlrb-paper":
        assert p["temperature"] == 0 and p["max_tokens"] == 1024
        # no forced tool with thinking on: that planner asks for the plan tool freely
        assert "tool_choice" not in bodies[0] and tool_names("anthropic", bodies[0]) == ["plan_generator"]
        assert bodies[2]["tool_choice"] == {"type": "function", "function": {"name": "plan_generator"}}
        assert bodies[4]["tool_choice"] == {"type": "tool", "name": "plan_generator"}
    else:
        assert p["max_tokens"] == 4096


def _project_tools() -> list[dict[str, Any]]:
    from runner.tools import TOOL_SPECS

    return TOOL_SPECS


async def _ignore(kind: str, data: dict[str, Any]) -> None:
    return None


def test_a_job_carries_its_scaffold_and_reasoning_settings() -> None:
    job = Job.from_dict({"task": "tiny_train", "agent": "anthropic", "scaffold": "mlrb-paper",
                         "thinking_tokens": 4000})
    assert (job.scaffold, job.thinking_tokens, job.reasoning_effort) == ("mlrb-paper", 4000, None)
    job = Job.from_dict({"task": "tiny_train", "agent": "openai", "reasoning_effort": "low"})
    assert (job.scaffold, job.reasoning_effort) == ("mlrb", "low")
    with pytest.raises(SubmitError, match="thinking_tokens must be a whole number"):
        Job.from_dict({"task": "tiny_train", "thinking_tokens": "lots"})


async def test_the_engine_runs_the_paper_scaffold_and_journals_its_settings(tmp_path: Path, srv: LLMServer,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    srv.script(Reply.call("plan_generator", {"plan": PLAN}),
               Reply(text="", thinking="the model folder exists?",
                     calls=[("run_bash", {"script": "mkdir -p model && echo made"})]),
               Reply(thinking="done", calls=[("return_fn", {"submission": "n/a", "model_path": "model"})]))
    engine = engine_for(tmp_path, srv)
    await engine.start()
    try:
        for bad, why in ((Job(task="tiny_train", scaffold="mlrb-paper"), "scripted baseline plays"),
                         (Job(task="tiny_train", agent="openai", thinking_tokens=2048), "for the anthropic agent"),
                         (Job(task="tiny_train", agent="anthropic", reasoning_effort="low"), "for the openai agent"),
                         (Job(task="tiny_train", agent="anthropic", scaffold="other"), "unknown scaffold")):
            with pytest.raises(SubmitError, match=why):
                await engine.submit(bad)
        run = await engine.submit(Job(task="tiny_train", agent="anthropic", scaffold="mlrb-paper",
                                      thinking_tokens=1500))
        await engine.wait([run])
        assert engine.reader is not None
        reader = engine.reader
        row = await until(lambda: (r := reader.get_run(run)) and r["status"] != "running" and r,
                          "the run's end", timeout=60)
        assert row["scaffold"] == "mlrb-paper"
        created = next(e for e in reader.events(run, 0, 10) if e.kind == "run.created")
        assert created.data["scaffold"] == "mlrb-paper" and created.data["thinking_tokens"] == 1500
    finally:
        await engine.stop()
    assert all(b["thinking"]["budget_tokens"] == 1500 for b in srv.bodies())
    assert srv.refusals == [] and srv.remaining == 0


def test_submit_refuses_reasoning_flags_for_the_wrong_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlrb_tui.cli import cli

    monkeypatch.setenv("MLRB_HOME", str(tmp_path / "h"))
    runner = CliRunner()
    res = runner.invoke(cli, ["submit", "llm_merging", "--agent", "openai", "--thinking-tokens", "2048"])
    assert res.exit_code != 0 and "--thinking-tokens is for --agent anthropic" in res.output
    res = runner.invoke(cli, ["submit", "llm_merging", "--scaffold", "mlrb-paper"])
    assert res.exit_code != 0 and "the mlrb-paper scaffold is for LLM agents" in res.output
    res = runner.invoke(cli, ["submit", "llm_merging", "--agent", "openai", "--reasoning-effort", "extreme"])
    assert res.exit_code != 0 and "extreme" in res.output


# -- campaigns ----------------------------------------------------------------------------------------
def test_a_campaign_spec_checks_its_scaffold_and_settings_against_its_agents() -> None:
    from runner.campaign import CampaignError, build_spec

    spec = build_spec({"tasks": ["llm_merging"], "agents": "anthropic:claude-3-5-sonnet-20240620,openai:o3",
                       "scaffold": "mlrb-paper", "thinking_tokens": 2048, "reasoning_effort": "high"})
    assert (spec.scaffold, spec.thinking_tokens, spec.reasoning_effort) == ("mlrb-paper", 2048, "high")
    for fields, why in (({"agents": "scripted", "scaffold": "mlrb-paper"}, "the mlrb-paper scaffold is for LLM agents"),
                        ({"agents": "openai:o3", "thinking_tokens": 2048}, "for anthropic agents; none is named"),
                        ({"agents": "openai:gpt-4o", "reasoning_effort": "low"}, "the openai agents named: gpt-4o"),
                        ({"scaffold": "nope"}, "unknown scaffold 'nope' (use mlrb, mlrb-paper)"),
                        ({"agents": "anthropic:m", "thinking_tokens": 10}, "thinking_tokens: Input should be greater")):
        with pytest.raises(CampaignError, match=re.escape(why)):
            build_spec({"tasks": ["llm_merging"], **fields}, where="c.toml")


async def test_a_campaign_runs_its_scaffold_and_gives_each_provider_its_setting(tmp_path: Path, srv: LLMServer,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.campaign import build_spec, request

    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    for _ in range(2):  # the same shape for either provider: the order of the slots does not matter
        srv.script(Reply.call("plan_generator", {"plan": PLAN}),
                   Reply.call("return_fn", {"submission": "n/a", "model_path": "model"}))
    spec = build_spec({"tasks": ["tiny_train"], "agents": "anthropic:claude-3-5-sonnet-20240620,openai:o3",
                       "scaffold": "mlrb-paper", "thinking_tokens": 2048, "reasoning_effort": "low",
                       "retries": 0})
    engine = engine_for(tmp_path, srv)
    await engine.start()
    try:
        assert await engine.campaigns.handle(request("run", "paper", spec=spec.model_dump(mode="json"),
                                                     update=False)) == "accepted"
        assert engine.reader is not None
        reader = engine.reader
        await until(lambda: (row := reader.get_campaign("paper")) and row["state"] != "active",
                    "the campaign to settle", timeout=240, interval=0.2)
        runs = {r["agent"]: r for r in reader.campaign_runs("paper")}
        assert {r["scaffold"] for r in runs.values()} == {"mlrb-paper"} and set(runs) == {"anthropic", "openai"}
        created = {a: next(e.data for e in reader.events(r["run"], 0, 5) if e.kind == "run.created")
                   for a, r in runs.items()}
    finally:
        await engine.stop()
    assert created["anthropic"]["thinking_tokens"] == 2048 and "reasoning_effort" not in created["anthropic"]
    assert created["openai"]["reasoning_effort"] == "low" and "thinking_tokens" not in created["openai"]
    wire = [(r.path, r.body) for r in srv.requests]
    assert all(b["thinking"] == {"type": "enabled", "budget_tokens": 2048} for p, b in wire if p == "/v1/messages")
    assert all(b["reasoning_effort"] == "low" for p, b in wire if p == "/v1/chat/completions")
    assert len(wire) == 4 and srv.refusals == []
