"""A whole run with an LLM agent: the real SDK talks to the local wire-protocol server, the
run supervisor executes the model's tool calls in a real Docker sandbox, and the run ends
with a scored submission. The model's script writes a training file, runs it, looks at its
environment, and submits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.agents import make_agent
from runner.journal import Journal
from runner.supervisor import RunRequest, RunSupervisor
from tasks.api import load_spec_file
from tests.conftest import journal_events as _events
from tests.conftest import require
from tests.conftest import tiny_train_script as _train_script
from tests.llm_server import LLMServer, Reply

FIXTURE = Path(__file__).parent / "fixtures" / "tasks" / "tiny_train" / "task.toml"
IMAGE = "mlrb-sandbox:latest"
KEY = "sk-e2e-SECRET-0123456789abcdef"


@pytest.mark.docker
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_llm_agent_runs_a_task_end_to_end_in_docker(
        provider: str, tmp_path: Path, docker_client, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import docker

    try:
        docker_client.images.get(IMAGE)
        have_image = True
    except docker.errors.ImageNotFound:
        have_image = False
    require(have_image, f"the sandbox image {IMAGE}")
    from runner.docker_sandbox import DockerSandbox

    # The key sits in the host's environment too, as it would in production: the sandbox must
    # not inherit it.
    monkeypatch.setenv("ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY", KEY)
    run = f"e2e-{provider}"
    with LLMServer() as srv:
        srv.script(
            Reply.call("write_file", {"path": "train.py", "content": _train_script()},
                       text="I will write a small training script."),
            Reply.call("bash", {"command": "python3 train.py 20", "timeout_s": 120}),
            Reply.call("bash", {"command": "env; id -u"}),
            Reply.call("submit", {"path": "model", "summary": "linear fit, 20 steps"},
                       text="The model is saved; submitting."),
        )
        base_url = srv.url if provider == "anthropic" else srv.openai_url
        agent = make_agent(provider, None, {"base_url": base_url, "backoff_s": 0.01})
        journal = Journal(tmp_path / "j.db")
        try:
            sup = RunSupervisor(
                RunRequest(run=run, task=load_spec_file(FIXTURE), scale="smoke",
                           agent_kind=provider),
                journal=journal, publish=None, make_sandbox=lambda spec: DockerSandbox(spec, docker_client),
                agent=agent, workspace=tmp_path / run / "workspace", runner_id="test", image=IMAGE)
            status = await sup.run()
        finally:
            await agent.close()
            journal.close()
        evs = _events(tmp_path / "j.db", run)
        assert status == "succeeded", sup.end_reason
        assert srv.remaining == 0 and srv.refusals == [] and len(srv.requests) == 4
        calls = [e.data["name"] for e in evs if e.kind == "tool.call"]
        assert calls == ["write_file", "bash", "bash", "submit"]
        results = [e.data for e in evs if e.kind == "tool.result"]
        assert results[1]["ok"] and "saved model/weights.pt" in results[1]["output"]
        usage = [e.data for e in evs if e.kind == "usage"]
        assert len(usage) == 4 and all(u["priced"] and u["cost_usd"] > 0 for u in usage)
        assert any(e.kind == "score" for e in evs)
        # What the model was sent: the training output came back as the bash call's result,
        # and every request stated the time left on the run's clock.
        sent = [json.dumps(r.body) for r in srv.requests]
        assert "saved model/weights.pt" in sent[2]
        assert all("minutes left." in s for s in sent)
        assert "You have 0 hours 5 minutes left." in sent[0] or "You have 0 hours 4 minutes left." in sent[0]
        # The sandbox's environment (shown to the model) holds no key, and no event does.
        assert "MLRB_RUN=" + run in sent[3]
        assert KEY not in sent[3]
        assert KEY not in json.dumps([e.to_dict() for e in evs])
